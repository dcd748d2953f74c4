"""`crunch batch FILE` and `crunch fib A..B`: many jobs in one request, one progress bar, results in order.

FILE holds one job per line as JSON, `{"type": "fibonacci", "params": {"n": 10}}` (blank lines and
lines starting with # are skipped; `-` reads stdin). The batch is POSTed at once (up to the
server's MAX_BATCH_JOBS; a longer file is sent as several batches, one after the other), its
progress is followed on one bar (ended items of all items), and then every item's result is printed
in submission order, one line each: the value people read (a Fibonacci value, a prime count, the
numbers of a list separated by spaces), or with --json the item's whole job resource.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from client.cli import EXIT_JOB, EXIT_OK, Session, UsageError, int_arg
from client.http import LONG_POLL, loads

#: `A..B` (both inclusive), as `crunch fib 1000..2000` takes it.
RANGE = re.compile(r"^\s*([0-9][0-9_]*)\s*\.\.\s*([0-9][0-9_]*)\s*$")
#: Items sent in one POST, when the server does not say its own MAX_BATCH_JOBS (the default).
DEFAULT_BATCH = 10_000
#: Items per page when reading the results back.
PAGE = 1000
TERMINAL = ("finished", "failed", "canceled")


def parse_range(text: str, most: int = 1_000_000) -> range | None:
    """`1000..2000` as range(1000, 2001); None when `text` is not a range; UsageError when it is bad."""
    m = RANGE.match(text)
    if m is None:
        return None
    lo, hi = (m.group(i).replace("_", "") for i in (1, 2))
    if len(lo) > 20 or len(hi) > 20:
        raise UsageError(f"{text!r}: the bounds are too long")
    a, b = int(lo), int(hi)
    if b < a:
        raise UsageError(f"{text!r}: the range ends before it starts")
    if b - a + 1 > most:
        raise UsageError(f"{text!r}: {b - a + 1:,} jobs; at most {most:,} in one command")
    return range(a, b + 1)


def read_jobs(lines: Iterator[str], name: str) -> list[dict[str, Any]]:
    """The jobs of a JSON-lines file, each checked for the {type, params} shape (the server checks the rest)."""
    jobs: list[dict[str, Any]] = []
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            job = json.loads(text)
        except ValueError as exc:
            raise UsageError(f"{name}:{number}: not JSON ({exc})") from None
        if not isinstance(job, dict) or not isinstance(job.get("type"), str):
            raise UsageError(f"{name}:{number}: each line must be an object with a type and params, "
                                  "e.g. {\"type\": \"fibonacci\", \"params\": {\"n\": 10}}")
        jobs.append(job)
    if not jobs:
        raise UsageError(f"{name}: no jobs in it")
    return jobs


def item_text(job: dict[str, Any]) -> str:
    """One item's line for people."""
    status = job.get("status")
    if status != "finished":
        err = job.get("error") or {}
        detail = f": {err.get('type', 'error')}: {err.get('message', '')}" if status == "failed" else ""
        return f"# job {job.get('id')} {status or 'expired'}{detail}"
    result = job.get("result")
    if isinstance(result, dict) and "value" in result:
        return str(result["value"])
    if isinstance(result, dict) and "count" in result:
        return str(result["count"])
    if isinstance(result, list):
        return " ".join(json.dumps(x) if not isinstance(x, str) else x for x in result)
    if result is None:
        return f"# job {job.get('id')}: result too large to inline; crunch result {job.get('id')}"
    return json.dumps(result)


def progress_view(batch: dict[str, Any]) -> dict[str, Any]:
    """The batch as the job progress bar draws it: ended items of all items."""
    counts = batch.get("counts") or {}
    total = int(batch.get("total") or 0)
    ended = sum(int(counts.get(s) or 0) for s in TERMINAL)
    status = "finished" if batch.get("status") == "finished" else (
        "started" if ended or counts.get("started") else "queued")
    return {"id": batch.get("id"), "type": "batch", "status": status,
            "progress": {"done": ended, "total": total, "percent": 100.0 * ended / total if total else 100.0}}


def run_batch(s: Session, jobs: list[dict[str, Any]], webhook: str | None = None) -> int:
    """Submit, follow, print; exit 1 when any item did not finish."""
    args = s.args
    size = DEFAULT_BATCH
    batches: list[dict[str, Any]] = []
    for start in range(0, len(jobs), size):
        body: dict[str, Any] = {"jobs": jobs[start:start + size]}
        if webhook:
            body["webhook"] = webhook
        data = json.dumps(body).encode()
        batch = s.call(_post, s, data)
        batches.append(batch)
        s.job_id = batch["id"]
        s.progress.info(f"crunch: batch {batch['id']}: {batch['total']:,} jobs "
                        f"({_outcomes(batch.get('submitted'))})")
    if args.no_wait:
        for batch in batches:
            s.write((json.dumps(batch) if args.json else batch["id"]) + "\n")
        return EXIT_OK
    bad = 0
    for batch in batches:
        s.job_id = batch["id"]
        batch = _follow(s, batch)
        for job in _items(s, batch["id"]):
            if job.get("status") != "finished":
                bad += 1
            s.write((json.dumps(job) if args.json else item_text(job)) + "\n")
    if bad:
        s.progress.note(f"crunch: {bad:,} of {len(jobs):,} jobs did not finish")
        return EXIT_JOB
    return EXIT_OK


def _outcomes(sub: dict[str, Any] | None) -> str:
    if not sub:
        return "submitted"
    return ", ".join(f"{v:,} {k}" for k, v in sub.items() if v) or "submitted"


def _post(s: Session, data: bytes) -> dict[str, Any]:
    resp = s.client.request("POST", "/api/v1/batches", data=data, read_timeout=60.0,
                            headers={"Content-Type": "application/json", "Prefer": "wait=1"})
    return loads(resp.content)


def _follow(s: Session, batch: dict[str, Any]) -> dict[str, Any]:
    """Long-poll the batch until it ends, redrawing the bar (3 s polls keep it moving)."""
    s.progress.seed(progress_view(batch))
    try:
        while batch.get("status") != "finished":
            s.progress.update(progress_view(batch))
            resp = s.call(s.client.request, "GET", f"/api/v1/batches/{batch['id']}?wait=3",
                          read_timeout=LONG_POLL)
            batch = loads(resp.content)
        s.progress.update(progress_view(batch))
    finally:
        s.progress.close()
    return batch


def _items(s: Session, batch_id: str) -> Iterator[dict[str, Any]]:
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": PAGE}
        if cursor:
            params["cursor"] = cursor
        resp = s.call(s.client.request, "GET", f"/api/v1/batches/{batch_id}/jobs", params=params)
        page = loads(resp.content)
        yield from page["jobs"]
        cursor = page.get("next_cursor")
        if not cursor:
            return


def cmd_batch(s: Session, a: argparse.Namespace) -> int:
    if a.file == "-":
        jobs = read_jobs(iter(sys.stdin), "stdin")
    else:
        path = Path(a.file).expanduser()
        if not path.is_file():
            raise UsageError(f"{a.file}: no such file")
        with path.open(encoding="utf-8") as f:
            jobs = read_jobs(iter(f), a.file)
    return run_batch(s, jobs, a.webhook)


def fib_range(s: Session, numbers: range) -> int:
    """`crunch fib 1000..2000`: F(n) for each n, one value per line, from one batch."""
    return run_batch(s, [{"type": "fibonacci", "params": {"n": n}} for n in numbers],
                     getattr(s.args, "webhook", None))


def fib_arg(text: str) -> int | range:
    """`crunch fib`'s argument: n (1e3, 10**3 work as for every number), or a range A..B."""
    numbers = parse_range(text)
    return int_arg(text) if numbers is None else numbers


def add_parser(command: Any) -> None:
    """Register `crunch batch` (command is build_parser's helper)."""
    p = command("batch", "submit many jobs at once from a JSON-lines file and print every result in order",
                cmd_batch)
    p.add_argument("file", help='one job per line: {"type": "fibonacci", "params": {"n": 10}} (- for stdin)')
    p.add_argument("--webhook", metavar="URL", help="the server POSTs the finished batch to URL (signed)")
    p.add_argument("--no-wait", action="store_true", help="print the batch id (or resource with --json) and exit")
