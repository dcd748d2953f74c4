"""Settings from the environment, the single table the README documents."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from jobs.types.spec import Limits


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"setting {name} must be an integer, got {raw!r}") from None


@dataclass(frozen=True)
class Settings:
    """Everything the web process reads from the environment, parsed once."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    result_ttl: int = 86_400
    limits: Limits = field(default_factory=Limits)
    #: Long-polls and event streams one web process holds at once; the rest answer at once.
    wait_slots: int = 240
    #: Per client IP, shared by every web process (kept in Redis); "limits" notation, e.g. "600/minute".
    rate_limit_submit: str = "600/minute"
    rate_limit_control: str = "600/minute"
    rate_limit_enabled: bool = True
    #: Live (queued, started or paused) jobs one client IP may have; 0 means no bound.
    max_queued_per_client: int = 1000
    #: Comma-separated `owner:sha256hex` entries (rest.auth); empty means the API is open to all.
    api_tokens: str = ""
    #: Signs the browser session cookie; empty means one generated key shared through Redis.
    secret_key: str = ""
    #: Mount the read-only RQ dashboard at /rq (rest.dashboard).
    rq_dashboard: bool = True
    #: Owners that may see /rq while API_TOKENS is set; empty means nobody (/rq is then 404).
    rq_dashboard_owners: str = ""

    @classmethod
    def from_env(cls) -> Settings:
        limits = Limits(
            max_fib_n=_int("MAX_FIB_N", 10_000_000),
            max_primes_end=_int("MAX_PRIMES_END", 1_000_000_000_000),
            max_primes_list_width=_int("MAX_PRIMES_LIST_WIDTH", 1_000_000_000),
            max_sort_length=_int("MAX_SORT_LENGTH", 10_000_000),
            max_body_bytes=_int("MAX_BODY_BYTES", 268_435_456),
        )
        return cls(
            redis_url=os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0",
            result_ttl=_int("RESULT_TTL", 86_400),
            limits=limits,
            # Leave threads free for submissions however many clients wait.
            wait_slots=_int("WAIT_SLOTS", max(1, _int("WEB_THREADS", 256) - 16)),
            rate_limit_submit=os.environ.get("RATE_LIMIT_SUBMIT", "").strip() or "600/minute",
            rate_limit_control=os.environ.get("RATE_LIMIT_CONTROL", "").strip() or "600/minute",
            rate_limit_enabled=os.environ.get("RATE_LIMIT_ENABLED", "1").strip().lower() not in ("0", "false", "off"),
            max_queued_per_client=_int("MAX_QUEUED_PER_CLIENT", 1000),
            api_tokens=os.environ.get("API_TOKENS", "").strip(),
            secret_key=os.environ.get("SECRET_KEY", "").strip(),
            rq_dashboard=os.environ.get("RQ_DASHBOARD", "1").strip().lower() not in ("0", "false", "off"),
            rq_dashboard_owners=os.environ.get("RQ_DASHBOARD_OWNERS", "").strip(),
        )
