"""The job service: every state change of a job goes through here, from web and worker alike.

Status changes are compare-and-set Lua scripts on the job hash, so a cancel from the web
and a start in a worker can race without either clobbering the other.
"""

from __future__ import annotations

import base64
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import orjson
from redis import Redis
from rq.callbacks import Callback
from rq.command import send_stop_job_command
from rq.queue import Queue
from rq.worker import Worker

from jobs.store.admission import ADMIT_LUA, CLIENT_LIVE_KEY, Admission
from jobs.store.events import EventHub, publish
from jobs.store.keys import (
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
from jobs.store.queues import ON_FAILURE, QUEUES, RUNNER
from jobs.store.record import JobRecord
from jobs.store.request_cache import RequestCache
from jobs.store.results import ResultReader
from jobs.store.scripts import Commands, LuaScript
from jobs.store.status import SETTLED, TERMINAL, JobStatus
from jobs.types.registry import JOB_TIMEOUTS, JOB_TYPES
from jobs.types.spec import FAST_QUEUE, Submission

JOB_ID_RE = re.compile(r"^[0-9a-f]{32}$")
_JOB_PREFIX = JOB_KEY.format(id="")
_RESULT_AFFIXES = RESULT_CHUNKS_KEY.split("{id}")
#: Hash: cumulative finished/failed/canceled counts per job type (read by /metrics).
TYPE_STATS_KEY = PREFIX + "stats:{type}"
#: Hash: a histogram of run times of jobs that ended, per type (bucket upper bound -> count, sum, count).
JOB_DURATION_KEY = PREFIX + "stats:{type}:duration"
#: Upper bounds (seconds) of the run-time buckets, from trivial jobs to hour-long sieves.
DURATION_BUCKETS = (0.001, 0.005, 0.025, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 1800.0, 3600.0)
#: A quiet client's count expires, so a count that drifted (a crash between two steps) heals.
CLIENT_LIVE_TTL = 7 * 86_400
INPUT_CHUNK_BYTES = 4 << 20
#: A running job whose heartbeat is older than this (seconds) is presumed lost with its worker.
HEARTBEAT_TIMEOUT = int(os.environ.get("HEARTBEAT_TIMEOUT", "30"))
#: Crash recoveries before a job is failed instead of re-queued.
MAX_ATTEMPTS = 3
#: A result this small (JSON bytes) is read along with its finished record, by a waiter woken by the
#: finish or by a cache hit, and kept per request thread for resource() (at most this much per thread).
PREFETCH_MAX_BYTES = 16 << 10
#: Most records one list request reads while filtering, so a rare filter cannot stall it.
LIST_SCAN_LIMIT = 10_000

#: Shared by the scripts below, so a state change and all its bookkeeping cost one round trip and
#: happen atomically: replay(i) runs the commands packed in ARGV from index i on, each as its
#: argument count then its arguments (see packed()); one that starts with "?eq KEY VALUE" runs only
#: while GET KEY == VALUE (the request cache's compare-and-set).
REPLAY_LUA = """
local function replay(i)
  while i <= #ARGV do
    local n = tonumber(ARGV[i])
    if ARGV[i + 1] == '?eq' then
      if redis.call('GET', ARGV[i + 2]) == ARGV[i + 3] then redis.call(unpack(ARGV, i + 4, i + n)) end
    else
      redis.call(unpack(ARGV, i + 1, i + n))
    end
    i = i + n + 1
  end
end
"""
#: Set status (and fields) only if the job exists and its status is one of ARGV[1] (comma list).
#: ARGV[2] = new status, ARGV[3] = count of the field/value arguments that follow, then the
#: commands to replay once the status matched. Returns the previous status or false.
_TRANSITION_LUA = REPLAY_LUA + """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return false end
local ok = false
for s in string.gmatch(ARGV[1], '[^,]+') do if s == cur then ok = true end end
if not ok then return false end
local n = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], 'status', ARGV[2], unpack(ARGV, 4, 3 + n))
replay(4 + n)
return cur
"""
#: Claim a request-cache entry (SET NX, no expiry) and, only if it was free, replay the commands
#: that create the job and put it on its queue: nobody ever sees the entry without its job.
#: Returns false once claimed, else the entry's current value.
_CLAIM_LUA = REPLAY_LUA + """
if redis.call('SET', KEYS[1], ARGV[1], 'NX') then
  replay(2)
  return false
end
return redis.call('GET', KEYS[1])
"""
#: Reads a job (flat HGETALL) and, when its result is small (at most `max` JSON bytes), the result's chunks.
_READ_JOB_LUA = """
local function read_job(key, result_key, max)
  local h = redis.call('HGETALL', key)
  local raw = redis.call('HGET', key, 'result_meta')
  if raw and raw ~= '' then
    local meta = cjson.decode(raw)
    if meta.kind ~= 'text' and (meta.json_bytes or 0) <= max then
      return h, redis.call('LRANGE', result_key, 0, (meta.chunks or 0) - 1)
    end
  end
  return h, false
end
"""
#: HGETALL of a job (flat), and its result chunks too when the result is small: ARGV[1] = most JSON bytes.
_READ_WITH_RESULT_LUA = _READ_JOB_LUA + """
local h, chunks = read_job(KEYS[1], KEYS[2], tonumber(ARGV[1]))
return {h, chunks}
"""
#: A submission's first step, one round trip: its admission (when ARGV[5] is 1; see jobs.store.admission),
#: then the request-cache entry KEYS[1] and the job it names with its small result. ARGV: job key prefix,
#: result key prefix and suffix, most JSON bytes, admission flag, admission args. Returns a rejection,
#: {'free'}, {'other', entry} (not a job id) or {'taken', entry, job flat, chunks or false}.
_LOOKUP_LUA = ADMIT_LUA + _READ_JOB_LUA + """
if ARGV[5] == '1' then
  local no = admit(2, 6)
  if no then return no end
end
local v = redis.call('GET', KEYS[1])
if not v then return {'free'} end
local id = string.match(v, '^"([0-9a-f]+)"$')
if not id then return {'other', v} end
local h, chunks = read_job(ARGV[1] .. id, ARGV[2] .. id .. ARGV[3], tonumber(ARGV[4]))
return {'taken', v, h, chunks}
"""
#: Admission alone (a submission that never reaches the lookup still spends its budget): KEYS and
#: ARGV as Admission.script_keys/script_args. Returns a rejection or {'ok'}.
_ADMIT_ONLY_LUA = ADMIT_LUA + """
local no = admit(1, 1)
if no then return no end
return {'ok'}
"""
#: Replay the packed commands unconditionally (a terminal state's bookkeeping) in one round trip.
_REPLAY_ALL_LUA = REPLAY_LUA + """
replay(1)
return 1
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
        self._transition_script = LuaScript(conn, _TRANSITION_LUA)
        self._claim_script = LuaScript(conn, _CLAIM_LUA)
        self._replay_script = LuaScript(conn, _REPLAY_ALL_LUA)
        self._read_script = LuaScript(conn, _READ_WITH_RESULT_LUA)
        self._lookup_script = LuaScript(conn, _LOOKUP_LUA)
        self._admit_script = LuaScript(conn, _ADMIT_ONLY_LUA)
        #: Per request thread: the watch submit() registered before creating a job (wait_until takes it
        #: instead of re-reading a job it knows is queued), and result chunks read along with a record.
        self._local = threading.local()

    # -- plumbing -----------------------------------------------------------------

    def queue(self, name: str) -> Queue:
        """RQ queue by name, JSON-serialized."""
        if self._queue_factory is not None:
            return self._queue_factory(name)
        from jobs.store.queues import JsonQueue
        return JsonQueue(name, connection=self.conn)

    @property
    def hub(self) -> EventHub:
        if self._hub is None:
            self._hub = EventHub(self.conn)
        return self._hub

    def transition(self, job_id: str, from_: tuple[JobStatus, ...], to: JobStatus,
                   fields: dict[str, Any] | None = None, then: list[Any] | None = None) -> JobStatus | None:
        """Compare-and-set the status; returns the old status, or None if it did not match.

        `then` (see packed()) runs in the same atomic step, only when the status matched.
        """
        pairs: list[Any] = []
        for k, v in (fields or {}).items():
            pairs += [k, v]
        args: list[Any] = [",".join(s.value for s in from_), to.value, len(pairs), *pairs, *(then or ())]
        prev = self._transition_script(keys=[JOB_KEY.format(id=job_id)], args=args)
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
        # A finished job's result never changes while its id exists, so chunks _read() fetched stay good.
        prefetched = getattr(self._local, "chunks", None)
        if prefetched is not None and prefetched[0] == rec.id:
            return ResultReader(self.conn, rec.id, rec.result_meta, rec.type, prefetched=prefetched[1])
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
        if timeout <= 0:
            return self.get(job_id)
        return self.wait_until(job_id, SETTLED, timeout)

    def wait_until(self, job_id: str, statuses: frozenset[JobStatus], timeout: float) -> JobRecord | None:
        """The job once its status is in `statuses` (or gone, or timed out), woken by its events."""
        deadline = time.monotonic() + timeout
        self._local.chunks = None
        fresh = self._take_fresh(job_id)
        watch = fresh[0] if fresh else self.hub.watch(job_id)
        event: dict[str, Any] | None = None
        try:
            while True:
                if fresh:  # registered before the job existed, so no event was missed: no need to read
                    rec, fresh = fresh[1], None
                elif event is not None and "job" in event:  # the finish, with the fields it wrote
                    rec = JobRecord.from_fields(event["job"])
                    if event.get("chunks") is not None:
                        self._local.chunks = (job_id, [c.encode() for c in event["chunks"]])
                else:
                    rec = self._read(job_id, with_result=event is not None and event.get("status") == "finished")
                remaining = deadline - time.monotonic()
                if rec is None or rec.status in statuses or remaining <= 0:
                    return rec
                # The slice cap is a safety net for a lost connection, not the wake-up path.
                while (event := watch.get(min(deadline - time.monotonic(), 2.0))) is not None \
                        and not _may_reach(event, statuses):
                    pass  # progress, or a status on the way (started): nothing to re-read for
        finally:
            self.hub.unwatch(watch)

    def _read(self, job_id: str, with_result: bool) -> JobRecord | None:
        """get(), plus a small finished result in the same round trip, kept for reader() (resource() inlines it)."""
        if not with_result or not JOB_ID_RE.match(job_id):
            return self.get(job_id)
        flat, chunks = self._read_script(keys=[JOB_KEY.format(id=job_id), RESULT_CHUNKS_KEY.format(id=job_id)],
                                         args=[PREFETCH_MAX_BYTES])
        rec = JobRecord.from_hash(dict(zip(flat[::2], flat[1::2], strict=True))) if flat else None
        if rec is not None and rec.status is JobStatus.FINISHED and chunks:
            self._local.chunks = (job_id, chunks)
        return rec

    def _watch_fresh(self, rec: JobRecord) -> None:
        """In a process that waits on jobs (the web), watch a new job before it exists (see wait_until)."""
        self._drop_fresh()
        if self._hub is not None:
            self._local.fresh = (self._hub.watch(rec.id), rec)

    def _take_fresh(self, job_id: str) -> tuple[Any, JobRecord] | None:
        """The fresh watch of job_id; one of another job is dropped (its request did not wait)."""
        fresh = getattr(self._local, "fresh", None)
        if fresh is None or fresh[1].id != job_id:
            self._drop_fresh()
            return None
        self._local.fresh = None
        return fresh

    def _drop_fresh(self) -> None:
        """Forget a fresh watch nobody waited on (the request did not ask to wait)."""
        fresh = getattr(self._local, "fresh", None)
        if fresh is not None:
            self._local.fresh = None
            self.hub.unwatch(fresh[0])

    def list(self, status: str | None = None, type_: str | None = None, limit: int = 50,
             cursor: str | None = None, owner: str | None = None) -> tuple[list[JobRecord], str | None]:
        """Newest first, filtered (owner: only that token owner's jobs); the cursor is an opaque (score, id)."""
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
                if (status and rec.status.value != status) or (type_ and rec.type != type_) or (
                        owner is not None and rec.extra.get("owner") != owner):
                    continue
                out.append(rec)
            if stale:
                self.conn.zrem(JOBS_INDEX_KEY, *stale)
        next_cursor = _encode_cursor(*last) if more and last is not None else None
        return out, next_cursor

    # -- submitting ---------------------------------------------------------------

    def submit(self, sub: Submission, admission: Admission | None = None) -> tuple[JobRecord, Outcome]:
        """Create, join or answer from cache; SET NX on the canonical key decides the race.

        admission: the client's budget and live bound, checked (and spent) in the lookup's round trip;
        raises Rejected when over.
        """
        key = sub.cache_key
        self._local.chunks = None
        for _ in range(8):
            reply = self._lookup(key, admission)
            if reply[0] in (b"limited", b"busy"):
                raise admission.rejection(reply)  # type: ignore[union-attr]
            admission = None  # spent once, whatever happens next
            if reply[0] == b"taken":
                existing = self.cache.serializer.loads(reply[1])
                flat, chunks = reply[2], reply[3]
                rec = JobRecord.from_hash(dict(zip(flat[::2], flat[1::2], strict=True))) if flat else None
                if rec is not None and rec.status is JobStatus.FINISHED and chunks:
                    self._local.chunks = (rec.id, chunks)  # a cache hit's result comes along
                outcome = self._classify(rec)
                if rec is not None and outcome is not None:
                    return rec, outcome
                self.cache.release(key, existing)
                continue
            rec = self._create(sub)
            self._watch_fresh(rec)
            if self._claim(key, rec):
                return rec, Outcome.CREATED
            self._drop_fresh()
            if rec.has_input:
                self._discard(rec.id)
        raise RuntimeError(f"request cache entry {key} kept changing")

    def _lookup(self, key: str, admission: Admission | None) -> list[Any]:
        """_LOOKUP_LUA for one cache key (see there)."""
        keys, args = [self.cache.full_key(key)], [_JOB_PREFIX, *_RESULT_AFFIXES, PREFETCH_MAX_BYTES]
        if admission is not None and admission.checks:
            keys += admission.script_keys()
            args += [1, *admission.script_args()]
        else:
            args.append(0)
        return self._lookup_script(keys=keys, args=args)

    def admit(self, admission: Admission) -> None:
        """Spend one submission of the client's budget without a lookup; raises Rejected when over."""
        if admission.checks:
            reply = self._admit_script(keys=admission.script_keys(), args=admission.script_args())
            if reply[0] != b"ok":
                raise admission.rejection(reply)

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
        """A new record, its input stored; the record itself is written by _claim."""
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
        return rec

    def _claim(self, key: str, rec: JobRecord) -> bool:
        """Claim the request-cache entry, write the record and enqueue it, in one atomic round trip."""
        pipe = Commands()
        self._enqueue(rec, fresh=True, pipe=pipe)
        pipe.hset(JOB_KEY.format(id=rec.id), mapping=rec.to_hash())
        pipe.zadd(JOBS_INDEX_KEY, {rec.id: rec.created_at * 1000})
        _count_live(pipe, rec, 1)
        taken = self._claim_script(keys=[self.cache.full_key(key)],
                                   args=[self.cache.serializer.dumps(rec.id), *packed(recorded(pipe))])
        return not taken

    def _discard(self, job_id: str, rec: JobRecord | None = None) -> None:
        """Remove a record that lost the dedupe race before anyone could see it queued."""
        pipe = self.conn.pipeline(transaction=False)
        pipe.delete(*job_keys(job_id))
        pipe.zrem(JOBS_INDEX_KEY, job_id)
        if rec is not None:
            _count_live(pipe, rec, -1)
        pipe.execute()

    def _enqueue(self, rec: JobRecord, fresh: bool = False, pipe: Any = None) -> None:
        """Put a queued job on its RQ queue under a new per-run RQ id (on `pipe` when given, unexecuted)."""
        if fresh:
            # _create already set runs=1 and the RQ id, and nobody can be watching a new id.
            rq_id = rec.rq_id
        else:
            runs = self.conn.hincrby(JOB_KEY.format(id=rec.id), "runs", 1)
            rq_id = f"{rec.id}-{runs}"
        own = pipe is None
        if own:
            pipe = self.conn.pipeline(transaction=True)
        # rq calls pipe.multi(), which a pipeline allows only before any command: enqueue first.
        self.queue(rec.queue).enqueue_call(
            RUNNER, args=(rec.id,), job_id=rq_id, timeout=JOB_TIMEOUTS[rec.type], result_ttl=600,
            failure_ttl=self.config.result_ttl, on_failure=Callback(ON_FAILURE),
            description=f"{rec.type} {rec.id}", pipeline=pipe,
        )
        if not fresh:
            pipe.hset(JOB_KEY.format(id=rec.id), "rq_id", rq_id)
            publish(pipe, rec.id, JobStatus.QUEUED.value)
        if own:
            pipe.execute()

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
        """Bookkeeping of a terminal state: cache entry, expiry, counters, event (one round trip)."""
        self._replay_script(args=self.terminal_commands(rec, status))

    def terminal_commands(self, rec: JobRecord, status: JobStatus, run_s: float | None = None,
                          event: dict[str, Any] | None = None) -> list[Any]:
        """finish_terminal's writes as packed commands, to ride along with the transition itself.
        event: extra fields of the ending's event (see JobService.wait_until)."""
        ttl = self.config.result_ttl
        if status is JobStatus.FINISHED:
            cache_cmd = self.cache.refresh_command(rec.cache_key, rec.id, ttl)
        else:
            cache_cmd = self.cache.release_command(rec.cache_key, rec.id)
        drop = [JOB_CONTROL_KEY.format(id=rec.id)]
        if status is JobStatus.FINISHED:
            drop += [JOB_INPUT_KEY.format(id=rec.id), JOB_CHECKPOINT_KEY.format(id=rec.id)]
        else:  # keep the input so a retry can run again
            drop += [RESULT_CHUNKS_KEY.format(id=rec.id), RESULT_COUNTS_KEY.format(id=rec.id)]
        pipe = Commands()
        pipe.delete(*drop)
        for key in job_keys(rec.id):
            if key not in drop:  # just deleted: nothing to expire
                pipe.expire(key, ttl)
        pipe.zrem(RUNNING_KEY, rec.id)
        pipe.hincrby(QUEUE_STATS_KEY.format(name=rec.queue), status.value, 1)
        pipe.hincrby(TYPE_STATS_KEY.format(type=rec.type), status.value, 1)
        if run_s is not None:  # a run that ended in a worker: kept in Redis so every host's runs add up
            key = JOB_DURATION_KEY.format(type=rec.type)
            bucket = next((repr(b) for b in DURATION_BUCKETS if run_s <= b), "+Inf")
            pipe.hincrby(key, bucket, 1)
            pipe.hincrby(key, "count", 1)
            pipe.hincrbyfloat(key, "sum", run_s)
        _count_live(pipe, rec, -1)
        publish(pipe, rec.id, status.value, extra=event)
        return packed([cache_cmd, *recorded(pipe)])

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

    def running_per_queue(self) -> dict[str, int]:
        """Started jobs per queue, from Crunch's running set (fast runs leave no trace in rq's registries)."""
        ids = [m.decode() for m in self.conn.zrange(RUNNING_KEY, 0, -1)]
        pipe = self.conn.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(JOB_KEY.format(id=job_id), "queue", "status")
        counts: dict[str, int] = {}
        for queue, status in pipe.execute() if ids else ():
            if queue and status == JobStatus.STARTED.value.encode():
                counts[queue.decode()] = counts.get(queue.decode(), 0) + 1
        return counts

    def queues(self) -> list[dict[str, Any]]:
        workers = Worker.all(connection=self.conn)
        started = self.running_per_queue()
        out = []
        for name in QUEUES:
            q = self.queue(name)
            stats = {k.decode(): int(v) for k, v in
                     self.conn.hgetall(QUEUE_STATS_KEY.format(name=name)).items()}
            out.append({
                "name": name,
                "queued": q.count,
                "started": started.get(name, 0),
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


def recorded(pipe: Any) -> list[tuple[Any, ...]]:
    """The commands recorded on a pipeline that is used only as a recorder (never executed)."""
    return [args for args, _options in pipe.command_stack]


def packed(commands: Iterable[Sequence[Any]]) -> list[Any]:
    """ARGV tail for the replay scripts: each command as its argument count, then its arguments."""
    out: list[Any] = []
    for args in commands:
        out.append(len(args))
        out.extend(args)
    return out


def _may_reach(event: dict[str, Any], statuses: frozenset[JobStatus]) -> bool:
    """Whether an event may mean the job reached one of `statuses` (a resync or deletion always may)."""
    try:
        return JobStatus(event.get("status")) in statuses
    except ValueError:
        return True


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
