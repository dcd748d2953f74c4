"""The web-facing job service: submit, read, wait, list and steer jobs.

A thin facade: every status change is an operation of jobs.store.lifecycle (one atomic Redis step
each); this module adds what the web needs around them (dedupe lookups, long-polls, listing). The queue and
worker views are jobs.overview's (JobService.overview).
"""

from __future__ import annotations

import base64
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Any

import orjson
from redis import Redis
from redis.exceptions import RedisError
from rq.command import send_stop_job_command
from rq.queue import Queue

from jobs.overview import Overview
from jobs.settings import Settings
from jobs.store.admission import Admission
from jobs.store.batches import FORGET_LUA
from jobs.store.commands import LuaScript
from jobs.store.deliveries import DeliveryStore
from jobs.store.dispatch import Schedule
from jobs.store.events import EventHub, Watch, publish
from jobs.store.fanout import Fanout, plan
from jobs.store.keys import (
    FANOUT_LIVE_KEY,
    FAST_QUEUE,
    INPUT_CHUNK_BYTES,
    JOB_CONTROL_KEY,
    JOB_INPUT_KEY,
    JOB_KEY,
    JOBS_INDEX_KEY,
    PREFETCH_MAX_BYTES,
    RESULT_CHUNKS_KEY,
    RUNNING_KEY,
    job_keys,
)
from jobs.store.lifecycle import Lifecycle, count_live
from jobs.store.quota import RELEASE_LUA, STORED_KEY, STORED_TOTAL_KEY
from jobs.store.record import JobRecord
from jobs.store.request_cache import RequestCache
from jobs.store.results import ResultReader
from jobs.store.scripts import ADMIT_ONLY_LUA, LOOKUP_LUA, READ_WITH_RESULT_LUA
from jobs.store.status import SETTLED, TERMINAL, JobStatus
from jobs.types.registry import JOB_TYPES, summary_of
from jobs.types.spec import Submission

JOB_ID_RE = re.compile(r"^[0-9a-f]{32}$")
_JOB_PREFIX = JOB_KEY.format(id="")
_RESULT_AFFIXES = RESULT_CHUNKS_KEY.split("{id}")
#: Most records one list request reads while filtering, so a rare filter cannot stall it.
LIST_SCAN_LIMIT = 10_000


class Outcome(str, Enum):
    """How a submission was answered."""

    CREATED = "created"
    JOINED = "joined"
    CACHED = "cached"


class Conflict(Exception):
    """The action does not fit the job's current state (HTTP 409)."""


@dataclass
class Submitted:
    """How a submission was answered: the job, the outcome and, when the caller asked to wait, the watch
    registered before the job existed (so wait() misses no event). Unpacks as (rec, outcome)."""

    rec: JobRecord
    outcome: Outcome
    watch: Watch | None = None

    def __iter__(self) -> Iterator[Any]:
        return iter((self.rec, self.outcome))


class JobService:
    """Submit, observe and steer jobs: the web's facade over jobs.store."""

    def __init__(self, conn: Redis, cache: RequestCache, settings: Settings | None = None,
                 queue_factory: Callable[[str], Queue] | None = None,
                 hub: EventHub | None = None) -> None:
        self.conn = conn
        self.cache = cache
        self.settings = settings or Settings()
        self.life = Lifecycle(conn, cache, self.settings, queue_factory)
        self.schedule = Schedule(conn)
        self.fanout = Fanout(self.life)
        self.overview = Overview(conn, self.settings, self.schedule, self.queue)
        self._hub = hub
        self._deliveries: DeliveryStore | None = None
        self._read_script = LuaScript(conn, READ_WITH_RESULT_LUA)
        self._forget_script = LuaScript(conn, FORGET_LUA)
        self._lookup_script = LuaScript(conn, LOOKUP_LUA)
        self._admit_script = LuaScript(conn, ADMIT_ONLY_LUA)
        self._release_stored = LuaScript(conn, RELEASE_LUA)

    def queue(self, name: str) -> Queue:
        return self.life.queue(name)

    @property
    def deliveries(self) -> DeliveryStore:
        """The webhook deliveries (registered by rest.webhooks, sent by jobs.worker.deliverer)."""
        if self._deliveries is None:
            self._deliveries = DeliveryStore(self.conn, self.settings.result_ttl)
        return self._deliveries

    @property
    def hub(self) -> EventHub:
        if self._hub is None:
            self._hub = EventHub(self.conn)
        return self._hub

    # -- reading ------------------------------------------------------------------

    def get(self, job_id: str) -> JobRecord | None:
        """The job, or None when unknown, expired or not a well-formed id."""
        if not JOB_ID_RE.match(job_id):
            return None
        h = self.conn.hgetall(JOB_KEY.format(id=job_id))
        return self.fanout.with_progress(JobRecord.from_hash(h)) if h else None

    def reader(self, rec: JobRecord) -> ResultReader | None:
        """Result reader of a finished job, None if it has no result (yet)."""
        if rec.status is not JobStatus.FINISHED or rec.result_meta is None:
            return None
        # A finished job's result never changes while its id exists, so chunks read with the record stay good.
        spec = JOB_TYPES.get(rec.type)
        return ResultReader(self.conn, rec.id, rec.result_meta, spec.result_column if spec else "value",
                            prefetched=rec.prefetched)

    def resource(self, rec: JobRecord, *, cached: bool = False, deduplicated: bool = False,
                 inline: bool = True, client: str | None = None) -> dict[str, Any]:
        """The API's job resource, with the result inlined while it is small, and the webhook deliveries
        that `client` registered on it (read only for a job that has any)."""
        result = None
        reader = self.reader(rec) if inline else None
        if reader is not None and reader.inline_allowed():
            result = orjson.Fragment(reader.json_bytes())
        position = self.schedule.position(rec) if rec.status is JobStatus.QUEUED else None
        hooks = None
        if client and rec.extra.get("webhooks"):
            hooks = self.deliveries.for_client("job", rec.id, client)
        resource = rec.to_resource(result=result, cached=cached, deduplicated=deduplicated, position=position,
                                   webhooks=hooks)
        resource["summary"] = summary_of(rec.type, rec.params)
        return resource

    def wait(self, job_id: str, timeout: float, fresh: Submitted | None = None) -> JobRecord | None:
        """Block until the job settles (terminal or paused) or timeout passes, woken by pub/sub.
        fresh: the submission that just created the job with a watch (see submit(watch=True))."""
        if timeout <= 0:
            self.unwatch(fresh)
            return self.get(job_id)
        return self.wait_until(job_id, SETTLED, timeout, fresh)

    def unwatch(self, fresh: Submitted | None) -> None:
        """Drop a submission's watch nobody will wait on."""
        if fresh is not None and fresh.watch is not None:
            self.hub.unwatch(fresh.watch)
            fresh.watch = None

    def wait_until(self, job_id: str, statuses: frozenset[JobStatus], timeout: float,
                   fresh_sub: Submitted | None = None) -> JobRecord | None:
        """The job once its status is in `statuses` (or gone, or timed out), woken by its events."""
        deadline = time.monotonic() + timeout
        fresh = None
        if fresh_sub is not None and fresh_sub.watch is not None:
            if fresh_sub.rec.id == job_id:
                fresh = (fresh_sub.watch, fresh_sub.rec)
                fresh_sub.watch = None
            else:
                self.unwatch(fresh_sub)
        watch = fresh[0] if fresh else self.hub.watch(job_id)
        event: dict[str, Any] | None = None
        try:
            while True:
                if fresh:  # registered before the job existed, so no event was missed: no need to read
                    rec, fresh = fresh[1], None
                elif event is not None and "job" in event:  # the finish, with the fields it wrote
                    rec = JobRecord.from_fields(event["job"])
                    if event.get("chunks") is not None:
                        rec.prefetched = [c.encode() for c in event["chunks"]]
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
        """get(), plus a small finished result in the same round trip, kept on the record for reader()."""
        if not with_result or not JOB_ID_RE.match(job_id):
            return self.get(job_id)
        flat, chunks = self._read_script(keys=[JOB_KEY.format(id=job_id), RESULT_CHUNKS_KEY.format(id=job_id)],
                                         args=[PREFETCH_MAX_BYTES])
        rec = JobRecord.from_hash(dict(zip(flat[::2], flat[1::2], strict=True))) if flat else None
        if rec is not None and rec.status is JobStatus.FINISHED and chunks:
            rec.prefetched = chunks
        return None if rec is None else self.fanout.with_progress(rec)

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
            # A split job as GET /jobs/{id} shows it (progress summed over its parts): one round trip per page.
            recs = self.fanout.with_progress_all([JobRecord.from_hash(h) if h else None for h in pipe.execute()])
            for (jid, score), rec in zip(ids, recs, strict=True):
                if len(out) >= limit:
                    more = True
                    break
                scanned += 1
                last = (score, jid)
                if rec is None:
                    stale.append(jid)
                    continue
                if (status and rec.status.value != status) or (type_ and rec.type != type_) or (
                        owner is not None and rec.extra.get("owner") != owner):
                    continue
                out.append(rec)
            if stale:
                self.conn.zrem(JOBS_INDEX_KEY, *stale)
        next_cursor = _encode_cursor(*last) if more and last is not None else None
        return out, next_cursor

    # -- submitting ---------------------------------------------------------------

    def submit(self, sub: Submission, admission: Admission | None = None, watch: bool = False) -> Submitted:
        """Create, join or answer from cache; SET NX on the canonical key decides the race.

        admission: the client's budget and live bound, checked (and spent) in the lookup's round trip;
        raises Rejected when over. watch: a created job is watched before it exists, so a wait() given
        the result misses none of its events (pass it to wait(), or drop it with unwatch()).
        """
        key = sub.cache_key
        for _ in range(8):
            reply = self._lookup(key, admission)
            if reply[0] in (b"limited", b"busy", b"quota"):
                raise admission.rejection(reply)  # type: ignore[union-attr]
            admission = None  # spent once, whatever happens next
            if reply[0] == b"taken":
                existing = self.cache.serializer.loads(reply[1])
                flat, chunks = reply[2], reply[3]
                rec = JobRecord.from_hash(dict(zip(flat[::2], flat[1::2], strict=True))) if flat else None
                if rec is not None and rec.status is JobStatus.FINISHED and chunks:
                    rec.prefetched = chunks  # a cache hit's result comes along
                outcome = self._classify(rec)
                if rec is not None and outcome is not None:
                    return Submitted(rec, outcome)
                self.cache.release(key, existing)
                continue
            rec = self._create(sub)
            # A wide primes job runs as parts on every idle worker (jobs.store.fanout).
            parts = plan(rec, JOB_TYPES[rec.type], self.settings.fanout_min_seconds, self.settings.fanout_max_parts)
            fresh = self.hub.watch(rec.id) if watch else None
            if self.life.claim(self.cache.full_key(key), rec, parts,
                               then=[("SADD", FANOUT_LIVE_KEY, rec.id)] if parts else ()):
                return Submitted(rec, Outcome.CREATED, fresh)
            if fresh is not None:
                self.hub.unwatch(fresh)
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
            try:
                for chunk in _rechunk(sub.iter_input(), INPUT_CHUNK_BYTES):
                    pipe.rpush(ikey, chunk)
                    pushed += 1
                    if len(pipe) >= 8:
                        pipe.execute()
                if not pushed:
                    pipe.rpush(ikey, b"")
                pipe.execute()
            except RedisError:
                # Redis refused part of the input (OOM at maxmemory, a failover): drop what was stored, so a
                # refused submission leaves nothing behind (DEL is allowed even at maxmemory).
                try:
                    self.conn.delete(ikey)
                except RedisError:
                    pass
                raise
        return rec

    def _discard(self, job_id: str, rec: JobRecord | None = None) -> None:
        """Remove a record that lost the dedupe race before anyone could see it queued."""
        pipe = self.conn.pipeline(transaction=False)
        pipe.delete(*job_keys(job_id))
        pipe.zrem(JOBS_INDEX_KEY, job_id)
        if rec is not None:
            count_live(pipe, rec, -1)
        pipe.execute()

    # -- steering -----------------------------------------------------------------

    def _remove_from_queue(self, rec: JobRecord) -> None:
        if rec.rq_id and rec.status is JobStatus.QUEUED:
            self.life.withdraw(rec)

    def cancel(self, job_id: str, wait: float = 2.5) -> JobRecord:
        rec = self._require(job_id)
        if rec.status.terminal:
            raise Conflict(f"job is already {rec.status.value}")
        if rec.extra.get("parts"):
            self.fanout.cancel(rec)
            return self._require(job_id)
        if self.life.cancel(rec, (JobStatus.QUEUED, JobStatus.PAUSED)):
            return self._require(job_id)
        # Running: ask the worker to stop at its next checkpoint...
        self.conn.set(JOB_CONTROL_KEY.format(id=job_id), "cancel", ex=3600)
        rec = self.wait_until(job_id, TERMINAL, wait * 0.6) or self._require(job_id)
        if rec.status is JobStatus.STARTED and rec.queue != FAST_QUEUE and rec.rq_id:
            # ...and if a long uncheckpointed step holds it, end the job here and kill the work horse. The
            # state goes first: the worker's main process drops the job's scratch lists once the horse is
            # gone only if it finds the job ended (jobs.worker.runner.drop_scratch_after_horse). Only the run
            # it saw held (runs): had that run stopped and the job been retried meanwhile, the new run is not it.
            if self.life.cancel(rec, (JobStatus.STARTED,), runs=rec.runs):
                try:
                    send_stop_job_command(self.conn, rec.rq_id)
                except Exception:  # noqa: BLE001 - the horse may have just finished
                    pass
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
        if rec.extra.get("parts"):
            self.fanout.pause(rec)
            # As for one run, the answer comes once the work stands still: each running part pauses at
            # its next checkpoint (well within the contract's 2 s), so a paused job's progress holds.
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and any(
                    p is not None and p.status is JobStatus.STARTED for p in self.fanout.parts(rec)):
                time.sleep(0.05)
            return self._require(job_id)
        if self.life.pause(rec, (JobStatus.QUEUED,)):
            return self._require(job_id)
        self.conn.set(JOB_CONTROL_KEY.format(id=job_id), "pause", ex=3600)
        return self.wait_until(job_id, SETTLED, wait) or self._require(job_id)

    def resume(self, job_id: str) -> JobRecord:
        rec = self._require(job_id)
        if rec.status is not JobStatus.PAUSED:
            raise Conflict(f"only paused jobs can be resumed; this one is {rec.status.value}")
        if not (self.fanout.resume(rec) if rec.extra.get("parts") else self.life.resume(rec)):
            raise Conflict("job changed state; try again")
        return self._require(job_id)

    def retry(self, job_id: str) -> JobRecord:
        rec = self._require(job_id)
        if rec.status not in (JobStatus.FAILED, JobStatus.CANCELED):
            raise Conflict(f"only failed or canceled jobs can be retried; this one is {rec.status.value}")
        if not (self.fanout.retry(rec) if rec.extra.get("parts") else self.life.retry(rec)):
            raise Conflict("job changed state; try again")
        return self._require(job_id)

    def delete(self, job_id: str) -> None:
        rec = self._require(job_id)
        if rec.status.live:
            self.conn.set(JOB_CONTROL_KEY.format(id=job_id), "cancel", ex=3600)
            # Its batches count it canceled and its webhooks are called, before it is forgotten. A split job
            # takes CANCELED before its parts go: a part's run ending meanwhile settles the whole job, and a
            # live whole job with a part gone is failed (Fanout.settle); one batch test met that once.
            self._forget_script(keys=[JOB_KEY.format(id=job_id)])
            self._remove_from_queue(rec)
        if rec.extra.get("parts"):  # a running part stops at its next checkpoint
            self.conn.srem(FANOUT_LIVE_KEY, job_id)
            for pid in rec.extra["parts"].split(","):
                try:
                    self.delete(pid)
                except KeyError:
                    pass
        self.cache.release(rec.cache_key, job_id)
        pipe = self.conn.pipeline(transaction=False)
        pipe.delete(*[k for k in job_keys(job_id) if k != JOB_CONTROL_KEY.format(id=job_id)])
        pipe.zrem(JOBS_INDEX_KEY, job_id)
        pipe.zrem(RUNNING_KEY, job_id)
        if rec.status.live:
            count_live(pipe, rec, -1)
        publish(pipe, job_id, "deleted")
        pipe.execute()
        client = rec.extra.get("client")
        if client:  # its bytes leave the client's storage count (jobs.store.quota)
            self._release_stored(keys=[STORED_KEY.format(client=client), STORED_TOTAL_KEY.format(client=client)],
                                 args=[job_id])

    def _require(self, job_id: str) -> JobRecord:
        rec = self.get(job_id)
        if rec is None:
            raise KeyError(job_id)
        return rec

    def recover_stalled(self, now: float | None = None) -> list[str]:
        """Re-queue (from checkpoint) or fail running jobs whose worker stopped heartbeating."""
        return self.life.recover(now)


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


#: A list cursor: the last listed job's index score and id. Plain text, so the OpenAPI document can
#: state exactly which cursors the server takes (every string of this form is one: it names a position
#: in the index, whether or not a job sits there). The base64 form of earlier versions is still read.
CURSOR_RE = re.compile(r"([0-9]{1,17}(?:\.[0-9]{1,17})?)-([0-9a-f]{32})")


def _encode_cursor(score: float, job_id: str) -> str:
    """Scores are creation times (repr gives "1764781234.5098383"); one in exponent form, which no
    clock gives, takes the old base64 form."""
    text = f"{score!r}-{job_id}"
    if CURSOR_RE.fullmatch(text):
        return text
    return base64.urlsafe_b64encode(f"{score!r}:{job_id}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[float, str]:
    """Inverse of _encode_cursor; ValueError on garbage."""
    m = CURSOR_RE.fullmatch(cursor)
    if m:
        return float(m.group(1)), m.group(2)
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        score, job_id = raw.split(":", 1)
        value = float(score)
        if value != value:  # NaN: Redis rejects it as a score bound (was a 500)
            raise ValueError("NaN score")
        return value, job_id
    except Exception as exc:
        raise ValueError("invalid cursor") from exc
