"""gthread that reads requests in its event loop before a thread takes them, so slow clients cost a
socket, not a thread; plus problem+json for the errors gunicorn answers itself.

Stock gthread hands a connection to a pool thread at its first byte, and the thread then blocks
until the headers and (when the app reads it) the body are in. Clients trickling bytes held every
thread: 600 sockets sending their bodies slowly took the service down (issue 17). Here:

- The main loop (one selector, non-blocking recv) buffers each new request until it is complete:
  headers, then a body framed by Content-Length or chunked coding, up to REQUEST_BUFFER_BYTES.
  Only a complete request goes to the thread pool, so a normal API request never waits behind
  slow ones. Headers must be complete within REQUEST_HEADER_TIMEOUT (else 408 and close).
- A request whose body is not complete within REQUEST_BODY_GRACE seconds of its headers, or is
  bigger than the buffer (uploads), or that waits for `100 Continue`, needs one of
  REQUEST_BODY_SLOTS "body slots" (a quarter of the threads by default): it then gets a thread
  that runs the app, which may answer before reading the body (413, 429: see rest.ratelimit), and
  reads the rest under a deadline of REQUEST_BODY_TIMEOUT plus the remaining bytes at
  REQUEST_BODY_MIN_RATE. Past it the read side is shut, the app sees the body end early and
  answers 400. With every slot taken, further such requests wait unread (TCP pushes back on the
  client) in FIFO order; they hold no thread. So slow bodies can hold at most the slots, for at
  most their deadline, and three quarters of the threads always serve complete requests.
- A big upload (REQUEST_BIG_BODY_BYTES, 16 MiB, or chunked) needs one of REQUEST_BIG_BODY_SLOTS
  (1 per process) instead, held until its request ends and read at REQUEST_BIG_BODY_MIN_RATE at
  least: what bounds the web's memory is how many bodies it parses at once, not how many it reads.
- `Expect: 100-continue` is answered only when the app first reads the body: an app that refuses
  the request (429 over budget, 413) answers before the client sends a byte of it.

Measured (tests/test_abuse.py, 2 CPUs, 2 processes x 256 threads): with 1,000 sockets trickling
bodies, a normal client's requests were answered in well under 2 s (the test prints the figures).

The subclass overrides gthread's methods (accept, handle, handle_request, murder_pending, the
keep-alive readable callback) and reads a few of its private fields (a request's expectation flag,
a length reader's remaining count); all such touches are here, and gunicorn itself is imported
through jobs.compat.gunicorn, which checks its version at import. TLS and HTTP/2 fall back to
gthread's own path (Crunch serves neither itself).
"""

from __future__ import annotations

import errno
import os
import selectors
import socket
import threading
import time
from collections import deque
from functools import partial
from typing import Any

import orjson

from jobs.compat.gunicorn import TConn, ThreadWorker, util
from rest.draining import STOPPING


def _env_float(name: str, default: float) -> float:
    return float(os.environ.get(name) or default)


#: Seconds a connection may take to send a request's headers.
HEADER_TIMEOUT = _env_float("REQUEST_HEADER_TIMEOUT", 10)
#: Bytes of one request (headers and body) buffered in the event loop before it needs a body slot.
BUFFER_BYTES = int(_env_float("REQUEST_BUFFER_BYTES", 256 * 1024))
#: Seconds a body may take to arrive in the event loop before the request needs a body slot.
BODY_GRACE = _env_float("REQUEST_BODY_GRACE", 1)
#: Seconds a thread reading a body allows at least, plus the remaining bytes at BODY_MIN_RATE.
BODY_TIMEOUT = _env_float("REQUEST_BODY_TIMEOUT", 20)
#: Bytes per second a body read by a thread must average (legitimate uploads are far faster).
BODY_MIN_RATE = _env_float("REQUEST_BODY_MIN_RATE", 64 * 1024)
#: A body at least this big is a "big upload": it needs one of REQUEST_BIG_BODY_SLOTS, held until its
#: request ends, because parsing it is what costs memory (a 10^7-number sort body of 79 MB peaks at
#: 0.6-0.8 GiB in the web while it is decoded, packed and stored), not reading it.
BIG_BODY_BYTES = int(_env_float("REQUEST_BIG_BODY_BYTES", 16 << 20))
#: Big uploads one process handles at once; more wait unread in the event loop (TCP pushes back).
BIG_BODY_SLOTS = int(_env_float("REQUEST_BIG_BODY_SLOTS", 1))
#: Bytes per second a big upload must average: a slow one would hold a big slot for everyone.
BIG_BODY_MIN_RATE = _env_float("REQUEST_BIG_BODY_MIN_RATE", 1 << 20)
#: Largest request head buffered before it goes to gunicorn's parser (which answers 431 or 414).
HEAD_CAP = 64 * 1024


def _problem_bytes(status: int, reason: str, detail: str) -> bytes:
    body = orjson.dumps({"type": "about:blank", "title": reason, "status": status, "detail": detail})
    return (f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: application/problem+json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode("latin-1") + body


def write_problem(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's error page (a request line or headers too long, a malformed request) as problem+json."""
    util.write_nonblock(sock, _problem_bytes(status_int, reason, mesg or reason))


# gunicorn answers the errors it finds before any app runs with util.write_error (HTML); the
# contract wants problem+json for every one of them.
util.write_error = write_problem


def _chunked_complete(buf: bytes | bytearray, pos: int) -> bool | None:
    """Whether a chunked body from `pos` is complete (last chunk and trailers); None if malformed."""
    while True:
        nl = buf.find(b"\r\n", pos)
        if nl < 0:
            return False
        size_text = bytes(buf[pos:nl]).split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            return None
        if size == 0:
            return buf.find(b"\r\n\r\n", nl) >= 0 or buf[nl:nl + 4] == b"\r\n\r\n"
        pos = nl + 2 + size + 2
        if pos > len(buf):
            return False


class _Pending:
    """A request being read by the event loop, before any thread sees it."""

    __slots__ = ("body_since", "buf", "chunked", "conn", "expect", "head_end", "length", "started")

    def __init__(self, conn: Any, now: float) -> None:
        self.conn = conn
        self.buf = bytearray()
        self.started = now
        self.head_end = -1
        self.length = 0
        self.chunked = False
        self.expect = False
        self.body_since = 0.0

    def verdict(self, now: float) -> str:
        """"more" (keep reading), "ready" (complete: any thread) or "slot" (needs a body slot)."""
        buf = self.buf
        if self.head_end < 0:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return "slot" if len(buf) > HEAD_CAP else "more"
            self.head_end = end + 4
            self.body_since = now
            if not self._frame(bytes(buf[:end])):
                return "ready"  # framing gunicorn will refuse (400): let it answer
        if self.chunked:
            done = _chunked_complete(buf, self.head_end)
            if done is None or done:
                return "ready"
        elif len(buf) - self.head_end >= self.length:
            return "ready"
        if self.expect or len(buf) >= BUFFER_BYTES or self.length > BUFFER_BYTES:
            return "slot"
        return "more"

    def _frame(self, head: bytes) -> bool:
        """Read the body's framing from the headers; False when it is ambiguous or malformed."""
        lengths = []
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                lengths.append(value.strip())
            elif name == b"transfer-encoding":
                self.chunked = True
            elif name == b"expect" and value.strip().lower() == b"100-continue":
                self.expect = True
        if self.chunked:
            return not lengths
        if len(lengths) > 1 or (lengths and not (lengths[0].isdigit() and len(lengths[0]) <= 18)):
            return False
        self.length = int(lengths[0]) if lengths else 0
        return True


class CrunchThreadWorker(ThreadWorker):
    """ThreadWorker that buffers requests in its event loop and bounds slow bodies (module docstring)."""

    header_timeout = HEADER_TIMEOUT

    def init_process(self) -> None:
        # Threads with a deadline, by thread: (deadline, conn, what) where what is "headers" or "body".
        self._reading: dict[int, tuple[float, Any, str]] = {}
        self._reading_lock = threading.Lock()
        self._pending: dict[Any, _Pending] = {}  # main thread only
        slots = os.environ.get("REQUEST_BODY_SLOTS")
        # Per pool ("body": slow or unfinished bodies, "big": big uploads): [slots free, conns waiting unread].
        self._pools: dict[str, list[Any]] = {
            "body": [int(slots) if slots else max(1, self.cfg.threads // 4), deque()],
            "big": [max(1, BIG_BODY_SLOTS), deque()],
        }
        self._buffering = not self.cfg.is_ssl
        super().init_process()

    def handle_exit(self, sig: Any, frame: Any) -> None:
        """SIGTERM: tell the app (open event streams end), then gthread drains for graceful_timeout."""
        STOPPING.set()
        super().handle_exit(sig, frame)

    # -- the event loop ---------------------------------------------------------------------------

    def accept(self, listener: Any) -> None:
        """Accept, then read the request here; stock gthread would hand it to a thread at once."""
        if not self._buffering:
            return super().accept(listener)
        try:
            sock, addr = listener.accept()
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        self._read_request(TConn(self.cfg, sock, addr, listener.getsockname()))

    def on_client_socket_readable(self, conn: Any, client: Any) -> None:
        """A kept-alive connection's next request is read here too."""
        if not self._buffering:
            return super().on_client_socket_readable(conn, client)
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self._read_request(conn)

    def _read_request(self, conn: Any) -> None:
        pending = _Pending(conn, time.monotonic())
        self._pending[conn] = pending
        conn.sock.setblocking(False)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_request_bytes, pending))

    def _on_request_bytes(self, pending: _Pending, sock: Any) -> None:
        try:
            data = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(pending)
            return
        pending.buf += data
        verdict = pending.verdict(time.monotonic())
        if verdict != "more":
            self._hand_over(pending, verdict == "slot")

    def _unwatch(self, pending: _Pending) -> None:
        self._pending.pop(pending.conn, None)
        try:
            self.poller.unregister(pending.conn.sock)
        except (KeyError, ValueError, OSError):
            pass

    def _drop(self, pending: _Pending, answer: bytes = b"") -> None:
        self._unwatch(pending)
        if answer:
            try:
                pending.conn.sock.send(answer)
            except OSError:
                pass
        self.nr_conns -= 1
        pending.conn.close()

    def _hand_over(self, pending: _Pending, needs_slot: bool) -> None:
        self._unwatch(pending)
        conn = pending.conn
        conn.crunch_prebuffered = bytes(pending.buf)
        big = pending.chunked or pending.length >= BIG_BODY_BYTES
        conn.crunch_slot = ("big" if big else "body") if needs_slot else False
        conn.data_ready = True
        if needs_slot:
            pool = self._pools[conn.crunch_slot]
            if pool[0] <= 0:
                pool[1].append(conn)
                return
            pool[0] -= 1
        self.enqueue_req(conn)

    def _release_slot(self, name: str) -> None:
        """A body slot's body is read, or a big upload's request ended: the next parked request may go."""
        pool = self._pools[name]
        pool[0] += 1
        while pool[1] and pool[0] > 0:
            pool[0] -= 1
            self.enqueue_req(pool[1].popleft())

    def murder_pending(self) -> None:
        """About once a second: header deadlines, body grace, and threads past their deadline."""
        super().murder_pending()
        now = time.monotonic()
        for pending in list(self._pending.values()):
            if pending.head_end < 0:
                if now - pending.started > self.header_timeout:
                    self.log.warning("closed a connection from %s that sent no complete headers in %.0f s",
                                     pending.conn.client, self.header_timeout)
                    self._drop(pending, _problem_bytes(408, "Request Timeout", "the request's headers took "
                                                       f"longer than {self.header_timeout:.0f} s"))
            elif now - pending.body_since > BODY_GRACE:
                self._hand_over(pending, True)
        with self._reading_lock:
            expired = [ident for ident, (deadline, _, _) in self._reading.items() if deadline <= now]
            late = [self._reading.pop(ident) for ident in expired]
        for _, conn, what in late:
            try:
                # Headers: EOF wakes the thread, which closes the connection. Body: only the read side,
                # so the app sees the body end early and can still answer (400).
                conn.sock.shutdown(socket.SHUT_RDWR if what == "headers" else socket.SHUT_RD)
            except OSError:
                pass  # already closed by the client
            if what == "headers":
                self.log.warning("closed a connection from %s that sent no complete headers in %.0f s",
                                 conn.client, self.header_timeout)
            else:
                self.log.warning("cut off a request body from %s that arrived slower than %.0f bytes/s",
                                 conn.client, BODY_MIN_RATE)

    # -- the pool threads -------------------------------------------------------------------------

    def _arm(self, conn: Any, deadline: float, what: str) -> None:
        with self._reading_lock:
            self._reading[threading.get_ident()] = (deadline, conn, what)

    def _disarm(self) -> None:
        with self._reading_lock:
            self._reading.pop(threading.get_ident(), None)

    def handle(self, conn: Any) -> Any:
        """Give the parser what the event loop read; arm the header deadline for what it did not."""
        prebuffered = getattr(conn, "crunch_prebuffered", None)
        if prebuffered is not None:
            conn.crunch_prebuffered = None
            conn.sock.setblocking(True)
            conn.init()
            conn.parser.unreader.unread(prebuffered)
        self._arm(conn, time.monotonic() + self.header_timeout, "headers")
        try:
            return super().handle(conn)
        finally:
            self._disarm()
            held = getattr(conn, "crunch_slot", False)
            if held:
                conn.crunch_slot = False
                self.method_queue.defer(self._release_slot, held)

    def handle_request(self, req: Any, conn: Any) -> Any:
        """Headers are in. A body slot's body is read under its deadline; `100 Continue` waits for the app."""
        self._disarm()
        body = getattr(req, "body", None)
        reader = getattr(body, "reader", None)
        if not (getattr(conn, "crunch_slot", False) and reader is not None):
            return super().handle_request(req, conn)
        state = self._bound_body(req, conn, reader)
        keepalive = super().handle_request(req, conn)
        # A body the app did not read (answered 413 or 429 first) is not drained: the client may not
        # even send it (100-continue) or it may be 100 MB. Close instead (gunicorn closes gracefully).
        return keepalive and state["done"]

    def _bound_body(self, req: Any, conn: Any, reader: Any) -> dict[str, bool]:
        remaining = getattr(reader, "length", None)
        if not isinstance(remaining, int):
            remaining = int(os.environ.get("MAX_BODY_BYTES") or 256 << 20)
        rate = BIG_BODY_MIN_RATE if conn.crunch_slot == "big" else BODY_MIN_RATE
        self._arm(conn, time.monotonic() + BODY_TIMEOUT + remaining / rate, "body")
        expect = bool(getattr(req, "_expected_100_continue", False))
        req._expected_100_continue = False  # sent on the first read below, not before the app runs
        read = reader.read
        state = {"continue": expect, "done": False}

        def bounded_read(size: int) -> bytes:
            if state["continue"]:
                state["continue"] = False
                util.write(conn.sock, b"HTTP/1.1 100 Continue\r\n\r\n")
            data = read(size)
            if not state["done"] and (not data or getattr(reader, "length", None) == 0):
                state["done"] = True
                self._disarm()
                if conn.crunch_slot == "body":  # a big upload keeps its slot while the app parses it
                    conn.crunch_slot = False
                    self.method_queue.defer(self._release_slot, "body")
            return data

        reader.read = bounded_read
        return state

    def handle_http2(self, conn: Any) -> Any:
        """An HTTP/2 connection is long-lived by design; its streams have gunicorn's own timeouts."""
        self._disarm()
        return super().handle_http2(conn)
