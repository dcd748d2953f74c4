"""The job lifecycle: every change of a job's status, as named operations, each one atomic Redis step.

    claim ─► QUEUED ─start─► STARTED ─finish─► FINISHED
               ▲ │            │ │ └──fail───► FAILED ──┐
      resume   │ │pause  pause│ │                      │ retry (back to QUEUED)
               │ ▼            ▼ └──cancel──► CANCELED ─┘
              PAUSED ◄────────┘
    requeue (worker shutdown) and recover (lost worker): STARTED ─► QUEUED (or FAILED after MAX_ATTEMPTS)

Each operation is one script from jobs.store.scripts: a compare-and-set on the job hash plus all its
bookkeeping (cache entry, expiry, counters, rq's queue, the event), so a cancel from the web and a
finish in a worker can race without either clobbering the other, and no crash leaves a half-written
ending. There is one way to end a job: `_end` (finish, fail, cancel and recover's give-up all use it).
The web (jobs.service.JobService) and the worker (jobs.worker.runner) both call these operations.

A run moves its job only while it is the job's current run (the runner passes its `runs` to each step):
a run can outlive its turn (a cancel ends the job before the run reaches a checkpoint, a frozen worker's
job is recovered on a new run), and its late ending must not end the job's next run (say, after a retry).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import orjson
from redis import Redis
from rq.callbacks import Callback
from rq.queue import Queue
from rq.registry import StartedJobRegistry

from jobs.compat.rq import enqueue_recorded
from jobs.settings import Settings
from jobs.store.admission import CLIENT_LIVE_KEY
from jobs.store.commands import Call, Commands, LuaScript, Tally, packed, recorded, send
from jobs.store.dispatch import (
    DISPATCH_SHARE,
    RUN_ID_RE,
    client_of,
    ended_commands,
    join_commands,
    lane_args,
    lane_keys,
    leave_commands,
    rq_list,
)
from jobs.store.events import publish
from jobs.store.keys import (
    CLIENT_RUNNING_KEY,
    DURATION_BUCKETS,
    FINISHED_MINUTE_KEY,
    FINISHED_MINUTE_TTL,
    JOB_CHECKPOINT_KEY,
    JOB_CONTROL_KEY,
    JOB_DURATION_KEY,
    JOB_INPUT_KEY,
    JOB_KEY,
    JOBS_INDEX_KEY,
    LANE_CLIENTS_KEY,
    LANE_PREEMPT_KEY,
    LANE_SINCE_KEY,
    PAUSED_DUE_KEY,
    QUEUE_STATS_KEY,
    QUEUES,
    RESULT_CHUNKS_KEY,
    RESULT_COUNTS_KEY,
    RUNNING_CLIENTS_KEY,
    RUNNING_KEY,
    TYPE_STATS_KEY,
    job_keys,
)
from jobs.store.queues import ON_FAILURE, RUNNER, JsonJob, JsonQueue
from jobs.store.quota import count_commands
from jobs.store.record import JobRecord
from jobs.store.request_cache import RequestCache
from jobs.store.scripts import (
    BEGIN_LUA,
    CLAIM_LUA,
    DISPATCH_LUA,
    HEAL_LANE_LUA,
    SWEEP_INDEX_LUA,
    TRANSITION_LUA,
    UNDUE_LUA,
    YIELD_LUA,
)
from jobs.store.status import JobStatus

#: How long one preemption holds its lane's lock (ms): long enough for the preempted run to reach its next
#: checkpoint and the waiting run to be dispatched, so one waiting run sends one job back, not every one.
PREEMPT_LOCK_MS = 2000
#: Crash recoveries before a job is failed instead of re-queued.
MAX_ATTEMPTS = 3
#: A quiet client's count expires, so a count that drifted (a crash between two steps) heals.
CLIENT_LIVE_TTL = 7 * 86_400
#: Seconds a paused job's keys outlive its PAUSED_TTL: the reaper (every 2 s) ends it as canceled when the
#: TTL runs out (Lifecycle.paused_due), so its batch and webhooks learn of it; Redis's own expiry of the keys is
#: only the backstop for a deployment that runs no worker host for that long.
PAUSED_GRACE = 3600
#: Fields a retry resets.
_RETRY_FIELDS = {"ended_at": "", "error": "", "result_meta": "", "attempt": "0", "run_ms": "0", "started_at": "",
                 "progress": orjson.dumps({"done": 0, "total": 0, "percent": 0.0}).decode()}

QUEUED, STARTED, PAUSED = JobStatus.QUEUED, JobStatus.STARTED, JobStatus.PAUSED
FINISHED, FAILED, CANCELED = JobStatus.FINISHED, JobStatus.FAILED, JobStatus.CANCELED


@dataclass
class Begun:
    """What `start` read (and maybe took) in its one round trip."""

    #: The job's fields as the start read them (empty if the job is gone).
    fields: dict[str, str]
    #: A pending control request ("cancel", "pause", "requeue") or None.
    control: bytes | None
    #: The raw checkpoint, or None.
    checkpoint: bytes | None
    #: Whether the start took STARTED (a fresh run); else the caller decides (see Lifecycle.start).
    took: bool
    #: The time the start wrote as started_at (epoch seconds).
    started: float = 0.0


class Lifecycle:
    """The named transitions of a job. One per process and connection; shared by web and worker."""

    def __init__(self, conn: Redis, cache: RequestCache, settings: Settings,
                 queue_factory: Callable[[str], Queue] | None = None) -> None:
        self.conn = conn
        self.cache = cache
        self.settings = settings
        self._queue_factory = queue_factory
        self._transition = LuaScript(conn, TRANSITION_LUA)
        self._claim = LuaScript(conn, CLAIM_LUA)
        self._begin = LuaScript(conn, BEGIN_LUA)
        self._dispatch = LuaScript(conn, DISPATCH_LUA)
        self._heal_lane = LuaScript(conn, HEAL_LANE_LUA)
        #: Per lane, the waiting runs the previous heal_lanes found without an entry on rq's list.
        self._missing: dict[str, list[str]] = {}
        self._yield = LuaScript(conn, YIELD_LUA)
        self._sweep = LuaScript(conn, SWEEP_INDEX_LUA)
        self._undue = LuaScript(conn, UNDUE_LUA)

    def queue(self, name: str) -> Queue:
        """RQ queue by name, JSON-serialized."""
        if self._queue_factory is not None:
            return self._queue_factory(name)
        return JsonQueue(name, connection=self.conn)

    # -- the one primitive ---------------------------------------------------------

    def transition(self, job_id: str, from_: Sequence[JobStatus], to: JobStatus,
                   fields: dict[str, Any] | None = None, then: Sequence[Any] = (),
                   runs: int | None = None, defer: list[Call] | None = None) -> JobStatus | None:
        """Compare-and-set the status; returns the old status, or None if it did not match.
        then (packed commands) runs in the same atomic step, only when the status matched;
        runs: the job's run count must still be this (see requeue); defer: hold the step back in this
        list, to be sent with a later call (see start); answers as if the status had matched."""
        pairs: list[Any] = []
        for k, v in (fields or {}).items():
            pairs += [k, v]
        args: list[Any] = [",".join(s.value for s in from_), to.value, "" if runs is None else runs,
                           len(pairs), *pairs, *then]
        if defer is not None:
            defer.append((self._transition, [JOB_KEY.format(id=job_id)], args))
            return from_[0]
        prev = self._transition(keys=[JOB_KEY.format(id=job_id)], args=args)
        return JobStatus(prev.decode()) if prev else None

    def flush(self, deferred: list[Call], tally: Tally | None = None) -> None:
        """Send the steps held back in `deferred` (see transition) and a chain's held counters (`tally`, sent
        first: whoever sees the chain's last job end sees its counters too), in one round trip."""
        calls = deferred[:]
        deferred.clear()
        counters = tally.take() if tally else []
        if calls:
            send(calls, first=counters)
        elif counters:
            with self.conn.pipeline(transaction=False) as pipe:
                for cmd in counters:
                    pipe.execute_command(*cmd)
                pipe.execute()

    # -- creation and queueing -----------------------------------------------------

    def claim(self, full_cache_key: str, rec: JobRecord, parts: Sequence[JobRecord] = (),
              then: Sequence[Sequence[Any]] = ()) -> bool:
        """Claim the request-cache entry, write the new record and enqueue it: one atomic round trip.
        parts: a split job's parts (jobs.store.fanout), written and enqueued instead of the job itself.
        False: someone else's job holds the entry (nothing was written)."""
        cmds = self.creation_commands(rec, enqueue=not parts) + self.parts_commands(parts)
        taken = self._claim(keys=[full_cache_key], args=[self.cache.serializer.dumps(rec.id), *cmds, *packed(then)])
        return not taken

    def creation_commands(self, rec: JobRecord, before: Sequence[Sequence[Any]] = (),
                          enqueue: bool = True) -> list[Any]:
        """A new job's writes as packed commands: `before` (a batch item's input), rq's enqueue, the record,
        the index and the client's live count. claim() replays them once it holds the cache entry; a batch
        replays each item's inside its own script (jobs.store.batches)."""
        pipe = Commands()
        if enqueue:
            self._enqueue_commands(rec, pipe)
        pipe.hset(JOB_KEY.format(id=rec.id), mapping=rec.to_hash())
        pipe.zadd(JOBS_INDEX_KEY, {rec.id: rec.created_at * 1000})
        count_live(pipe, rec, 1)
        stored = count_commands(rec.extra.get("client"), rec.id, int(rec.extra.get("input_bytes") or 0))
        return packed([*before, *recorded(pipe), *stored])

    def parts_commands(self, parts: Sequence[JobRecord]) -> list[Any]:
        """A split job's parts (jobs.store.fanout) as packed commands: each part's rq enqueue and its record.
        claim() replays them with the whole job's; a batch item's script replays them with the item's."""
        cmds: list[Any] = []
        for part in parts:
            pipe = Commands()
            self._enqueue_commands(part, pipe)
            pipe.hset(JOB_KEY.format(id=part.id), mapping=part.to_hash())
            cmds += packed(recorded(pipe))
        return cmds

    def _enqueue_commands(self, rec: JobRecord, pipe: Any, front: bool = False) -> None:
        """rq's enqueue of the job's current run (rec.rq_id), recorded on `pipe` (rq's public pipeline= API),
        and the run joining its client's line in its lane (jobs.store.dispatch); front: at the line's head."""
        # rq calls pipe.multi(), which a pipeline allows only before any command: enqueue first.
        enqueue_recorded(
            self.queue(rec.queue), pipe,
            RUNNER, args=(rec.id,), job_id=rec.rq_id, timeout=self.settings.job_timeout(rec.type),
            result_ttl=600, failure_ttl=self.settings.result_ttl, on_failure=Callback(ON_FAILURE),
            description=f"{rec.type} {rec.id}", at_front=front,
        )
        pipe.extend(join_commands(rec.queue, client_of(rec), rec.rq_id, int(time.time() * 1000), front))

    def _back_on_queue(self, rec: JobRecord, from_: Sequence[JobStatus], fields: dict[str, Any],
                       then: Sequence[Sequence[Any]] = (), front: bool = False) -> bool:
        """Move the job to QUEUED under a new run id and put that run on its rq queue, in one step
        (front: at the head of its client's line). The run it leaves no longer counts as running."""
        runs = rec.runs + 1
        nxt = replace(rec, runs=runs, rq_id=f"{rec.id}-{runs}")
        pipe = Commands()
        self._enqueue_commands(nxt, pipe, front)
        pipe.extend([*ended_commands(client_of(rec), rec.rq_id), *then])
        publish(pipe, rec.id, QUEUED.value)
        return self.transition(rec.id, from_, QUEUED, {**fields, "runs": runs, "rq_id": nxt.rq_id},
                               then=packed(recorded(pipe)), runs=rec.runs) is not None

    # -- a run --------------------------------------------------------------------------

    def start(self, job_id: str, rq_id: str, worker: str, started: float, reset: Commands,
              then: Sequence[Sequence[Any]] = (), after: list[Call] | None = None) -> Begun:
        """Read the job, control request and checkpoint and, on a fresh run (current, queued, no control,
        no checkpoint), take STARTED with `reset` and `then` replayed: one round trip (BEGIN_LUA).
        A run that is not fresh (resumed or recovered) then calls start_resumed. after: steps held back
        (the previous run's finish, see transition) that go first in the same round trip."""
        script, keys, args = self.start_call(job_id, rq_id, worker, started, reset, then)
        reply = script.after(after, keys, args) if after else script(keys=keys, args=args)
        return self.begun(reply, started)

    def start_call(self, job_id: str, rq_id: str, worker: str, started: float, reset: Commands,
                   then: Sequence[Sequence[Any]] = ()) -> Call:
        """start's step as a call to send later (start_many)."""
        cmds = Commands()
        cmds.extend(reset.commands)
        cmds.zadd(RUNNING_KEY, {job_id: started + self.settings.heartbeat_timeout})
        publish(cmds, job_id, STARTED.value)
        keys = [JOB_KEY.format(id=job_id), JOB_CONTROL_KEY.format(id=job_id), JOB_CHECKPOINT_KEY.format(id=job_id)]
        return self._begin, keys, [rq_id, worker, repr(started), *packed(recorded(cmds)), *packed(then)]

    @staticmethod
    def begun(reply: Any, started: float) -> Begun:
        """What a start's step answered."""
        flat, control, checkpoint, took = reply
        fields = {k.decode(): v.decode() for k, v in zip(flat[::2], flat[1::2], strict=True)}
        return Begun(fields, control, checkpoint, bool(took), started)

    def start_many(self, calls: Sequence[Call], started: float) -> list[Begun | Exception]:
        """Several runs' starts (start_call) in one round trip, each its own atomic step: a worker's take of
        fast runs (jobs.worker.rq_worker). Per run its Begun, or the error its step met."""
        return [r if isinstance(r, Exception) else self.begun(r, started) for r in send(calls)]

    def start_resumed(self, rec: JobRecord, fields: dict[str, Any], reset: Commands,
                      then: Sequence[Sequence[Any]] = ()) -> bool:
        """QUEUED -> STARTED for a run that continues from a checkpoint; `reset` drops output written after it."""
        cmds = Commands()
        cmds.extend(reset.commands)
        cmds.zadd(RUNNING_KEY, {rec.id: time.time() + self.settings.heartbeat_timeout})
        publish(cmds, rec.id, STARTED.value)
        return self.transition(rec.id, (QUEUED,), STARTED, fields,
                               then=[*packed(recorded(cmds)), *packed(then)], runs=rec.runs) is not None

    def checkpoint(self, job_id: str, state: dict[str, Any] | None, output: dict[str, Any]) -> None:
        """Save kernel state with the output position it matches; None means restart from zero."""
        key = JOB_CHECKPOINT_KEY.format(id=job_id)
        if state is None:
            self.conn.delete(key)
        else:
            self.conn.set(key, orjson.dumps({"kernel": state, "output": output}))

    # -- endings: the one way a job ends ---------------------------------------------------

    def _end(self, rec: JobRecord, from_: Sequence[JobStatus], to: JobStatus, fields: dict[str, Any],
             run_s: float | None = None, event: dict[str, Any] | None = None,
             before: Sequence[Sequence[Any]] = (), after: Sequence[Sequence[Any]] = (),
             defer: list[Call] | None = None, tally: Tally | None = None, runs: int | None = None) -> bool:
        """The status change to a terminal state and all its bookkeeping, one atomic step.
        before/after: commands replayed before/after the bookkeeping (a finish's last result pushes,
        a worker's own hash); defer, runs: see transition (a run's own ending passes its run's number);
        tally: see terminal_commands."""
        then = [*packed(before), *self.terminal_commands(rec, to, run_s, event, tally), *packed(after)]
        return self.transition(rec.id, from_, to, fields, then=then, runs=runs, defer=defer) is not None

    def finish(self, rec: JobRecord, fields: dict[str, Any], run_s: float, event: dict[str, Any],
               pushes: Sequence[Sequence[Any]] = (), then: Sequence[Sequence[Any]] = (),
               from_: Sequence[JobStatus] = (STARTED,), defer: list[Call] | None = None,
               tally: Tally | None = None, runs: int | None = None) -> bool:
        """STARTED -> FINISHED with the result's last pushes, the cache entry's expiry, counters and event,
        and the result's bytes in its client's storage count (jobs.store.quota; a split job's part is not
        counted: its whole job's result is). defer: see transition; tally: see terminal_commands."""
        meta = orjson.loads(fields["result_meta"]) if fields.get("result_meta") else {}
        stored = [] if rec.extra.get("parent") else count_commands(
            rec.extra.get("client"), rec.id, int(meta.get("bytes") or meta.get("json_bytes") or 0))
        return self._end(rec, from_, FINISHED, fields, run_s, event, before=pushes, after=[*then, *stored],
                         defer=defer, tally=tally, runs=runs)

    def fail(self, rec: JobRecord, error: dict[str, Any], run_ms: str | None = None,
             from_: Sequence[JobStatus] = (STARTED,), runs: int | None = None) -> bool:
        """-> FAILED with the error; the cache forgets the request (a failure is never served from it).
        runs: a run's own ending, only while it is the job's current run (see transition)."""
        fields = {"error": orjson.dumps(error).decode(), "ended_at": repr(time.time())}
        if run_ms is not None:
            fields["run_ms"] = run_ms
        return self._end(rec, from_, FAILED, fields, None if run_ms is None else float(run_ms) / 1000, runs=runs)

    def cancel(self, rec: JobRecord, from_: Sequence[JobStatus], run_ms: str | None = None,
               runs: int | None = None) -> bool:
        """-> CANCELED. A queued run is taken off its rq queue in the same step. runs: see fail."""
        fields = {"ended_at": repr(time.time())}
        if run_ms is not None:
            fields["run_ms"] = run_ms
        before = self._unqueue_commands(rec) if QUEUED in from_ else []
        return self._end(rec, from_, CANCELED, fields, before=before, runs=runs)

    def terminal_commands(self, rec: JobRecord, status: JobStatus, run_s: float | None = None,
                          event: dict[str, Any] | None = None, tally: Tally | None = None) -> list[Any]:
        """A terminal state's bookkeeping as packed commands: cache entry, expiry, counters, event.
        event: extra fields of the ending's event (see JobService.wait_until); tally: the statistics'
        increments go there instead, to be written once for a chain of runs (see Tally)."""
        ttl = self.settings.result_ttl
        if status is FINISHED:
            cache_cmd = self.cache.refresh_command(rec.cache_key, rec.id, ttl)
        else:
            cache_cmd = self.cache.release_command(rec.cache_key, rec.id)
        drop = [JOB_CONTROL_KEY.format(id=rec.id)]
        if status is FINISHED:
            drop += [JOB_INPUT_KEY.format(id=rec.id), JOB_CHECKPOINT_KEY.format(id=rec.id)]
        else:  # keep the input so a retry can run again
            drop += [RESULT_CHUNKS_KEY.format(id=rec.id), RESULT_COUNTS_KEY.format(id=rec.id)]
        pipe = Commands()
        pipe.delete(*drop)
        for key in job_keys(rec.id):
            if key not in drop:  # just deleted: nothing to expire
                pipe.expire(key, ttl)
        pipe.zrem(RUNNING_KEY, rec.id)
        pipe.extend(ended_commands(client_of(rec), rec.rq_id))
        stats: Commands | Tally = pipe if tally is None else tally
        stats.hincrby(QUEUE_STATS_KEY.format(name=rec.queue), status.value, 1)
        stats.hincrby(TYPE_STATS_KEY.format(type=rec.type), status.value, 1)
        if status is FINISHED:  # the operations page's "finished per minute" (2 commands, O(1))
            minute_key = FINISHED_MINUTE_KEY.format(minute=int(time.time() // 60))
            stats.incrby(minute_key, 1)
            stats.expire(minute_key, FINISHED_MINUTE_TTL)
        if run_s is not None:  # a run that ended in a worker: kept in Redis so every host's runs add up
            key = JOB_DURATION_KEY.format(type=rec.type)
            bucket = next((repr(b) for b in DURATION_BUCKETS if run_s <= b), "+Inf")
            stats.hincrby(key, bucket, 1)
            stats.hincrby(key, "count", 1)
            stats.hincrbyfloat(key, "sum", run_s)
        count_live(pipe, rec, -1)
        publish(pipe, rec.id, status.value, extra=event)
        return packed([cache_cmd, *recorded(pipe)])

    # -- pause, resume, requeue, retry, recover ------------------------------------------

    def pause(self, rec: JobRecord, from_: Sequence[JobStatus], run_ms: str | None = None,
              runs: int | None = None) -> bool:
        """-> PAUSED; a queued run leaves its rq queue, the control request is dropped, in one step.
        runs: see fail."""
        pipe = Commands()
        if QUEUED in from_:
            pipe.extend(self._unqueue_commands(rec))
        pipe.delete(JOB_CONTROL_KEY.format(id=rec.id))
        pipe.zrem(RUNNING_KEY, rec.id)
        pipe.extend(ended_commands(client_of(rec), rec.rq_id))
        # A forgotten paused job ends as canceled after PAUSED_TTL (paused_due); resume() keeps it again.
        pipe.zadd(PAUSED_DUE_KEY, {rec.id: time.time() + self.settings.paused_ttl})
        for key in job_keys(rec.id):
            pipe.expire(key, self.settings.paused_ttl + PAUSED_GRACE)
        publish(pipe, rec.id, PAUSED.value)
        fields = {"run_ms": run_ms} if run_ms is not None else {}
        return self.transition(rec.id, from_, PAUSED, fields, then=packed(recorded(pipe)), runs=runs) is not None

    def resume(self, rec: JobRecord) -> bool:
        """PAUSED -> QUEUED on a new run."""
        return self._back_on_queue(rec, (PAUSED,), {}, then=[("DEL", JOB_CONTROL_KEY.format(id=rec.id)),
                                                            *[("PERSIST", key) for key in job_keys(rec.id)]])

    def requeue(self, rec: JobRecord, run_ms: str) -> bool:
        """STARTED -> QUEUED on a new run (the worker is shutting down; the next run continues from the checkpoint),
        at the head of its client's line: it was submitted before the client's waiting jobs."""
        return self._back_on_queue(rec, (STARTED,), {"run_ms": run_ms, "worker": ""},
                                   then=[("DEL", JOB_CONTROL_KEY.format(id=rec.id)), ("ZREM", RUNNING_KEY, rec.id)],
                                   front=True)

    def retry(self, rec: JobRecord, also: Sequence[tuple[Any, ...]] = ()) -> bool:
        """FAILED or CANCELED -> QUEUED from scratch on a new run; takes the cache entry back if it is free.
        also: commands replayed in the same step (a split job's part drops its rerun mark, jobs.store.fanout)."""
        then: list[tuple[Any, ...]] = [("DEL", *[t.format(id=rec.id) for t in (
            JOB_CHECKPOINT_KEY, JOB_CONTROL_KEY, RESULT_CHUNKS_KEY, RESULT_COUNTS_KEY)]), *also]
        then += [("PERSIST", key) for key in job_keys(rec.id)]
        live = Commands()
        count_live(live, rec, 1)
        then += recorded(live)
        full = self.cache.full_key(rec.cache_key)
        then.append(("SET", full, self.cache.serializer.dumps(rec.id), "NX"))
        return self._back_on_queue(rec, (FAILED, CANCELED), _RETRY_FIELDS, then=then)

    def recover(self, now: float | None = None) -> list[str]:
        """Re-queue (from checkpoint) or fail running jobs whose worker stopped heartbeating."""
        now = time.time() if now is None else now
        recovered = []
        for member in self.conn.zrangebyscore(RUNNING_KEY, "-inf", now):
            job_id = member.decode()
            if not self.conn.zrem(RUNNING_KEY, job_id):
                continue  # another host's reaper claimed it
            h = self.conn.hgetall(JOB_KEY.format(id=job_id))
            rec = JobRecord.from_hash(h) if h else None
            if rec is None or rec.status is not STARTED:
                continue
            self._lost(rec)
            recovered.append(job_id)
        return recovered

    def recover_run(self, job_id: str, rq_id: str) -> bool:
        """The process running `rq_id` died (its worker saw the work horse end by a signal): re-queue the
        job now, from its checkpoint, instead of after HEARTBEAT_TIMEOUT. Claimed from RUNNING_KEY like
        recover(), so exactly one of the two acts on a lost run; a run that is no longer the job's
        current one, or no longer STARTED (it ended, was paused or canceled), is left alone."""
        h = self.conn.hgetall(JOB_KEY.format(id=job_id))
        rec = JobRecord.from_hash(h) if h else None
        if rec is None or rec.status is not STARTED or rec.rq_id != rq_id:
            return False
        if not self.conn.zrem(RUNNING_KEY, job_id):
            return False
        self._lost(rec)
        return True

    def paused_due(self, now: float | None = None, limit: int = 100) -> list[JobRecord]:
        """Paused jobs whose PAUSED_TTL ran out, for the reaper to end (expire_paused, or the fan-out's cancel
        for a split job). Due entries of jobs resumed, ended or deleted since, and of a split job's parts
        (their whole job's cancel ends them), are dropped here."""
        now = time.time() if now is None else now
        ids = [m.decode() for m in self.conn.zrangebyscore(PAUSED_DUE_KEY, "-inf", now, start=0, num=limit)]
        if not ids:
            return []
        pipe = self.conn.pipeline(transaction=False)
        for job_id in ids:
            pipe.hgetall(JOB_KEY.format(id=job_id))
        recs = [JobRecord.from_hash(h) if h else None for h in pipe.execute()]
        due = [r for r in recs if r is not None and r.status is PAUSED and not r.extra.get("parent")]
        keep = {r.id for r in due}
        gone = [i for i in ids if i not in keep]
        if gone:
            self._undue(keys=[PAUSED_DUE_KEY], args=[repr(now), *gone])
        return due

    def expire_paused(self, rec: JobRecord) -> bool:
        """PAUSED -> CANCELED once paused for PAUSED_TTL, as a cancel would (its batches count it canceled, its
        webhooks say job.canceled, its client's live count and its request-cache entry are released), with an
        error saying why; then it is kept for RESULT_TTL like any canceled job (and may be retried)."""
        error = {"type": "PausedTooLong", "message": f"paused for longer than PAUSED_TTL "
                                                     f"({self.settings.paused_ttl} s), so it was canceled"}
        fields = {"ended_at": repr(time.time()), "error": orjson.dumps(error).decode()}
        return self._end(rec, (PAUSED,), CANCELED, fields, after=[("ZREM", PAUSED_DUE_KEY, rec.id)])

    def sweep_index(self, batch: int = 1000) -> int:
        """One slice of the index sweep (SWEEP_INDEX_LUA): how many entries of expired jobs it dropped."""
        return int(self._sweep([JOBS_INDEX_KEY, JOBS_INDEX_KEY + ":sweep"], [JOB_KEY.format(id=""), batch]))

    def _lost(self, rec: JobRecord) -> None:
        """A STARTED run lost its process: the next attempt from the checkpoint, or failed after MAX_ATTEMPTS.
        The lost run's rq records go in the same step (its job hash, its started-registry entry): a run lost
        with Redis itself would otherwise stay `started` in rq (and on /rq) forever. The next attempt waits at
        the head of its client's line (it was submitted before the client's waiting jobs)."""
        if rec.attempt + 1 >= MAX_ATTEMPTS:
            self.fail(rec, {"type": "WorkerLost",
                            "message": f"the worker running this job died {rec.attempt + 1} times; giving up"})
            return
        then: list[tuple[Any, ...]] = []
        if rec.rq_id:
            # rq 3 keeps a run in its started registry as "<rq id>:<execution id>".
            started = StartedJobRegistry(rec.queue, connection=self.conn).key
            members = [m for m in self.conn.zscan_iter(started, match=f"{rec.rq_id}:*")]
            then = [("DEL", JsonJob.key_for(rec.rq_id))]
            then += [("ZREM", started, m[0] if isinstance(m, tuple) else m) for m in members]
        self._back_on_queue(rec, (STARTED,), {"attempt": str(rec.attempt + 1), "worker": ""}, then=then, front=True)

    def _unqueue_commands(self, rec: JobRecord) -> list[tuple[Any, ...]]:
        """Take the job's queued run off its rq queue (what rq's Queue.remove sends) and off its lane."""
        if not rec.rq_id:
            return []
        return [("LREM", self.queue(rec.queue).key, 1, rec.rq_id),
                *leave_commands(rec.queue, client_of(rec), rec.rq_id)]

    def withdraw(self, rec: JobRecord) -> bool:
        """A queued run leaves its rq queue and its lane, the status unchanged (a delete, which removes
        the record itself next)."""
        return self.transition(rec.id, (QUEUED,), QUEUED, then=packed(self._unqueue_commands(rec))) is not None

    # -- dispatch and preemption (jobs.store.dispatch) ---------------------------------------

    def dispatch(self, lane: str, popped: str, most: int = 1) -> list[str]:
        """The runs a worker starts, having popped `popped` off the lane's rq list: each the oldest waiting run
        of the client with the fewest runs running, now counted as running (DISPATCH_LUA); at most `most`,
        and at most one per DISPATCH_SHARE waiting runs; empty: none waits."""
        now = time.time()
        got = self._dispatch(keys=lane_keys(lane), args=[*lane_args(lane), popped, repr(now), int(now * 1000),
                                                         most, DISPATCH_SHARE])
        return [r.decode() for r in got[::2]] if got else []

    def undispatch(self, runs: Sequence[str]) -> int:
        """Give back runs a worker took (dispatch) but will not start (it is shutting down): each goes back to
        the head of its client's line, in the order it was taken, on a new run id (a late start of the old
        one is skipped); a run whose job moved on meanwhile (canceled, deleted) is only uncounted. Returns
        how many went back."""
        back = 0
        for run in reversed(runs):
            m = RUN_ID_RE.match(run)
            h = self.conn.hgetall(JOB_KEY.format(id=m.group(1))) if m else None
            rec = JobRecord.from_hash(h) if h else None
            if rec is not None and rec.rq_id == run and rec.status is QUEUED:
                back += bool(self._back_on_queue(rec, (QUEUED,), {}, front=True))
            elif rec is not None:
                self.conn.zrem(CLIENT_RUNNING_KEY.format(client=client_of(rec)), run)
        return back

    def undispatched_start(self, rec: JobRecord) -> bool:
        """A run that started without the fair dispatch (rq popped it itself: another rq version, see
        jobs.compat.rq) leaves its lane and counts as running, as DISPATCH would have done, so lanes do not
        grow and `position` stays true; dispatch is then first in, first out."""
        client = client_of(rec)
        then = [*leave_commands(rec.queue, client, rec.rq_id),
                ("ZADD", CLIENT_RUNNING_KEY.format(client=client), time.time(), rec.rq_id),
                ("SADD", RUNNING_CLIENTS_KEY, client)]
        return self.transition(rec.id, (STARTED,), STARTED, then=packed(then)) is not None

    def should_yield(self, rec: JobRecord, run_id: str, grace: float = 1.0) -> bool:
        """Whether this run should give its worker back: another client whose work has waited `grace`
        seconds runs fewer runs than this run's client (YIELD_LUA; one preemption per lane at a time)."""
        now_ms = int(time.time() * 1000)
        return bool(self._yield(keys=[LANE_CLIENTS_KEY.format(lane=rec.queue), LANE_PREEMPT_KEY.format(lane=rec.queue)],
                                args=[*lane_args(rec.queue)[1:], client_of(rec), now_ms - int(grace * 1000),
                                      PREEMPT_LOCK_MS, run_id]))

    def preempt(self, rec: JobRecord, run_ms: str) -> bool:
        """STARTED -> QUEUED at a checkpoint, so another client's waiting work gets the worker: the job goes
        back to the head of its client's line on a new run (it continues from the checkpoint), counted in
        its `preemptions`."""
        return self._back_on_queue(rec, (STARTED,), {"run_ms": run_ms, "worker": ""},
                                   then=[("ZREM", RUNNING_KEY, rec.id),
                                         ("HINCRBY", JOB_KEY.format(id=rec.id), "preemptions", 1)], front=True)

    def heal_dispatch(self, now: float | None = None) -> int:
        """The reaper's check of the running counts: drops runs that no longer run (a run whose job was
        deleted before it started), and puts back on their lane the runs a worker took but never started
        (the worker died between dispatch and start), under a new run id so a late start of the old one
        is skipped. Returns how many entries it fixed."""
        now = time.time() if now is None else now
        fixed = 0
        for raw in self.conn.smembers(RUNNING_CLIENTS_KEY):
            client = raw.decode()
            key = CLIENT_RUNNING_KEY.format(client=client)
            old = [m.decode() for m in self.conn.zrangebyscore(key, "-inf", now - self.settings.heartbeat_timeout)]
            if not old and not self.conn.zcard(key):
                self.conn.srem(RUNNING_CLIENTS_KEY, client)
            for run in old:
                m = RUN_ID_RE.match(run)
                if m is None:
                    continue  # not a run of a whole job (a part of one): its owner accounts for it
                h = self.conn.hgetall(JOB_KEY.format(id=m.group(1)))
                rec = JobRecord.from_hash(h) if h else None
                if rec is not None and rec.rq_id == run and rec.status is STARTED:
                    continue
                if rec is not None and rec.rq_id == run and rec.status is QUEUED:
                    self._back_on_queue(rec, (QUEUED,), {}, front=True)
                self.conn.zrem(key, run)
                fixed += 1
        return fixed


    def heal_lanes(self, lanes: Sequence[str] = QUEUES) -> int:
        """The reaper's check of rq's lists against the lanes: a waiting run whose entry a worker popped
        and lost (it stopped between BLPOP and DISPATCH) would wait forever, as no worker pops for it;
        found missing on two checks in a row, it gets its entry back (HEAL_LANE_LUA). Returns how many
        entries it put back. Costs two commands per lane when the counts agree."""
        fixed = 0
        for lane in lanes:
            got = self._heal_lane(keys=[LANE_SINCE_KEY.format(lane=lane), rq_list(lane)],
                                  args=self._missing.get(lane, []))
            fixed += int(got[0])
            self._missing[lane] = [r.decode() if isinstance(r, bytes) else str(r) for r in got[1:]]
        return fixed


def count_live(pipe: Any, rec: JobRecord, delta: int) -> None:
    """Add delta to the live-job count of the job's client (a no-op for jobs without one, and for a split
    job's parts: the whole job counts once)."""
    client = rec.extra.get("client")
    if client and not rec.extra.get("parent"):
        key = CLIENT_LIVE_KEY.format(client=client)
        pipe.incrby(key, delta)
        pipe.expire(key, CLIENT_LIVE_TTL)
