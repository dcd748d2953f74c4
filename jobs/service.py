"""The job service: every state change of a job goes through here, from web and worker alike.

Status changes are compare-and-set Lua scripts on the job hash, so a cancel from the web
and a start in a worker can race without either clobbering the other.
"""

from __future__ import annotations

import base64
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Any

import orjson
from redis import Redis
from rq.callbacks import Callback
from rq.command import send_stop_job_command
from rq.queue import Queue
from rq.registry import StartedJobRegistry
from rq.worker import Worker

from jobs.events import EventHub, publish
from jobs.keys import (
    JOB_CHECKPOINT_KEY,
    JOB_CONTROL_KEY,
    JOB_INPUT_KEY,
    JOB_KEY,
    JOBS_INDEX_KEY,
    PREFIX,
    QUEUE_STATS_KEY,
    RESULT_CHUNKS_KEY,
    RESULT_COUNTS_KEY,
    RUNNING_KEY,
    job_keys,
)
from jobs.queueing import ON_FAILURE, QUEUES, RUNNER
from jobs.record import JobRecord
from jobs.registry import JOB_TYPES
from jobs.request_cache import RequestCache
from jobs.results import ResultReader
from jobs.spec import FAST_QUEUE, Submission
from jobs.status import SETTLED, TERMINAL, JobStatus

JOB_ID_RE = re.compile(r"^[0-9a-f]{32}$")
#: Hash: cumulative finished/failed/canceled counts per job type (read by /metrics).
TYPE_STATS_KEY = PREFIX + "stats:{type}"
#: String: live (queued, started or paused) jobs of one client, for MAX_QUEUED_PER_CLIENT.
CLIENT_LIVE_KEY = PREFIX + "client:{client}:live"
#: A quiet client's count expires, so a count that drifted (a crash between two steps) heals.
CLIENT_LIVE_TTL = 7 * 86_400
INPUT_CHUNK_BYTES = 4 << 20
#: A running job whose heartbeat is older than this (seconds) is presumed lost with its worker.
HEARTBEAT_TIMEOUT = int(os.environ.get("HEARTBEAT_TIMEOUT", "30"))
#: Crash recoveries before a job is failed instead of re-queued.
MAX_ATTEMPTS = 3
#: Most records one list request reads while filtering, so a rare filter cannot stall it.
LIST_SCAN_LIMIT = 10_000

#: Set status (and fields) only if the job exists and its status is one of ARGV[1] (comma list).
#: ARGV[2] = new status, then field/value pairs. Returns the previous status or false.
_TRANSITION_LUA = """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return false end
local ok = false
for s in string.gmatch(ARGV[1], '[^,]+') do if s == cur then ok = true end end
if not ok then return false end
redis.call('HSET', KEYS[1], 'status', ARGV[2])
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return cur
"""


class Outcome(str, Enum):
    """How a submission was answered."""

    CREATED = "created"
    JOINED = "joined"
    CACHED = "cached"


class Conflict(Exception):
    """The action does not fit the job's current state (HTTP 409)."""


@dataclass
class ServiceConfig:
    """Settings the service needs, read once from the environment by the caller."""

    result_ttl: int = 86_400


class JobService:
    """Submit, observe and steer jobs; shared by the web app and the workers."""

    def __init__(self, conn: Redis, cache: RequestCache, config: ServiceConfig | None = None,
                 queue_factory: Callable[[str], Queue] | None = None,
                 hub: EventHub | None = None) -> None:
        self.conn = conn
        self.cache = cache
        self.config = config or ServiceConfig()
        self._queue_factory = queue_factory
        self._hub = hub
        self._transition_script = conn.register_script(_TRANSITION_LUA)

    # -- plumbing -----------------------------------------------------------------

    def queue(self, name: str) -> Queue:
        """RQ queue by name, JSON-serialized."""
        if self._queue_factory is not None:
            return self._queue_factory(name)
        from jobs.queueing import JsonQueue
        return JsonQueue(name, connection=self.conn)

    @property
    def hub(self) -> EventHub:
        if self._hub is None:
            self._hub = EventHub(self.conn)
        return self._hub

    def transition(self, job_id: str, from_: tuple[JobStatus, ...], to: JobStatus,
                   fields: dict[str, Any] | None = None, client: Any = None) -> JobStatus | None:
        """Compare-and-set the status; returns the old status, or None if it did not match."""
        args: list[Any] = [",".join(s.value for s in from_), to.value]
        for k, v in (fields or {}).items():
            args += [k, v]
        prev = self._transition_script(keys=[JOB_KEY.format(id=job_id)], args=args, client=client)
        return JobStatus(prev.decode()) if prev else None

    # -- reading ------------------------------------------------------------------

    def get(self, job_id: str) -> JobRecord | None:
        """The job, or None when unknown, expired or not a well-formed id."""
        if not JOB_ID_RE.match(job_id):
            return None
        h = self.conn.hgetall(JOB_KEY.format(id=job_id))
        return JobRecord.from_hash(h) if h else None

    def reader(self, rec: JobRecord) -> ResultReader | None:
        """Result reader of a finished job, None if it has no result (yet)."""
        if rec.status is not JobStatus.FINISHED or rec.result_meta is None:
            return None
        return ResultReader(self.conn, rec.id, rec.result_meta, rec.type)

    def resource(self, rec: JobRecord, *, cached: bool = False, deduplicated: bool = False,
                 inline: bool = True) -> dict[str, Any]:
        """The API's job resource, with the result inlined while it is small."""
        result = None
        reader = self.reader(rec) if inline else None
        if reader is not None and reader.inline_allowed():
            result = orjson.Fragment(reader.json_bytes())
        return rec.to_resource(result=result, cached=cached, deduplicated=deduplicated)

    def wait(self, job_id: str, timeout: float) -> JobRecord | None:
        """Block until the job settles (terminal or paused) or timeout passes, woken by pub/sub."""
        rec = self.get(job_id)
        if rec is None or rec.status in SETTLED or timeout <= 0:
            return rec
        return self.wait_until(job_id, SETTLED, timeout)

    def wait_until(self, job_id: str, statuses: frozenset[JobStatus], timeout: float) -> JobRecord | None:
        """The job once its status is in `statuses` (or gone, or timed out), woken by its events."""
        deadline = time.monotonic() + timeout
        watch = self.hub.watch(job_id)
        try:
            while True:
                rec = self.get(job_id)
                remaining = deadline - time.monotonic()
                if rec is None or rec.status in statuses or remaining <= 0:
                    return rec
                # The slice cap is a safety net for a lost connection, not the wake-up path.
                watch.get(min(remaining, 2.0))
        finally:
            self.hub.unwatch(watch)

    def list(self, status: str | None = None, type_: str | None = None, limit: int = 50,
             cursor: str | None = None) -> tuple[list[JobRecord], str | None]:
        """Newest first, filtered; the cursor is an opaque (score, id) position."""
        after = _decode_cursor(cursor) if cursor else None
        max_score = repr(after[0]) if after else "+inf"
        out: list[JobRecord] = []
        last: tuple[float, str] | None = None
        offset = scanned = 0
        more = True
        batch = max(limit * 2, 64)
        while more and len(out) < limit and scanned < LIST_SCAN_LIMIT:
            rows = self.conn.zrevrangebyscore(JOBS_INDEX_KEY, max_score, "-inf", start=offset,
                                              num=batch, withscores=True)
            offset += len(rows)
            more = len(rows) == batch
            ids = [(m.decode(), sc) for m, sc in rows
                   if not (after and sc == after[0] and m.decode() >= after[1])]
            pipe = self.conn.pipeline(transaction=False)
            for jid, _ in ids:
                pipe.hgetall(JOB_KEY.format(id=jid))
            stale = []
            for (jid, score), h in zip(ids, pipe.execute(), strict=True):
                if len(out) >= limit:
                    more = True
                    break
                scanned += 1
                last = (score, jid)
                if not h:
                    stale.append(jid)
                    continue
                rec = JobRecord.from_hash(h)
                if (status and rec.status.value != status) or (type_ and rec.type != type_):
                    continue
                out.append(rec)
            if stale:
                self.conn.zrem(JOBS_INDEX_KEY, *stale)
        next_cursor = _encode_cursor(*last) if more and last is not None else None
        return out, next_cursor

    # -- submitting ---------------------------------------------------------------

    def submit(self, sub: Submission) -> tuple[JobRecord, Outcome]:
        """Create, join or answer from cache; SET NX on the canonical key decides the race."""
        key = sub.cache_key
        for _ in range(8):
            existing = self.cache.get(key)
            if isinstance(existing, str):
                rec = self.get(existing)
                outcome = self._classify(rec)
                if rec is not None and outcome is not None:
                    return rec, outcome
                self.cache.release(key, existing)
                continue
            rec = self._create(sub)
            if self.cache.add(key, rec.id, timeout=0):
                self._enqueue(rec, fresh=True)
                return rec, Outcome.CREATED
            self._discard(rec.id, rec)
        raise RuntimeError(f"request cache entry {key} kept changing")

    def _classify(self, rec: JobRecord | None) -> Outcome | None:
        """Whether an existing job can answer an identical request, and how."""
        if rec is None:
            return None
        if rec.status is JobStatus.FINISHED:
            reader = self.reader(rec)
            return Outcome.CACHED if reader is not None and reader.exists() else None
        if rec.status.live:
            return Outcome.JOINED
        return None

    def _create(self, sub: Submission) -> JobRecord:
        spec = JOB_TYPES[sub.type]
        rec = JobRecord(
            id=uuid.uuid4().hex, type=sub.type, params=sub.params, queue=sub.queue,
            cache_key=sub.cache_key, pausable=spec.pausable, created_at=time.time(),
            has_input=sub.input is not None or sub.input_chunks is not None,
            progress={"done": 0, "total": 0, "percent": 0.0},
            extra={k: str(v) for k, v in sub.extra.items()},
        )
        rec.runs, rec.rq_id = 1, f"{rec.id}-1"
        ikey = JOB_INPUT_KEY.format(id=rec.id)
        if rec.has_input:
            # Stream the blob in bounded pieces first; the record appears only once it is whole.
            pipe = self.conn.pipeline(transaction=False)
            pushed = 0
            for chunk in _rechunk(sub.iter_input(), INPUT_CHUNK_BYTES):
                pipe.rpush(ikey, chunk)
                pushed += 1
                if len(pipe) >= 8:
                    pipe.execute()
            if not pushed:
                pipe.rpush(ikey, b"")
            pipe.execute()
        pipe = self.conn.pipeline(transaction=True)
        pipe.hset(JOB_KEY.format(id=rec.id), mapping=rec.to_hash())
        pipe.zadd(JOBS_INDEX_KEY, {rec.id: rec.created_at * 1000})
        _count_live(pipe, rec, 1)
        pipe.execute()
        return rec

    def _discard(self, job_id: str, rec: JobRecord | None = None) -> None:
        """Remove a record that lost the dedupe race before anyone could see it queued."""
        pipe = self.conn.pipeline(transaction=False)
        pipe.delete(*job_keys(job_id))
        pipe.zrem(JOBS_INDEX_KEY, job_id)
        if rec is not None:
            _count_live(pipe, rec, -1)
        pipe.execute()

    def _enqueue(self, rec: JobRecord, fresh: bool = False) -> None:
        """Put a queued job on its RQ queue under a new per-run RQ id."""
        spec = JOB_TYPES[rec.type]
        if fresh:
            # _create already wrote runs=1 and the RQ id, and nobody can be watching a new id.
            rq_id = rec.rq_id
        else:
            runs = self.conn.hincrby(JOB_KEY.format(id=rec.id), "runs", 1)
            rq_id = f"{rec.id}-{runs}"
            self.conn.hset(JOB_KEY.format(id=rec.id), "rq_id", rq_id)
        self.queue(rec.queue).enqueue_call(
            RUNNER, args=(rec.id,), job_id=rq_id, timeout=spec.timeout, result_ttl=600,
            failure_ttl=self.config.result_ttl, on_failure=Callback(ON_FAILURE),
            description=f"{rec.type} {rec.id}",
        )
        if not fresh:
            publish(self.conn, rec.id, JobStatus.QUEUED.value)

    # -- steering -----------------------------------------------------------------

    def _remove_from_queue(self, rec: JobRecord) -> None:
        if rec.rq_id:
            try:
                self.queue(rec.queue).remove(rec.rq_id)
            except Exception:  # noqa: BLE001 - already dequeued is fine
                pass

    def cancel(self, job_id: str, wait: float = 2.5) -> JobRecord:
        rec = self._require(job_id)
        if rec.status.terminal:
            raise Conflict(f"job is already {rec.status.value}")
        now = repr(time.time())
        prev = self.transition(job_id, (JobStatus.QUEUED, JobStatus.PAUSED), JobStatus.CANCELED,
                               {"ended_at": now})
        if prev is not None:
            self._remove_from_queue(rec)
            self.finish_terminal(rec, JobStatus.CANCELED)
            return self._require(job_id)
        # Running: ask the worker to stop at its next checkpoint...
        self.conn.set(JOB_CONTROL_KEY.format(id=job_id), "cancel", ex=3600)
        rec = self.wait_until(job_id, TERMINAL, wait * 0.6) or self._require(job_id)
        if rec.status is JobStatus.STARTED and rec.queue != FAST_QUEUE and rec.rq_id:
            # ...and if a long uncheckpointed step holds it, kill the work horse instead.
            try:
                send_stop_job_command(self.conn, rec.rq_id)
            except Exception:  # noqa: BLE001 - the horse may have just finished
                pass
            if self.transition(job_id, (JobStatus.STARTED,), JobStatus.CANCELED,
                               {"ended_at": repr(time.time())}) is not None:
                self.finish_terminal(rec, JobStatus.CANCELED)
            rec = self.wait_until(job_id, TERMINAL, wait * 0.4) or self._require(job_id)
        return rec

    def pause(self, job_id: str, wait: float = 2.5) -> JobRecord:
        rec = self._require(job_id)
        if not rec.pausable:
            raise Conflict(f"{rec.type} jobs cannot be paused (no checkpoints)")
        if rec.status is JobStatus.PAUSED:
            return rec
        if rec.status.terminal:
            raise Conflict(f"job is already {rec.status.value}")
        prev = self.transition(job_id, (JobStatus.QUEUED,), JobStatus.PAUSED)
        if prev is not None:
            self._remove_from_queue(rec)
            publish(self.conn, job_id, JobStatus.PAUSED.value)
            return self._require(job_id)
        self.conn.set(JOB_CONTROL_KEY.format(id=job_id), "pause", ex=3600)
        return self.wait_until(job_id, SETTLED, wait) or self._require(job_id)

    def resume(self, job_id: str) -> JobRecord:
        rec = self._require(job_id)
        if rec.status is not JobStatus.PAUSED:
            raise Conflict(f"only paused jobs can be resumed; this one is {rec.status.value}")
        self.conn.delete(JOB_CONTROL_KEY.format(id=job_id))
        if self.transition(job_id, (JobStatus.PAUSED,), JobStatus.QUEUED) is None:
            raise Conflict("job changed state; try again")
        self._enqueue(rec)
        return self._require(job_id)

    def retry(self, job_id: str) -> JobRecord:
        rec = self._require(job_id)
        if rec.status not in (JobStatus.FAILED, JobStatus.CANCELED):
            raise Conflict(f"only failed or canceled jobs can be retried; this one is {rec.status.value}")
        fields = {"ended_at": "", "error": "", "result_meta": "", "attempt": "0", "run_ms": "0",
                  "started_at": "", "progress": orjson.dumps({"done": 0, "total": 0, "percent": 0.0}).decode()}
        if self.transition(job_id, (JobStatus.FAILED, JobStatus.CANCELED), JobStatus.QUEUED, fields) is None:
            raise Conflict("job changed state; try again")
        pipe = self.conn.pipeline(transaction=False)
        for tmpl in (JOB_CHECKPOINT_KEY, JOB_CONTROL_KEY, RESULT_CHUNKS_KEY, RESULT_COUNTS_KEY):
            pipe.delete(tmpl.format(id=job_id))
        for key in job_keys(job_id):
            pipe.persist(key)
        _count_live(pipe, rec, 1)
        pipe.execute()
        # Take the cache entry back if nobody else owns it now.
        self.cache.add(rec.cache_key, job_id, timeout=0)
        self._enqueue(rec)
        return self._require(job_id)

    def delete(self, job_id: str) -> None:
        rec = self._require(job_id)
        if rec.status.live:
            self.conn.set(JOB_CONTROL_KEY.format(id=job_id), "cancel", ex=3600)
            self._remove_from_queue(rec)
        self.cache.release(rec.cache_key, job_id)
        pipe = self.conn.pipeline(transaction=False)
        pipe.delete(*[k for k in job_keys(job_id) if k != JOB_CONTROL_KEY.format(id=job_id)])
        pipe.zrem(JOBS_INDEX_KEY, job_id)
        pipe.zrem(RUNNING_KEY, job_id)
        if rec.status.live:
            _count_live(pipe, rec, -1)
        publish(pipe, job_id, "deleted")
        pipe.execute()

    def _require(self, job_id: str) -> JobRecord:
        rec = self.get(job_id)
        if rec is None:
            raise KeyError(job_id)
        return rec

    # -- endings (called by the runner, or by the web for jobs no worker holds) ----

    def finish_terminal(self, rec: JobRecord, status: JobStatus) -> None:
        """Bookkeeping of a terminal state: cache entry, expiry, counters, event."""
        ttl = self.config.result_ttl
        if status is JobStatus.FINISHED:
            self.cache.refresh(rec.cache_key, rec.id, ttl)
        else:
            self.cache.release(rec.cache_key, rec.id)
        drop = [JOB_CONTROL_KEY.format(id=rec.id)]
        if status is JobStatus.FINISHED:
            drop += [JOB_INPUT_KEY.format(id=rec.id), JOB_CHECKPOINT_KEY.format(id=rec.id)]
        else:  # keep the input so a retry can run again
            drop += [RESULT_CHUNKS_KEY.format(id=rec.id), RESULT_COUNTS_KEY.format(id=rec.id)]
        pipe = self.conn.pipeline(transaction=False)
        pipe.delete(*drop)
        for key in job_keys(rec.id):
            pipe.expire(key, ttl)
        pipe.zrem(RUNNING_KEY, rec.id)
        pipe.hincrby(QUEUE_STATS_KEY.format(name=rec.queue), status.value, 1)
        pipe.hincrby(TYPE_STATS_KEY.format(type=rec.type), status.value, 1)
        _count_live(pipe, rec, -1)
        publish(pipe, rec.id, status.value)
        pipe.execute()

    # -- crash recovery -----------------------------------------------------------

    def recover_stalled(self, now: float | None = None) -> list[str]:
        """Re-queue (from checkpoint) or fail running jobs whose worker stopped heartbeating."""
        now = time.time() if now is None else now
        recovered = []
        for member in self.conn.zrangebyscore(RUNNING_KEY, "-inf", now):
            job_id = member.decode()
            if not self.conn.zrem(RUNNING_KEY, job_id):
                continue  # another host's reaper claimed it
            rec = self.get(job_id)
            if rec is None or rec.status is not JobStatus.STARTED:
                continue
            if rec.attempt + 1 >= MAX_ATTEMPTS:
                error = {"type": "WorkerLost",
                         "message": f"the worker running this job died {rec.attempt + 1} times; giving up"}
                if self.transition(job_id, (JobStatus.STARTED,), JobStatus.FAILED,
                                   {"error": orjson.dumps(error).decode(),
                                    "ended_at": repr(now)}) is not None:
                    self.finish_terminal(rec, JobStatus.FAILED)
            elif self.transition(job_id, (JobStatus.STARTED,), JobStatus.QUEUED,
                                 {"attempt": str(rec.attempt + 1), "worker": ""}) is not None:
                self._enqueue(rec)
            recovered.append(job_id)
        return recovered

    # -- queues and workers -------------------------------------------------------

    def queues(self) -> list[dict[str, Any]]:
        workers = Worker.all(connection=self.conn)
        out = []
        for name in QUEUES:
            q = self.queue(name)
            stats = {k.decode(): int(v) for k, v in
                     self.conn.hgetall(QUEUE_STATS_KEY.format(name=name)).items()}
            out.append({
                "name": name,
                "queued": q.count,
                "started": StartedJobRegistry(name, connection=self.conn).count,
                "finished": stats.get("finished", 0),
                "failed": stats.get("failed", 0),
                "canceled": stats.get("canceled", 0),
                "workers": sum(1 for w in workers if name in w.queue_names()),
            })
        return out

    def queue_job_ids(self, name: str) -> list[str]:
        """Crunch job ids waiting in an RQ queue, in dispatch order."""
        return [rq_id.rsplit("-", 1)[0] for rq_id in self.queue(name).get_job_ids()]

    def workers(self) -> list[dict[str, Any]]:
        out = []
        for w in Worker.all(connection=self.conn):
            current = w.get_current_job_id()
            hb = w.last_heartbeat
            out.append({
                "name": w.name,
                "state": str(w.get_state()),
                "queues": w.queue_names(),
                "current_job": current.rsplit("-", 1)[0] if current else None,
                "last_heartbeat": hb.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z" if hb else None,
            })
        return out


def _count_live(pipe: Any, rec: JobRecord, delta: int) -> None:
    """Add delta to the live-job count of the job's client (a no-op for jobs without one)."""
    client = rec.extra.get("client")
    if client:
        key = CLIENT_LIVE_KEY.format(client=client)
        pipe.incrby(key, delta)
        pipe.expire(key, CLIENT_LIVE_TTL)


def _rechunk(pieces: Iterator[bytes], size: int) -> Iterator[bytes]:
    """Re-cut a stream of byte pieces into chunks of exactly `size` (the last may be shorter)."""
    buf = bytearray()
    for piece in pieces:
        view = memoryview(piece)
        while view.nbytes:
            take = min(size - len(buf), view.nbytes)
            buf += view[:take]
            view = view[take:]
            if len(buf) == size:
                yield bytes(buf)
                buf.clear()
    if buf:
        yield bytes(buf)


def _encode_cursor(score: float, job_id: str) -> str:
    return base64.urlsafe_b64encode(f"{score!r}:{job_id}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[float, str]:
    """Inverse of _encode_cursor; ValueError on garbage."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        score, job_id = raw.split(":", 1)
        value = float(score)
        if value != value:  # NaN: Redis rejects it as a score bound (was a 500)
            raise ValueError("NaN score")
        return value, job_id
    except Exception as exc:
        raise ValueError("invalid cursor") from exc
