"""Webhooks, the pure parts: who may be called (SSRF), how a call is signed, and when it is retried.

No Redis and no HTTP here: the delivery records are jobs.store.deliveries, the sending loop
jobs.worker.deliverer. The web checks a URL at submit with check_url; the deliverer checks it
again right before each attempt and connects to the address it checked (DNS rebinding: a name
that resolved to a public address at submit may resolve to 127.0.0.1 an hour later).

Signing uses the reference implementation of Standard Webhooks (the `standardwebhooks` package,
MIT, pure Python, no dependencies): `Webhook.sign` is the exact function receivers verify with,
so the two cannot drift. We only build the header set around it and generate the key.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import random
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from urllib.parse import urlsplit

from standardwebhooks.webhooks import Webhook

#: The longest webhook URL accepted (browsers and proxies commonly stop at 2 KiB too).
MAX_URL_LENGTH = 2048
#: A generated key's random bytes (Standard Webhooks asks for 24 to 64).
SECRET_BYTES = 32
SECRET_PREFIX = "whsec_"
#: Event types a delivery may carry.
EVENT_TYPES = ("job.finished", "job.failed", "job.canceled", "batch.finished")


class WebhookURLError(ValueError):
    """A webhook URL that may not be called; the message says why (it becomes the 422's msg)."""


@dataclass(frozen=True)
class RetryPolicy:
    """When a failed delivery is tried again.

    The first retries come after `delays` (5 s, 30 s by default: a receiver that restarts or
    hiccups gets the call within seconds); after those each delay is the previous one times
    `factor`, capped at `cap`, with +-`jitter` spread so that many deliveries to a receiver
    that was down do not come back in one burst. No attempt starts later than `retry_for`
    after the first one; at that moment comes the last try.
    """

    delays: tuple[float, ...] = (5.0, 30.0)
    factor: float = 4.0
    cap: float = 6 * 3600.0
    jitter: float = 0.2
    retry_for: float = 24 * 3600.0

    def delay(self, failures: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after the `failures`-th failed attempt (1 = the first attempt failed)."""
        if failures < 1:
            raise ValueError("failures counts from 1")
        if failures <= len(self.delays):
            base = self.delays[failures - 1]
        else:
            last = self.delays[-1] if self.delays else 1.0
            base = min(self.cap, last * self.factor ** (failures - len(self.delays)))
        spread = (rng or random).uniform(-self.jitter, self.jitter)
        return max(0.0, base * (1.0 + spread))

    def next_attempt(self, failures: int, first_at: float, now: float,
                     rng: random.Random | None = None) -> float | None:
        """Epoch seconds of the next attempt, or None: give up (the retry window is over)."""
        deadline = first_at + self.retry_for
        if now >= deadline:
            return None
        return min(now + self.delay(failures, rng), deadline)


def parse_delays(text: str) -> tuple[float, ...]:
    """WEBHOOK_RETRY_DELAYS ("5,30"): the first retry delays in seconds; ValueError when malformed."""
    out = []
    for item in filter(None, (x.strip() for x in text.split(","))):
        if len(item) > 12:
            raise ValueError(f"delay {item[:12]!r}... is too long")
        value = float(item)
        if not (0 <= value <= 86_400):
            raise ValueError(f"delay {item!r} must be between 0 and 86400 seconds")
        out.append(value)
    if not out:
        raise ValueError("give at least one delay")
    return tuple(out)


# -- the signing key ----------------------------------------------------------------------


def new_secret() -> str:
    """A fresh Standard Webhooks key: `whsec_` and base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(os.urandom(SECRET_BYTES)).decode()


def check_secret(secret: str) -> str:
    """The key as given in WEBHOOK_SECRET, or ValueError saying what is wrong with it."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError("WEBHOOK_SECRET must start with 'whsec_' (Standard Webhooks key format)")
    try:
        raw = base64.b64decode(secret[len(SECRET_PREFIX):], validate=True)
    except ValueError:
        raise ValueError("WEBHOOK_SECRET must be 'whsec_' followed by base64") from None
    if not 24 <= len(raw) <= 64:
        raise ValueError(f"WEBHOOK_SECRET holds {len(raw)} bytes; Standard Webhooks keys hold 24 to 64")
    return secret


@lru_cache(maxsize=4)
def _signer(secret: str) -> Webhook:
    return Webhook(secret)


def signed_headers(secret: str, msg_id: str, body: bytes, now: float) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt: the id stays the same on every attempt (the
    receiver's idempotency key), the timestamp is the attempt's, so a retry is never "too old"."""
    ts = int(now)
    signature = _signer(secret).sign(msg_id, datetime.fromtimestamp(ts, UTC), body.decode())
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": signature}


# -- who may be called (SSRF) ---------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A checked URL: where to connect (the addresses that were checked), and what to send as Host."""

    url: str
    scheme: str
    host: str
    port: int
    path: str
    addresses: tuple[str, ...] = field(default=())


def _forbidden(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why an address may not be called, or None when it is a public unicast address."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_private or not ip.is_global:
        return "private"
    return None


def parse_url(url: object) -> Target:
    """Shape checks only (no DNS): an absolute http(s) URL with a host, no fragment."""
    if not isinstance(url, str):
        raise WebhookURLError("must be a string")
    if len(url) > MAX_URL_LENGTH:
        raise WebhookURLError(f"must be at most {MAX_URL_LENGTH} characters")
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        raise WebhookURLError("must not contain whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise WebhookURLError(f"is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise WebhookURLError("must be an http or https URL")
    host = parts.hostname
    if not host:
        raise WebhookURLError("must name a host")
    if parts.fragment:
        raise WebhookURLError("must not have a #fragment")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(url, parts.scheme, host, port or (443 if parts.scheme == "https" else 80), path)


def resolve(host: str, port: int) -> tuple[str, ...]:
    """Every address the host resolves to (an IP literal is itself), without duplicates, in order."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise WebhookURLError(f"host {host!r} does not resolve ({exc})") from None
    out: list[str] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        addr = str(sockaddr[0]).split("%", 1)[0]
        if addr not in out:
            out.append(addr)
    if not out:
        raise WebhookURLError(f"host {host!r} does not resolve")
    return tuple(out)


def check_url(url: object, allow_private: bool,
              resolver: Callable[[str, int], Sequence[str]] | None = None) -> Target:
    """The URL checked and resolved; WebhookURLError when it may not be called.

    Every address the name resolves to must be public (not only the first): otherwise a name
    with one public and one private record would let the second one through on a later attempt.
    """
    target = parse_url(url)
    addresses = tuple((resolver or resolve)(target.host, target.port))
    if not allow_private:
        for addr in addresses:
            why = _forbidden(ipaddress.ip_address(addr))
            if why is not None:
                article = "an" if why[0] in "aeiou" else "a"
                raise WebhookURLError(f"resolves to {article} {why} address ({addr}); webhooks may only call public "
                                      "addresses (WEBHOOK_ALLOW_PRIVATE=1 lifts this)")
    return Target(target.url, target.scheme, target.host, target.port, target.path, addresses)


def main(argv: list[str] | None = None) -> int:
    """`python -m jobs.webhooks secret`: print the signing key receivers verify with (WEBHOOK_SECRET when
    set, else the one generated once and kept in Redis; it is generated now if no process has yet)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m jobs.webhooks", description=main.__doc__)
    parser.add_argument("command", choices=["secret"])
    parser.parse_args(argv)
    from jobs.settings import Settings
    from jobs.store.connection import redis_from_url
    from jobs.store.deliveries import DeliveryStore

    settings = Settings.from_env()
    print(DeliveryStore(redis_from_url(settings.redis_url)).secret(settings.webhook_secret))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
