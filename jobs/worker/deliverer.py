"""The webhook delivery loop: one per worker supervisor (a child process next to the rq workers).

It claims due deliveries (jobs.store.deliveries: atomically, with a lease), sends each from a small
thread pool so one slow receiver does not hold the others, and settles the outcome: delivered on a
2xx, else a retry at the policy's next time (jobs.webhooks.RetryPolicy), or failed once the retry
window is over. Every attempt re-checks the URL (DNS rebinding) and connects to the very address it
checked, with the URL's host name as Host header and TLS server name, so a name that resolves to a
private address by the time of the call is refused rather than called. Redirects are not followed
(a 3xx is a failed attempt): a redirect could lead anywhere, including to a private address.

Why urllib3 rather than requests: connecting to a checked address while verifying the certificate
against the URL's host name needs urllib3's connection-pool options (server_hostname,
assert_hostname); requests would resolve the name again itself.
"""

from __future__ import annotations

import base64
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson
import urllib3
from redis import Redis

from jobs.settings import Settings
from jobs.store.deliveries import Delivery, DeliveryStore
from jobs.webhooks import RetryPolicy, WebhookURLError, check_url, signed_headers

log = logging.getLogger("crunch.webhooks")

#: Deliveries in flight at once per deliverer.
CONCURRENCY = 16
#: How often the loop looks for due deliveries when none is about to be due (seconds).
POLL_INTERVAL = 0.25
#: Most response bytes read (and thrown away) from a receiver.
MAX_RESPONSE_BYTES = 64 << 10
#: last_error is kept this short.
MAX_ERROR_CHARS = 300
USER_AGENT = "Crunch-Webhooks/1"


@dataclass(frozen=True)
class DelivererConfig:
    allow_private: bool = False
    timeout: float = 10.0
    policy: RetryPolicy = field(default_factory=RetryPolicy)

    @property
    def lease(self) -> float:
        """A claimed delivery is due again after this long if its deliverer never settles it."""
        return 3 * self.timeout + 30.0


#: Builds a delivery's body at its first attempt: (event payload's `data`, event time as RFC 3339).
Renderer = Callable[[Delivery], tuple[Any, str]]


def post(url: str, body: bytes, headers: dict[str, str], allow_private: bool, timeout: float) -> int:
    """POST body to url, connecting only to an address check_url approved; the HTTP status, or raises
    WebhookURLError (refused) / urllib3 errors (transport)."""
    target = check_url(url, allow_private)
    parts = urlsplit(url)
    host_header = parts.netloc.rpartition("@")[2]
    headers = {**headers, "Host": host_header, "User-Agent": USER_AGENT, "Content-Type": "application/json"}
    if parts.username is not None:
        creds = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(creds).decode()
    addr = target.addresses[0]
    t = urllib3.Timeout(connect=timeout, read=timeout)
    if target.scheme == "https":
        pool: urllib3.HTTPConnectionPool = urllib3.HTTPSConnectionPool(
            addr, target.port, timeout=t, retries=False, maxsize=1, server_hostname=target.host,
            assert_hostname=target.host, cert_reqs="CERT_REQUIRED")
    else:
        pool = urllib3.HTTPConnectionPool(addr, target.port, timeout=t, retries=False, maxsize=1)
    try:
        resp = pool.urlopen("POST", target.path, body=body, headers=headers, redirect=False, retries=False,
                            preload_content=False, assert_same_host=False)
        try:
            resp.read(MAX_RESPONSE_BYTES)
        finally:
            resp.release_conn()
        return resp.status
    finally:
        pool.close()


def describe(exc: BaseException) -> str:
    """A short reason for last_error, not a 300-character urllib3 repr."""
    if isinstance(exc, WebhookURLError):
        return f"refused: {exc}"
    text = str(exc)
    for needle, short in (("timed out", "timed out"), ("Connection refused", "connection refused"),
                          ("Connection reset", "connection reset"), ("CERTIFICATE_VERIFY_FAILED",
                                                                     "TLS certificate not valid for the host"),
                          ("Remote end closed", "connection closed without an answer")):
        if needle in text:
            return short
    return f"{type(exc).__name__}: {text}"[:MAX_ERROR_CHARS]


class Deliverer:
    """Claims, sends and settles deliveries until stopped."""

    def __init__(self, conn: Redis, store: DeliveryStore, secret: str, render: Renderer,
                 config: DelivererConfig | None = None) -> None:
        self.conn = conn
        self.store = store
        self.secret = secret
        self.render = render
        self.config = config or DelivererConfig()
        self._free = threading.Semaphore(CONCURRENCY)
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        """The loop: claim as many as there are free slots, hand them to the pool, sleep until the next is due."""
        with ThreadPoolExecutor(CONCURRENCY, thread_name_prefix="webhook") as pool:
            while not self._stop.is_set():
                try:
                    n = self._claim_into(pool)
                except Exception as exc:  # noqa: BLE001 - Redis away: try again shortly
                    log.warning("webhook deliverer could not reach Redis (%s); retrying", exc)
                    n = 0
                    self._stop.wait(1.0)
                if not n:
                    self._stop.wait(POLL_INTERVAL)
            # Leaving the with-block waits for the attempts in flight, so a clean stop settles them all.

    def _claim_into(self, pool: ThreadPoolExecutor) -> int:
        free = 0
        while self._free.acquire(blocking=False):
            free += 1
        if not free:
            return 0
        try:
            token, due = self.store.claim(free, self.config.lease)
        except Exception:
            for _ in range(free):
                self._free.release()
            raise
        for _ in range(free - len(due)):
            self._free.release()
        for d in due:
            pool.submit(self._attempt_and_release, d, token)
        return len(due)

    def _attempt_and_release(self, d: Delivery, token: str) -> None:
        try:
            self.attempt(d, token)
        except Exception:
            log.exception("webhook %s: attempt crashed", d.id)
        finally:
            self._free.release()

    def attempt(self, d: Delivery, token: str) -> str:
        """One attempt of a claimed delivery, settled; returns the outcome."""
        now = time.time()
        fields: dict[str, Any] = {}
        if not d.body:
            data, at = self.render(d)
            d.body = orjson.dumps({"type": d.type, "timestamp": at, "data": data})
            fields["body"] = d.body
        if d.first_attempt_at is None:
            d.first_attempt_at = now
            fields["first_attempt_at"] = repr(now)
        headers = signed_headers(self.secret, "msg_" + d.id, d.body, now)
        try:
            status = post(d.url, d.body, headers, self.config.allow_private, self.config.timeout)
            error = "" if 200 <= status < 300 else f"HTTP {status}"
        except Exception as exc:  # noqa: BLE001 - every failure of the call is a failed attempt
            error = describe(exc)
        fields["last_error"] = error
        fields["last_attempt_at"] = repr(time.time())
        if not error:
            outcome, due = "delivered", None
        else:
            due = self.config.policy.next_attempt(d.attempts + 1, d.first_attempt_at, time.time())
            outcome = "retry" if due is not None else "failed"
        if not self.store.settle(d, token, outcome, due, fields):
            log.warning("webhook %s: lease lost before the attempt settled (it took over %.0f s)",
                        d.id, self.config.lease)
        elif error:
            log.info("webhook %s to %s: attempt %d failed (%s); %s", d.id, d.url, d.attempts + 1, error,
                     f"next in {due - time.time():.1f} s" if due is not None else "giving up")
        else:
            log.info("webhook %s delivered to %s (attempt %d)", d.id, d.url, d.attempts + 1)
        return outcome


def renderer(conn: Redis, settings: Settings) -> Renderer:
    """Builds a delivery's `data`: the job resource (small results inline) or the batch resource, as the API
    shows them at the time of the first attempt, and the event's time (when the job or batch ended)."""
    from jobs.batches import BatchService
    from jobs.service import JobService
    from jobs.store.record import rfc3339
    from jobs.store.request_cache import request_cache_for

    jobs = JobService(conn, request_cache_for(conn), settings)
    batches = BatchService(jobs, settings)

    def render(d: Delivery) -> tuple[Any, str]:
        if d.kind == "batch":
            batch = batches.get(d.target)
            if batch is not None:
                return batches.resource(batch), rfc3339(batch.ended_at or time.time()) or ""
        else:
            rec = jobs.get(d.target)
            if rec is not None:
                return jobs.resource(rec), rfc3339(rec.ended_at or time.time()) or ""
        # Deleted (or expired) before its first call: say so rather than never calling.
        status = d.type.partition(".")[2] or "canceled"
        return {"id": d.target, "status": status, "deleted": True}, rfc3339(time.time()) or ""

    return render


def run_deliverer(url: str) -> None:
    """The delivery loop as its own process (the worker supervisor starts and restarts it): SIGTERM lets the
    attempts in flight settle, then it exits."""
    from jobs.settings import process_settings
    from jobs.store.connection import redis_from_url

    os.setpgrp()  # a terminal's Ctrl-C reaches only the supervisor, which stops us once
    logging.basicConfig(level=logging.INFO, format="%(asctime)s webhooks %(process)d %(levelname)s %(message)s",
                        force=True)
    settings = process_settings()
    conn = redis_from_url(url)
    store = DeliveryStore(conn, settings.result_ttl)
    secret = ""
    while not secret:
        try:
            secret = store.secret(settings.webhook_secret)
        except Exception as exc:  # noqa: BLE001 - Redis not there yet: the supervisor's workers wait the same way
            log.warning("webhook deliverer waiting for Redis (%s)", exc)
            time.sleep(1.0)
    policy = RetryPolicy(delays=settings.webhook_retry_delays, retry_for=float(settings.webhook_retry_for))
    deliverer = Deliverer(conn, store, secret, renderer(conn, settings),
                          DelivererConfig(settings.webhook_allow_private, float(settings.webhook_timeout), policy))
    signal.signal(signal.SIGTERM, lambda signum, frame: deliverer.stop())
    signal.signal(signal.SIGINT, lambda signum, frame: deliverer.stop())
    log.info("webhook deliverer running (private addresses %s)",
             "allowed" if settings.webhook_allow_private else "refused")
    deliverer.run()
