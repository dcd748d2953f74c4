"""gthread with a deadline on reading a request's headers, which gthread itself lacks.

gthread hands a connection to a pool thread as soon as its first byte arrives, and that thread
then blocks until the headers are complete. A client that trickles its headers a byte at a time
(slowloris) would hold the thread for as long as it likes; a few hundred such clients would take
every thread. Here the main loop shuts down any connection still reading its headers after
REQUEST_HEADER_TIMEOUT seconds, which frees the thread. Bodies are not bounded this way
(uploads of 256 MB may take minutes); put a buffering reverse proxy in front for that.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any

from gunicorn.workers.gthread import ThreadWorker

#: Seconds a connection may take to send a request's headers, counted from when a thread takes it.
HEADER_TIMEOUT = float(os.environ.get("REQUEST_HEADER_TIMEOUT") or 10)


class CrunchThreadWorker(ThreadWorker):
    """ThreadWorker that bounds how long a pool thread waits for one request's headers."""

    header_timeout = HEADER_TIMEOUT

    def init_process(self) -> None:
        """Deadlines by pool thread: a thread reads one connection's headers at a time."""
        self._reading: dict[int, tuple[float, Any]] = {}
        self._reading_lock = threading.Lock()
        super().init_process()

    def handle(self, conn: Any) -> Any:
        """Arm the deadline while this thread parses the request line and headers."""
        with self._reading_lock:
            self._reading[threading.get_ident()] = (time.monotonic() + self.header_timeout, conn)
        try:
            return super().handle(conn)
        finally:
            self._headers_read()

    def handle_request(self, req: Any, conn: Any) -> Any:
        """Headers are in: the app (body reads, long-polls, event streams) is not under the deadline."""
        self._headers_read()
        return super().handle_request(req, conn)

    def handle_http2(self, conn: Any) -> Any:
        """An HTTP/2 connection is long-lived by design; its streams have gunicorn's own timeouts."""
        self._headers_read()
        return super().handle_http2(conn)

    def _headers_read(self) -> None:
        with self._reading_lock:
            self._reading.pop(threading.get_ident(), None)

    def murder_pending(self) -> None:
        """Runs about once a second on the main loop: also cut connections past their header deadline."""
        super().murder_pending()
        now = time.monotonic()
        with self._reading_lock:
            expired = [ident for ident, (deadline, _) in self._reading.items() if deadline <= now]
            conns = [self._reading.pop(ident)[1] for ident in expired]
        for conn in conns:
            try:
                # Wakes the thread blocked in recv() with EOF; it then closes the connection as usual.
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed by the client
            self.log.warning("closed a connection from %s that sent no complete headers in %.0f s",
                             conn.client, self.header_timeout)
