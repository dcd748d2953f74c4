"""The crunch CLI's session: one HTTP client, one backoff, one progress display per command."""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from client.http import (
    LONG_POLL,
    ApiError,
    Backoff,
    CrunchClient,
    GaveUp,
    Job,
    Unavailable,
    default_token,
)
from client.progress import Progress

EXIT_OK, EXIT_JOB, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
#: How long a submit waits on the server (Prefer: wait) so quick jobs answer in one round trip.
SUBMIT_WAIT = 1
FORMATS = ("json", "csv", "txt")


class UsageError(Exception):
    """A problem with the command line itself (exit 2)."""


class Session:
    def __init__(self, args: argparse.Namespace, out: IO[str] | None = None, err: IO[str] | None = None) -> None:
        self.args = args
        # Looked up per session, not bound at import: main() called in-process writes where stdout is now.
        self.out, self.err = out or sys.stdout, err or sys.stderr
        url = args.url if re.match(r"^https?://", args.url) else "http://" + args.url
        self.client = CrunchClient(url, token=default_token())
        self.progress = Progress(self.err, quiet=args.quiet)
        self.backoff = Backoff(args.give_up, on_retry=self._retrying, on_recover=self._recovered)
        self.job_id: str | None = None

    def _retrying(self, reason: str, delay: float) -> None:
        self.progress.retrying(f"crunch: server unreachable ({reason}), retrying in {delay:.1f} s…",
                               f"server unreachable, retrying in {delay:.1f} s…")

    def _recovered(self, down: float) -> None:
        what = f"; following job {self.job_id} again" if self.job_id else ""
        self.progress.recovered(f"crunch: server is back after {down:.1f} s{what}")

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return self.backoff.call(fn, *args, **kwargs)

    def write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def write_bytes(self, data: bytes) -> None:
        buf = getattr(self.out, "buffer", None)
        if buf is not None:
            self.out.flush()
            buf.write(data)
            buf.flush()
        else:
            self.out.write(data.decode("utf-8", "replace"))

    # -- jobs --------------------------------------------------------------------------------------

    def run(self, kind: str, submit: Callable[[int], Job]) -> int:
        """Submit (retrying: identical submissions join one job), then wait and print, or not."""
        args = self.args
        try:
            job = self.call(submit, 0 if args.no_wait else getattr(args, "submit_wait", SUBMIT_WAIT))
        except ApiError as exc:
            if exc.status in (404, 405):
                raise ApiError(exc.status, {"title": exc.title, "detail": f"this server has no {kind} jobs "
                                            f"(POST /api/v1/{kind} answered {exc.status})"}) from None
            raise
        self.job_id = job["id"]
        if args.no_wait:
            self.write(job.raw.decode() + "\n" if args.json else job["id"] + "\n")
            return EXIT_OK
        return self.wait(job)

    def wait(self, job: Job) -> int:
        self.job_id = job["id"]
        last = job
        if not job.terminal:  # else a quick job answered within the submit: nothing to watch
            self.progress.info(f"crunch: job {job['id']} ({job.get('type')}) is {job.get('status')}; "
                               "Ctrl-C detaches, the job keeps running")
            self.progress.seed(job)
            try:
                # Polling: short long-polls keep a progress display moving; 30 s ones when nothing shows.
                poll_wait = LONG_POLL if self.args.quiet else 3
                for last in self.client.follow(job, self.backoff, use_events=not self.args.poll,
                                               poll_wait=poll_wait):
                    self.progress.update(last)
            finally:
                self.progress.close()
        return self.outcome(last)

    def outcome(self, job: Job) -> int:
        status = job.get("status")
        if self.args.json:
            self.write(job.raw.decode() + "\n")
        if status == "finished":
            if not self.args.json:
                self.print_result(job, getattr(self.args, "output", None))
            elif getattr(self.args, "output", None):
                self.save_result(job, None, self.args.output)
            return EXIT_OK
        if status == "failed":
            err = job.get("error") or {}
            self.progress.note(f"crunch: job {job['id']} failed: {err.get('type', 'error')}: {err.get('message', '')}")
        else:
            self.progress.note(f"crunch: job {job['id']} was {status}")
        return EXIT_JOB

    # -- results -----------------------------------------------------------------------------------

    def print_result(self, job: Job, output: str | None = None) -> None:
        """The value for people: one item per line, the count, the Fibonacci digits, the CSV."""
        kind, result = job.get("type"), job.get("result")
        text: str | None = None
        if isinstance(result, dict) and "value" in result and kind != "csv":
            text = str(result["value"])
        elif isinstance(result, dict) and "count" in result and kind != "csv":
            text = str(result["count"])
        if kind == "csv":
            if isinstance(result, dict):
                cols = result.get("columns") or []
                self.progress.info(f"crunch: {result.get('rows')} rows, {len(cols)} columns, "
                                   f"{result.get('skipped', 0)} skipped (date did not parse)")
            self.save_result(job, None, output)
            return
        if text is not None:
            if output and output != "-":
                Path(output).write_text(text + "\n")
                self.progress.info(f"crunch: wrote {output}")
            else:
                self.write(text + "\n")
            return
        self.save_result(job, "txt", output)

    def save_result(self, job: Job | str, fmt: str | None, output: str | None) -> None:
        """Stream the result to a file (atomically, restarted if the connection drops) or stdout."""
        if output and output != "-":
            size = self.call(self._download, job, fmt, Path(output))
            self.progress.info(f"crunch: wrote {size:,} bytes to {output}")
            return
        written = 0

        def attempt() -> None:
            nonlocal written
            resp = self.client.result(job, fmt=fmt)
            try:
                for chunk in self.client.chunks(resp):
                    self.write_bytes(chunk)
                    written += len(chunk)
            except Unavailable as exc:
                if written:  # part of it is on stdout already; starting over would repeat it
                    raise GaveUp(f"connection lost after {written:,} bytes of the result ({exc.reason})", 0) from None
                raise

        self.call(attempt)

    def _download(self, job: Job | str, fmt: str | None, dest: Path) -> int:
        resp = self.client.result(job, fmt=fmt)
        dest = dest.expanduser()
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent or Path("."))
        size = 0
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in self.client.chunks(resp):
                    f.write(chunk)
                    size += len(chunk)
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return size


