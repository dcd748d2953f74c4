"""Every setting Crunch reads from the environment, parsed once into one frozen object.

The web (rest.create_app), the worker supervisor (jobs.worker.supervisor.main) and the runner in each
worker process call Settings.from_env() once and pass the object down; no module reads os.environ at
import time, so a test or a host can build any number of differently configured apps in one process.
README.md's settings table documents each name; v1.1's rows are parsed here already and carried to
the code that implements them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache

from jobs.types.spec import Limits

_OFF = ("0", "false", "off", "no")


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if len(raw) > 40:  # bound the digits before int() (Python's 4,300-digit limit is far too generous)
        raise SystemExit(f"setting {name} must be an integer, got {raw[:40]!r}...")
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"setting {name} must be an integer, got {raw!r}") from None


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if len(raw) > 40:
        raise SystemExit(f"setting {name} must be a number of seconds, got {raw[:40]!r}...")
    try:
        value = float(raw)
    except ValueError:
        raise SystemExit(f"setting {name} must be a number of seconds, got {raw!r}") from None
    if not value >= 0 or value == float("inf"):
        raise SystemExit(f"setting {name} must be 0 or more seconds, got {raw!r}")
    return value


def _str(name: str, default: str = "") -> str:
    return os.environ.get(name, "").strip() or default


def _flag(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    return default if not raw else raw not in _OFF


def _delays(name: str, default: tuple[float, ...]) -> tuple[float, ...]:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    from jobs.webhooks import parse_delays

    try:
        return parse_delays(raw[:200])
    except ValueError as exc:
        raise SystemExit(f"setting {name} must be seconds separated by commas, like '5,30': {exc}") from None


@dataclass(frozen=True)
class Settings:
    """Everything Crunch reads from the environment, parsed once (see the README's settings table)."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    #: Seconds a finished result, its cache entry and an ended job's record are kept.
    result_ttl: int = 86_400
    #: Seconds a paused job (record, input, checkpoint) is kept before it expires: a week, so a job
    #: paused on Friday can still be resumed on Monday, yet a forgotten one does not hold memory forever.
    paused_ttl: int = 7 * 86_400
    #: A running job whose heartbeat is older than this (seconds) is presumed lost with its worker.
    heartbeat_timeout: int = 30
    limits: Limits = field(default_factory=Limits)
    #: Per-type run limits in seconds over the types' own defaults (JOB_TIMEOUTS="primes=7200,sort=300").
    job_timeouts: dict[str, int] = field(default_factory=dict)
    #: Long-polls and event streams one web process holds at once; the rest answer at once.
    wait_slots: int = 240
    #: Per client, shared by every web process (kept in Redis); "limits" notation, e.g. "600/minute".
    rate_limit_submit: str = "600/minute"
    rate_limit_control: str = "600/minute"
    rate_limit_enabled: bool = True
    #: Live (queued, started or paused) jobs one client may have; 0 means no bound.
    max_queued_per_client: int = 20_000
    #: Comma-separated `owner:sha256hex` entries (rest.auth); empty means the API is open to all.
    api_tokens: str = ""
    #: Signs the browser session cookie; empty means one generated key shared through Redis.
    secret_key: str = ""
    #: Mount the read-only RQ dashboard at /rq (rest.dashboard).
    rq_dashboard: bool = True
    #: Owners that may see /rq while API_TOKENS is set; empty means nobody (/rq is then 404).
    rq_dashboard_owners: str = ""
    #: The address the web binds (v1.1).
    host: str = "0.0.0.0"
    #: Worker processes `python worker.py` supervises on this host.
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    #: The most items in one batch (v1.1).
    max_batch_jobs: int = 10_000
    #: The Standard Webhooks signing key (`whsec_...`); empty: generated once and kept in Redis (v1.1).
    webhook_secret: str = field(default="", repr=False)
    #: Allow webhook URLs on loopback and private addresses (v1.1).
    webhook_allow_private: bool = False
    #: Seconds before the first retries of a failed webhook call; after them each delay is the last one
    #: times 4 (with jitter), up to 6 h apart (WEBHOOK_RETRY_DELAYS="5,30").
    webhook_retry_delays: tuple[float, ...] = (5.0, 30.0)
    #: Seconds after a delivery's first attempt when retrying stops (its last try is then).
    webhook_retry_for: int = 86_400
    #: Seconds one webhook call may take to connect, and again to answer.
    webhook_timeout: int = 10
    #: Input and result bytes one client may hold (v1.1).
    max_stored_bytes_per_client: int = 2_147_483_648
    #: Reverse proxies in front of the web whose X-Forwarded-For/-Proto to believe (Compose's nginx: 1);
    #: 0 trusts none, since a client could then pick its own address and escape its rate budget.
    trusted_proxies: int = 0

    #: Seconds a checkpointing job (primes, CSV) runs before it may be preempted for another client's
    #: waiting work (0: never). 5 s: a preemption stops at a checkpoint, so no work is redone; it costs one
    #: transition, a new work horse and the kernel's restart from the checkpoint, too little to show against
    #: the noise of bench "mixed" (2 preemptions of 37 s counts), so well under 1 % of a 5 s quantum, while a
    #: client behind a backlog of hour-long jobs gets a worker within seconds. PREEMPT_QUANTUM.
    preempt_quantum: float = 5.0
    #: A primes job expected to take longer than this (seconds of one worker, a run's setup aside) is split
    #: into parts that run on every idle worker at once (jobs.store.fanout). 0.5 s: a 10^10-wide count (1 s
    #: of one worker from 0, 3 s below 10^15, jobs.types.primes.COUNT_COST) splits, a trivial one does not.
    #: Each part costs a dispatch, a start and a finish (a few ms) and a fork of a work horse; measured
    #: between a worker's parts at load 4 (README "Wide jobs"): 0.14 s, or 0.5-0.6 s when the worker misses
    #: its horse's exit and waits out its 0.5 s poll. FANOUT_MIN_SECONDS; 0 or less turns splitting off.
    fanout_min_seconds: float = 0.5
    #: At most this many parts per job. FANOUT_MAX_PARTS.
    fanout_max_parts: int = 64

    def job_timeout(self, job_type: str) -> int:
        """The run limit of a job type: JOB_TIMEOUTS' entry, else the type's own default."""
        if job_type in self.job_timeouts:
            return self.job_timeouts[job_type]
        from jobs.types.registry import JOB_TYPES

        return JOB_TYPES[job_type].timeout

    @classmethod
    def from_env(cls) -> Settings:
        from jobs.types.registry import parse_timeouts

        d = Limits()
        try:
            limits = Limits(
                max_fib_n=_int("MAX_FIB_N", d.max_fib_n),
                max_primes_end=_int("MAX_PRIMES_END", d.max_primes_end),
                max_primes_list_width=_int("MAX_PRIMES_LIST_WIDTH", d.max_primes_list_width),
                max_primes_count_width=_int("MAX_PRIMES_COUNT_WIDTH", d.max_primes_count_width),
                max_sort_length=_int("MAX_SORT_LENGTH", d.max_sort_length),
                max_body_bytes=_int("MAX_BODY_BYTES", d.max_body_bytes),
            )
        except ValueError as exc:  # a limit beyond 2^64 - 1 (or negative): stop with the setting's name
            raise SystemExit(str(exc)) from None
        s = cls()
        return cls(
            redis_url=_str("REDIS_URL", s.redis_url),
            result_ttl=_int("RESULT_TTL", s.result_ttl),
            paused_ttl=_int("PAUSED_TTL", s.paused_ttl),
            heartbeat_timeout=_int("HEARTBEAT_TIMEOUT", s.heartbeat_timeout),
            limits=limits,
            job_timeouts=parse_timeouts(os.environ.get("JOB_TIMEOUTS", "")),
            # Leave threads free for submissions however many clients wait.
            wait_slots=_int("WAIT_SLOTS", max(1, _int("WEB_THREADS", 256) - 16)),
            rate_limit_submit=_str("RATE_LIMIT_SUBMIT", s.rate_limit_submit),
            rate_limit_control=_str("RATE_LIMIT_CONTROL", s.rate_limit_control),
            rate_limit_enabled=_flag("RATE_LIMIT_ENABLED", s.rate_limit_enabled),
            max_queued_per_client=_int("MAX_QUEUED_PER_CLIENT", s.max_queued_per_client),
            api_tokens=_str("API_TOKENS"),
            secret_key=_str("SECRET_KEY"),
            rq_dashboard=_flag("RQ_DASHBOARD", s.rq_dashboard),
            rq_dashboard_owners=_str("RQ_DASHBOARD_OWNERS"),
            host=_str("HOST", s.host),
            workers=_int("WORKERS", s.workers),
            max_batch_jobs=_int("MAX_BATCH_JOBS", s.max_batch_jobs),
            webhook_secret=_str("WEBHOOK_SECRET"),
            webhook_allow_private=_flag("WEBHOOK_ALLOW_PRIVATE", s.webhook_allow_private),
            webhook_retry_delays=_delays("WEBHOOK_RETRY_DELAYS", s.webhook_retry_delays),
            webhook_retry_for=_int("WEBHOOK_RETRY_FOR", s.webhook_retry_for),
            webhook_timeout=_int("WEBHOOK_TIMEOUT", s.webhook_timeout),
            max_stored_bytes_per_client=_int("MAX_STORED_BYTES_PER_CLIENT", s.max_stored_bytes_per_client),
            trusted_proxies=_int("TRUSTED_PROXIES", s.trusted_proxies),
            preempt_quantum=_float("PREEMPT_QUANTUM", s.preempt_quantum),
            fanout_min_seconds=_float("FANOUT_MIN_SECONDS", s.fanout_min_seconds),
            fanout_max_parts=_int("FANOUT_MAX_PARTS", s.fanout_max_parts),
        )


@lru_cache(maxsize=1)
def process_settings() -> Settings:
    """This process's settings, read from the environment on first use: for code rq calls by dotted name
    (the runner in a work horse), which no caller can hand an object to."""
    return Settings.from_env()
