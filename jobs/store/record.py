"""The job record kept in a Redis hash, and its public JSON shape."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from jobs.store.status import JobStatus

API_PREFIX = "/api/v1"

#: Fields stored as JSON text in the hash.
_JSON_FIELDS = ("params", "progress", "error", "result_meta", "stats")
_FLOAT_FIELDS = ("created_at", "started_at", "ended_at", "run_ms")
_INT_FIELDS = ("attempt", "runs", "preemptions")
#: Optional string fields kept in `extra`: who submitted the job (rate-limit client, and the token
#: owner when API_TOKENS is on), the request that created it, and "1" once a webhook delivery is registered
#: on it (jobs.store.deliveries; set by that registration's script); a split job's part ids (`parts`,
#: comma-joined, in range order) and a part's whole job (`parent`) (jobs.store.fanout).
EXTRA_FIELDS = ("client", "request_id", "owner", "webhooks", "parts", "parent")


def rfc3339(ts: float | None) -> str | None:
    """RFC 3339 UTC with milliseconds, as the contract shows them."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass
class JobRecord:
    """One job; the hash is the source of truth that RQ jobs merely execute."""

    id: str
    type: str
    params: dict[str, Any]
    status: JobStatus = JobStatus.QUEUED
    queue: str = "default"
    cache_key: str = ""
    pausable: bool = False
    progress: dict[str, Any] | None = None
    created_at: float = 0.0
    started_at: float | None = None
    ended_at: float | None = None
    #: Execution time summed over runs (pauses excluded).
    run_ms: float = 0.0
    error: dict[str, Any] | None = None
    result_meta: dict[str, Any] | None = None
    stats: dict[str, Any] | None = None
    rq_id: str = ""
    #: Crash recoveries so far (bounded by MAX_ATTEMPTS).
    attempt: int = 0
    #: Times the job was put on a queue; names the RQ job of each run.
    runs: int = 0
    #: Times a run was preempted at a checkpoint for another client's waiting work (Lifecycle.preempt).
    preemptions: int = 0
    worker: str = ""
    has_input: bool = False
    extra: dict[str, str] = field(default_factory=dict)
    #: The result's chunks when they were read along with the record (never stored; see ResultReader).
    prefetched: list[bytes] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_hash(cls, h: dict[bytes, bytes]) -> JobRecord:
        """Decode HGETALL output."""
        return cls.from_fields({k.decode(): v.decode() for k, v in h.items()})

    @classmethod
    def from_fields(cls, d: dict[str, str]) -> JobRecord:
        """Decode the hash's fields once they are text (from HGETALL, or a finish event that carries them)."""
        kw: dict[str, Any] = {}
        for name in ("id", "type", "queue", "cache_key", "rq_id", "worker"):
            kw[name] = d.get(name, "")
        kw["status"] = JobStatus(d["status"])
        kw["pausable"] = d.get("pausable") == "1"
        kw["has_input"] = d.get("has_input") == "1"
        for name in _JSON_FIELDS:
            raw = d.get(name)
            kw[name] = orjson.loads(raw) if raw else None
        kw["params"] = kw["params"] or {}
        for name in _FLOAT_FIELDS:
            raw = d.get(name)
            kw[name] = float(raw) if raw else None
        kw["created_at"] = kw["created_at"] or 0.0
        kw["run_ms"] = kw["run_ms"] or 0.0
        for name in _INT_FIELDS:
            kw[name] = int(d.get(name) or 0)
        kw["extra"] = {name: d[name] for name in EXTRA_FIELDS if d.get(name)}
        return cls(**kw)

    def to_hash(self) -> dict[str, str]:
        """Encode for HSET; None fields are written as empty strings."""
        h: dict[str, str] = {
            "id": self.id, "type": self.type, "queue": self.queue, "cache_key": self.cache_key,
            "rq_id": self.rq_id, "worker": self.worker, "status": self.status.value,
            "pausable": "1" if self.pausable else "0", "has_input": "1" if self.has_input else "0",
            "attempt": str(self.attempt), "runs": str(self.runs),
        }
        for name in _JSON_FIELDS:
            value = getattr(self, name)
            h[name] = "" if value is None else orjson.dumps(value).decode()
        for name in _FLOAT_FIELDS:
            value = getattr(self, name)
            h[name] = "" if value is None else repr(value)
        h.update({name: str(self.extra[name]) for name in EXTRA_FIELDS if self.extra.get(name)})
        return h

    @property
    def duration_ms(self) -> float | None:
        """Execution time, known once the job has ended."""
        return None if self.ended_at is None else round(self.run_ms, 3)

    def links(self) -> dict[str, str]:
        """Hypermedia links so clients never build URLs by hand."""
        base = f"{API_PREFIX}/jobs/{self.id}"
        return {
            "self": base, "result": f"{base}/result", "events": f"{base}/events",
            "cancel": f"{base}/cancel", "pause": f"{base}/pause", "resume": f"{base}/resume",
            "retry": f"{base}/retry",
        }

    def to_resource(self, *, result: Any = None, cached: bool = False, deduplicated: bool = False,
                    position: int | None = None, webhooks: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """The job resource of the API contract; `result` may be an orjson.Fragment.

        `result_inline` (an addition to the contract) says what a null `result` means: true when
        `result` holds the whole result, false when a finished job's result is only at
        `result_url` (over the inline limits, or in a listing), null while there is no result.
        `position`: while queued, how many runs would be dispatched before this one (jobs.store.dispatch).
        `webhooks`: the deliveries the asking client registered on the job (jobs.store.deliveries).
        """
        links = self.links()
        return {
            "id": self.id,
            "type": self.type,
            "params": self.params,
            "status": self.status.value,
            "progress": self.progress,
            "created_at": rfc3339(self.created_at),
            "started_at": rfc3339(self.started_at),
            "ended_at": rfc3339(self.ended_at),
            "duration_ms": self.duration_ms,
            "cached": cached,
            "deduplicated": deduplicated,
            "result": result,
            "result_inline": (result is not None) if self.status is JobStatus.FINISHED else None,
            "result_url": links["result"],
            "error": self.error,
            "pausable": self.pausable,
            "attempt": self.attempt,
            "runs": self.runs,
            "preemptions": self.preemptions,
            "position": position if self.status is JobStatus.QUEUED else None,
            "stats": self.stats,
            "queue": self.queue,
            "webhooks": webhooks or [],
            "links": links,
        }
