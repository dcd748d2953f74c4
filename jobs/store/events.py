"""Job change notifications: one pub/sub connection per process wakes every waiting request.

Waiters register before they re-read the job, and the listener is subscribed before the
first waiter returns from `watch`, so no change between "read" and "wait" is missed.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from typing import Any

import orjson
from redis import Redis

from jobs.compat.redis import pubsub_reader
from jobs.store.keys import EVENTS_CHANNEL

log = logging.getLogger(__name__)


#: How every event opens: publish() puts the (32-hex-digit) job id first.
_ID_OPENING = b'{"id":"'
_ID_END = len(_ID_OPENING) + 32


def publish(conn: Any, job_id: str, status: str, kind: str = "status", extra: dict[str, Any] | None = None) -> None:
    """Announce a change; conn may be a pipeline so it rides along with the write. extra: more fields
    (a finish carries the job's fields and small result, so a waiter need not read them back)."""
    event = {"id": job_id, "status": status, "kind": kind}
    if extra:
        event.update(extra)
    conn.publish(EVENTS_CHANNEL, orjson.dumps(event))


class Watch:
    """A waiter's mailbox: receives the event dicts of one job."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.q: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()

    def get(self, timeout: float) -> dict[str, Any] | None:
        """Next event, or None on timeout."""
        try:
            return self.q.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            return None


class EventHub:
    """Fans pub/sub messages out to the threads waiting on each job id."""

    def __init__(self, conn: Redis) -> None:
        self.conn = conn
        self._lock = threading.Lock()
        self._watches: dict[str, set[Watch]] = {}
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def _ensure_started(self) -> None:
        """Start the listener lazily, once per process (gunicorn forks after import)."""
        if self._thread is not None and self._pid == os.getpid() and self._thread.is_alive():
            return
        with self._lock:
            if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
                self._ready.clear()
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._run, name="crunch-events", daemon=True)
                self._thread.start()
        self._ready.wait(timeout=5)

    def _run(self) -> None:
        down_since: float | None = None  # one warning per outage, not a traceback every retry
        delay = 0.5
        while True:
            pubsub = self.conn.pubsub(ignore_subscribe_messages=False)
            try:
                pubsub.subscribe(EVENTS_CHANNEL)
                # Every web process reads every job's events: replies come straight off the subscribed
                # connection where redis-py allows it (see jobs.compat.redis.pubsub_reader).
                read = pubsub_reader(pubsub)
                while True:
                    reply = read(5.0)
                    if reply is None:
                        continue
                    kind = reply[0]
                    if kind == b"message":
                        self._dispatch(reply[2])
                    elif kind == b"subscribe":
                        if down_since is not None:
                            log.warning("event listener back on Redis after %.1f s", time.monotonic() - down_since)
                            down_since, delay = None, 0.5
                        self._ready.set()
                        self._wake_all({"kind": "resync"})
            except Exception as exc:  # noqa: BLE001 - any failure: resubscribe, waiters re-read
                if down_since is None:
                    down_since = time.monotonic()
                    log.warning("event listener lost Redis (%s: %s); reconnecting", type(exc).__name__, exc)
                self._ready.clear()
                self._wake_all({"kind": "resync"})
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
            finally:
                try:
                    pubsub.close()
                except Exception:  # noqa: BLE001
                    pass

    def _dispatch(self, data: bytes) -> None:
        # publish() writes the id first, so an event for a job nobody here waits on (most of them, with
        # several web processes) is dropped without parsing the rest (a finish carries the job's fields).
        if data.startswith(_ID_OPENING) and data[_ID_END:_ID_END + 1] == b'"':
            with self._lock:
                if data[len(_ID_OPENING):_ID_END].decode() not in self._watches:
                    return
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        with self._lock:
            targets = list(self._watches.get(event.get("id", ""), ()))
        for w in targets:
            w.q.put(event)

    def _wake_all(self, event: dict[str, Any]) -> None:
        """After a (re)subscribe, every waiter re-reads its job: messages may have been lost."""
        with self._lock:
            targets = [w for ws in self._watches.values() for w in ws]
        for w in targets:
            w.q.put(event)

    def watch(self, job_id: str) -> Watch:
        """Register interest before reading the job's state."""
        self._ensure_started()
        w = Watch(job_id)
        with self._lock:
            self._watches.setdefault(job_id, set()).add(w)
        return w

    def unwatch(self, w: Watch) -> None:
        with self._lock:
            ws = self._watches.get(w.job_id)
            if ws is not None:
                ws.discard(w)
                if not ws:
                    del self._watches[w.job_id]

    @property
    def waiting(self) -> int:
        with self._lock:
            return sum(len(ws) for ws in self._watches.values())
