"""The HTTP half of the client: one small class per concern, no printing.

- `CrunchClient` makes single requests to the v1 API and turns every failure into one of two
  exceptions: `ApiError` (the server answered with a problem+json) or `Unavailable` (no usable
  answer: connection refused or reset, a timeout, a 502/503/504 from a proxy or a Redis outage,
  a 429 rate limit). Only `Unavailable` is worth retrying.
- `Backoff` retries `Unavailable` with capped exponential delays and gives up after a total
  outage time; it reports through callbacks, so the presentation decides what to print.
- `CrunchClient.follow` yields a job each time it changes until it ends: Server-Sent Events
  first, long-polling (`?wait=30`) when the stream is refused, and after an outage it re-reads
  the job by id and carries on, so a server restart in the middle of a wait costs nothing.

Submitting again after a lost answer is safe: identical requests join the job already running
(or get the cached result), so a retried POST never starts a second computation.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any
from urllib.parse import urljoin

import requests

DEFAULT_URL = "http://localhost:5000"
TERMINAL = frozenset({"finished", "failed", "canceled"})
#: The server sends a keep-alive comment on its event streams every 15 s.
STREAM_READ_TIMEOUT = 45.0
CONNECT_TIMEOUT = 5.0
LONG_POLL = 30
#: Python refuses to convert integers longer than this from text (sys.get_int_max_str_digits).
_MAX_INT_TEXT = 4300


class Number(str):
    """A JSON number kept as its exact text (big integers, floats exactly as the server wrote them)."""

    __slots__ = ()


def _int(text: str) -> Any:
    return int(text) if len(text) < _MAX_INT_TEXT else Number(text)


def loads(raw: bytes | str) -> Any:
    """JSON with integers of any size: short ones as int, very long ones as their digits."""
    return json.loads(raw, parse_int=_int)


def loads_exact(raw: bytes | str) -> Any:
    """JSON with every number kept as its exact text, for display."""
    return json.loads(raw, parse_int=Number, parse_float=Number)


class Job(dict):
    """A job resource, with the exact bytes the server sent (for `--json`)."""

    raw: bytes = b""

    @classmethod
    def parse(cls, raw: bytes) -> Job:
        job = cls(loads(raw))
        job.raw = raw
        return job

    @property
    def terminal(self) -> bool:
        return self.get("status") in TERMINAL


class ApiError(Exception):
    """The server answered with an error (problem+json): bad input, unknown job, wrong state..."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status = status
        self.problem = problem
        self.title = str(problem.get("title") or "HTTP error")
        self.detail = str(problem.get("detail") or "")
        self.errors: list[dict[str, Any]] = [e for e in problem.get("errors") or [] if isinstance(e, dict)]
        super().__init__(f"{status} {self.title}: {self.detail}")


class Unavailable(Exception):
    """No usable answer from the server right now; worth retrying."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        self.reason = reason
        self.retry_after = retry_after
        super().__init__(reason)


class GaveUp(Exception):
    """The server stayed unavailable for the whole `give_up` budget."""

    def __init__(self, reason: str, seconds: float) -> None:
        self.reason = reason
        self.seconds = seconds
        super().__init__(f"gave up after {seconds:.0f} s: {reason}")


class EventsRefused(Exception):
    """The event stream was refused (too many streams, a proxy without streaming...): poll instead."""


def _retry_after(resp: requests.Response) -> float | None:
    try:
        return float(resp.headers.get("Retry-After", ""))
    except ValueError:
        return None


def _reason(exc: BaseException) -> str:
    """A short human reason for a transport failure, not a 300-character urllib3 repr."""
    text = str(exc)
    for needle, short in (("Connection refused", "connection refused"), ("Connection reset", "connection reset"),
                          ("Name or service not known", "unknown host"), ("timed out", "timed out"),
                          ("Read timed out", "timed out"), ("Remote end closed", "connection closed"),
                          ("IncompleteRead", "connection closed mid-answer"),
                          ("InvalidChunkLength", "connection closed mid-answer"),
                          ("Connection broken", "connection closed mid-answer"),
                          ("ended prematurely", "connection closed mid-answer")):
        if needle in text:
            return short
    if isinstance(exc, requests.Timeout):
        return "timed out"
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return "connection lost"
    return type(exc).__name__


class Backoff:
    """Retry `Unavailable` with delays 0.5, 1, 2, 4, 5, 5... s until `give_up` seconds of outage.

    One instance spans a whole command, so the outage clock keeps running across the different
    calls a wait makes (stream, re-read, poll) and restarts only after a call succeeds.
    """

    def __init__(self, give_up: float = 300.0, *, first: float = 0.5, cap: float = 5.0,
                 on_retry: Callable[[str, float], None] | None = None,
                 on_recover: Callable[[float], None] | None = None,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.give_up, self.first, self.cap = give_up, first, cap
        self.on_retry, self.on_recover = on_retry, on_recover
        self.sleep, self.clock = sleep, clock
        self.down_since: float | None = None
        self.delay = first

    def ok(self) -> None:
        """A call went through: the outage (if any) is over."""
        if self.down_since is not None:
            down = self.clock() - self.down_since
            self.down_since, self.delay = None, self.first
            if self.on_recover:
                self.on_recover(down)

    def failed(self, exc: Unavailable) -> None:
        """Wait before the next attempt, or raise GaveUp once the outage outlasts the budget."""
        now = self.clock()
        if self.down_since is None:
            self.down_since, self.delay = now, self.first
        spent = now - self.down_since
        left = self.give_up - spent
        if left <= 0:
            raise GaveUp(exc.reason, spent)
        delay = min(self.delay, self.cap)
        if exc.retry_after:
            delay = max(delay, min(exc.retry_after, 30.0))
        delay = min(delay, left)
        if self.on_retry:
            self.on_retry(exc.reason, delay)
        self.sleep(delay)
        self.delay = min(self.delay * 2, self.cap)

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        while True:
            try:
                result = fn(*args, **kwargs)
            except Unavailable as exc:
                self.failed(exc)
                continue
            self.ok()
            return result


class MultipartBody:
    """A multipart/form-data body streamed from disk with a known length (no chunked upload,
    no whole file in memory), readable by http.client and accepted by requests as a stream."""

    def __init__(self, fields: Iterable[tuple[str, str]], files: Iterable[tuple[str, str | Path | bytes, str]]) -> None:
        boundary = uuid.uuid4().hex
        self.content_type = f"multipart/form-data; boundary={boundary}"
        parts: list[bytes | Path] = []
        for name, value in fields:
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{_quote(name)}"\r\n\r\n'
                         .encode() + value.encode() + b"\r\n")
        for name, source, filename in files:
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{_quote(name)}"; '
                         f'filename="{_quote(filename)}"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode())
            parts.append(source if isinstance(source, bytes) else Path(source))
            parts.append(b"\r\n")
        parts.append(f"--{boundary}--\r\n".encode())
        self._parts = parts
        self._length = sum(len(p) if isinstance(p, bytes) else p.stat().st_size for p in parts)
        self._index = 0
        self._buf = b""
        self._file: IO[bytes] | None = None

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self.read(1 << 16):
            yield chunk

    def read(self, size: int = -1) -> bytes:
        size = self._length if size is None or size < 0 else size
        out = bytearray()
        while len(out) < size:
            if self._buf:
                take, self._buf = self._buf[:size - len(out)], self._buf[size - len(out):]
                out += take
                continue
            if self._file is not None:
                data = self._file.read(min(size - len(out), 1 << 20))
                if data:
                    out += data
                    continue
                self.close()
                self._index += 1
                continue
            if self._index >= len(self._parts):
                break
            part = self._parts[self._index]
            if isinstance(part, bytes):
                self._buf = part
                self._index += 1
            else:
                self._file = open(part, "rb")  # noqa: SIM115 - closed at its end or by close()
        return bytes(out)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _quote(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


class CrunchClient:
    """Single requests to the Crunch v1 API. Every method either returns, raises ApiError, or
    raises Unavailable; none of them retries (wrap calls in a Backoff for that)."""

    def __init__(self, base_url: str = DEFAULT_URL, session: requests.Session | None = None,
                 user_agent: str = "crunch-cli/0.1", token: str | None = None) -> None:
        """token: the API token (a server with API_TOKENS set refuses anonymous requests), sent as a
        Bearer token on every request."""
        self.base_url = base_url.rstrip("/") + "/"
        self.session = session or requests.Session()
        self.session.headers["User-Agent"] = user_agent
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def url(self, path: str) -> str:
        return urljoin(self.base_url, path.lstrip("/")) if not path.startswith(("http://", "https://")) else path

    # -- transport -------------------------------------------------------------------------------

    def request(self, method: str, path: str, *, read_timeout: float = 30.0, stream: bool = False,
                ok: Iterable[int] = (), **kwargs: Any) -> requests.Response:
        """One request; 2xx (or a status in `ok`) is returned, anything else raised."""
        try:
            resp = self.session.request(method, self.url(path), timeout=(CONNECT_TIMEOUT, read_timeout),
                                        stream=stream, **kwargs)
        except requests.RequestException as exc:
            raise Unavailable(_reason(exc)) from None
        if resp.status_code < 400 or resp.status_code in ok:
            return resp
        if resp.status_code in (429, 502, 503, 504):
            reason = {429: "rate limited", 502: "bad gateway", 504: "gateway timeout"}.get(resp.status_code)
            if reason is None:
                reason = self._problem(resp).get("detail") or "service unavailable"
            resp.close()
            raise Unavailable(f"{reason} ({resp.status_code})", _retry_after(resp))
        problem = self._problem(resp)
        resp.close()
        raise ApiError(resp.status_code, problem)

    @staticmethod
    def _problem(resp: requests.Response) -> dict[str, Any]:
        try:
            body = resp.content
        except requests.RequestException:
            body = b""
        try:
            problem = loads(body)
            if isinstance(problem, dict):
                return problem
        except ValueError:
            pass
        text = body.decode("utf-8", "replace").strip()
        return {"title": resp.reason or "HTTP error", "status": resp.status_code, "detail": text[:300]}

    def _job(self, resp: requests.Response) -> Job:
        try:
            return Job.parse(resp.content)
        except requests.RequestException as exc:
            raise Unavailable(_reason(exc)) from None
        except ValueError:
            raise ApiError(resp.status_code, {"title": "Not a Crunch server",
                                              "detail": f"{resp.url} did not answer with JSON"}) from None

    # -- jobs ------------------------------------------------------------------------------------

    def submit(self, kind: str, body: bytes, *, wait: int = 0) -> Job:
        """POST a JSON body (already encoded, so numbers stay exact); 200 finished/cached or 202."""
        headers = {"Content-Type": "application/json"}
        if wait:
            headers["Prefer"] = f"wait={wait}"
        resp = self.request("POST", f"/api/v1/{kind}", data=body, headers=headers, read_timeout=wait + 30.0)
        return self._job(resp)

    def submit_form(self, kind: str, fields: Iterable[tuple[str, str]],
                    files: Iterable[tuple[str, str | Path | bytes, str]], *, wait: int = 0) -> Job:
        """POST multipart/form-data, streaming files from disk."""
        body = MultipartBody(fields, files)
        headers = {"Content-Type": body.content_type}
        if wait:
            headers["Prefer"] = f"wait={wait}"
        try:
            resp = self.request("POST", f"/api/v1/{kind}", data=body, headers=headers, read_timeout=wait + 120.0)
        finally:
            body.close()
        return self._job(resp)

    def document(self) -> dict[str, Any]:
        """The server's OpenAPI document: its job types, as their specs describe them."""
        resp = self.request("GET", "/openapi.json")
        try:
            return loads(resp.content)
        finally:
            resp.close()

    def job(self, job_id: str, *, wait: int = 0) -> Job:
        path = f"/api/v1/jobs/{job_id}" + (f"?wait={wait}" if wait else "")
        return self._job(self.request("GET", path, read_timeout=wait + 30.0))

    def workers(self) -> list[dict[str, Any]]:
        return self.request("GET", "/api/v1/workers").json()

    def jobs(self, *, status: str | None = None, type_: str | None = None, limit: int | None = None,
             cursor: str | None = None) -> dict[str, Any]:
        params = {k: v for k, v in (("status", status), ("type", type_), ("limit", limit), ("cursor", cursor))
                  if v is not None}
        resp = self.request("GET", "/api/v1/jobs", params=params)
        try:
            return loads(resp.content)
        except requests.RequestException as exc:
            raise Unavailable(_reason(exc)) from None

    def action(self, job_id: str, verb: str) -> Job:
        """cancel, pause, resume or retry."""
        return self._job(self.request("POST", f"/api/v1/jobs/{job_id}/{verb}"))

    def delete(self, job_id: str) -> None:
        self.request("DELETE", f"/api/v1/jobs/{job_id}").close()

    def result(self, job: dict[str, Any] | str, *, fmt: str | None = None, offset: int | None = None,
               limit: int | None = None) -> requests.Response:
        """The result, streamed: iterate it with `chunks()`, and close it."""
        if isinstance(job, dict):
            path = job.get("result_url") or f"/api/v1/jobs/{job['id']}/result"
        else:
            path = f"/api/v1/jobs/{job}/result"
        params = {k: v for k, v in (("format", fmt), ("offset", offset), ("limit", limit)) if v is not None}
        return self.request("GET", path, params=params, stream=True, read_timeout=120.0)

    @staticmethod
    def chunks(resp: requests.Response, size: int = 1 << 16) -> Iterator[bytes]:
        """The body of a streamed response; a connection lost midway raises Unavailable."""
        try:
            yield from resp.iter_content(size)
        except requests.RequestException as exc:
            raise Unavailable(_reason(exc)) from None
        finally:
            resp.close()

    # -- waiting ---------------------------------------------------------------------------------

    def events(self, job_id: str) -> Iterator[tuple[str, Job | None]]:
        """The job's Server-Sent Events as (event name, job); ends when the server closes the stream."""
        try:
            resp = self.request("GET", f"/api/v1/jobs/{job_id}/events", stream=True,
                                read_timeout=STREAM_READ_TIMEOUT, headers={"Accept": "text/event-stream"},
                                ok=(503,))
        except ApiError as exc:
            if exc.status == 404:
                raise
            raise EventsRefused(str(exc)) from None
        if resp.status_code != 200 or not resp.headers.get("Content-Type", "").startswith("text/event-stream"):
            resp.close()
            raise EventsRefused(f"{resp.status_code} {resp.headers.get('Content-Type', '')}")
        event, data = "message", []
        try:
            for line in _lines(resp.iter_content(chunk_size=None)):
                if not line:
                    if data:
                        raw = "\n".join(data).encode()
                        yield event, (Job.parse(raw) if event != "deleted" else None)
                    event, data = "message", []
                elif line.startswith(":"):
                    continue
                else:
                    name, _, value = line.partition(":")
                    value = value[1:] if value.startswith(" ") else value
                    if name == "event":
                        event = value
                    elif name == "data":
                        data.append(value)
        except requests.RequestException as exc:
            raise Unavailable(_reason(exc)) from None
        finally:
            resp.close()

    def follow(self, job: Job, backoff: Backoff, *, use_events: bool = True, poll_wait: int = LONG_POLL,
               min_poll: float = 1.0) -> Iterator[Job]:
        """Yield the job (first as given, then at each change) until it is terminal.

        Events first; long-polls of `poll_wait` seconds when the stream is refused (or keeps
        closing at once). After an outage the job is read again by id and followed on.
        Raises ApiError 404 if the job is deleted or expires, GaveUp if the server stays away.
        """
        job_id = job["id"]
        yield job
        if job.terminal:
            return
        sse = use_events
        empty_streams = 0
        while True:
            try:
                if sse:
                    seen = False
                    for event, update in self.events(job_id):
                        backoff.ok()
                        if event == "deleted" or update is None:
                            raise ApiError(404, {"title": "Not Found", "detail": f"job {job_id} was deleted"})
                        seen = True
                        job = update
                        yield job
                        if job.terminal:
                            return
                    # The server closed the stream before the end (a restart, a proxy timeout):
                    # read the job again and reconnect; poll instead if streams keep closing at once.
                    empty_streams = 0 if seen else empty_streams + 1
                    if empty_streams >= 3:
                        sse = False
                    job = self.job(job_id)
                    backoff.ok()
                else:
                    t0 = time.monotonic()
                    job = self.job(job_id, wait=poll_wait)
                    backoff.ok()
                    # A paused job, or a server out of wait slots, answers a long-poll at once.
                    if not job.terminal and time.monotonic() - t0 < min_poll:
                        time.sleep(min_poll)
                yield job
                if job.terminal:
                    return
            except EventsRefused:
                sse = False
            except Unavailable as exc:
                backoff.failed(exc)
                job = backoff.call(self.job, job_id)
                yield job
                if job.terminal:
                    return


def _lines(chunks: Iterable[bytes]) -> Iterator[str]:
    """Split a byte stream into text lines at LF (an optional CR before it dropped)."""
    buf = b""
    for chunk in chunks:
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for line in lines:
            yield line.rstrip(b"\r").decode("utf-8", "replace")
    if buf:
        yield buf.rstrip(b"\r").decode("utf-8", "replace")


def default_url() -> str:
    return os.environ.get("CRUNCH_URL") or DEFAULT_URL


def default_token() -> str | None:
    """The API token, from $CRUNCH_TOKEN (an environment variable, not an option: a command line is
    visible to every user of the machine in `ps`)."""
    return os.environ.get("CRUNCH_TOKEN") or None
