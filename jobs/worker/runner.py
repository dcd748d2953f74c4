"""Runs one Crunch job inside an RQ worker: the only function RQ ever executes.

The runner owns the job's STARTED state: it takes it with a compare-and-set, heartbeats
while the kernel works, and leaves through exactly one of finished, failed, canceled,
paused or queued (re-queued on worker shutdown), saving a checkpoint where it can.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from functools import lru_cache
from typing import Any

import orjson
from redis import Redis
from rq import get_current_job

from jobs.compat.rq import ACTIVE as RQ_OVERRIDES
from jobs.context import Stop
from jobs.settings import Settings, process_settings
from jobs.store.commands import Call, Commands, Tally
from jobs.store.dispatch import client_of
from jobs.store.events import publish
from jobs.store.fanout import Fanout
from jobs.store.keys import (
    CLIENT_RUNNING_KEY,
    FAST_QUEUE,
    INPUT_CHUNK_BYTES,
    JOB_CHECKPOINT_KEY,
    JOB_CONTROL_KEY,
    JOB_INPUT_KEY,
    JOB_KEY,
    PREFETCH_MAX_BYTES,
    RESULT_CHUNKS_KEY,
    RESULT_COUNTS_KEY,
    RUNNING_KEY,
)
from jobs.store.lifecycle import Begun, Lifecycle
from jobs.store.record import JobRecord
from jobs.store.request_cache import request_cache_for
from jobs.store.results import RedisResultWriter, RedisScratch
from jobs.store.status import JobStatus
from jobs.types.registry import JOB_TYPES

log = logging.getLogger("crunch.runner")

#: Progress is written at most this often (seconds), and always at the end.
PROGRESS_INTERVAL = 0.2
#: Control requests are looked up at most this often from checkpoints.
CONTROL_INTERVAL = 0.1
#: A crash-recovery checkpoint is saved at least this often while a kernel runs.
CHECKPOINT_INTERVAL = 5.0
#: How often a run past its quantum asks whether another client waits for its worker (seconds).
YIELD_INTERVAL = 1.0
#: Stop reasons that save the kernel's state at the checkpoint (the job continues from it later).
_SAVING = ("pause", "requeue", "preempt")
#: Result bytes still buffered at the end ride along with the finishing transition up to this size.
FINISH_INLINE_BYTES = 64 << 10
#: Marks "not read yet" for RedisContext's checkpoint argument.
_UNREAD = object()


@lru_cache(maxsize=4)
def _lifecycle(conn: Redis, settings: Settings | None = None) -> Lifecycle:
    """One lifecycle per connection and process, with this process's settings (read once)."""
    settings = settings or process_settings()
    return Lifecycle(conn, request_cache_for(conn), settings)


def _kernel(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


class RedisContext:
    """KernelContext backed by the job's Redis keys."""

    def __init__(self, life: Lifecycle, rec: JobRecord, checkpoint: Any = _UNREAD,
                 reset_output: bool = True) -> None:
        """checkpoint: the raw checkpoint when the caller already read it; reset_output=False: the
        caller records output.reset_commands() in its own write (execute() does both, saving round trips)."""
        conn, result_ttl = life.conn, life.settings.result_ttl
        self.life = life
        self.conn = conn
        self.rec = rec
        self.job_id = rec.id
        self.resume_state: dict[str, Any] | None = None
        position = None
        raw = conn.get(JOB_CHECKPOINT_KEY.format(id=rec.id)) if checkpoint is _UNREAD else checkpoint
        if raw:
            saved = orjson.loads(raw)
            self.resume_state = saved.get("kernel")
            position = saved.get("output")
        self.output = RedisResultWriter(conn, rec.id, position, reset=reset_output)
        self.scratch = RedisScratch(conn, rec.id, result_ttl)
        self.stop_reason: str | None = None
        now = time.monotonic()
        self._started = now
        # The first progress write waits a PROGRESS_INTERVAL (a short job's finish writes 100 % anyway),
        # and the first control poll a CONTROL_INTERVAL (execute() has just read the control key).
        self._last_progress = now
        self._last_control = now
        self._last_checkpoint = now
        self._progress: tuple[int, int] | None = None
        #: When this run next asks whether to yield its worker (monotonic s; None: never, see preemptible()).
        self._yield_at: float | None = None
        self._run_id = ""
        #: A part of a split job names its whole job: the job's page and event streams follow the whole
        #: job, whose progress is the sum of its parts' (read on each event), so a part's progress
        #: announces the whole job too, or the page's bar would jump from 0 to 100.
        self._parent: str | None = rec.extra.get("parent") or None
        # The extras its type declares (JobSpec.needs, jobs.context.CONTEXT_EXTRAS); None for the rest.
        self.segments: Any = None
        if "segments" in JOB_TYPES[rec.type].needs:
            from jobs.store.segments import RedisSegmentStore
            self.segments = RedisSegmentStore(conn, result_ttl)

    def input(self) -> bytes:
        return b"".join(self.conn.lrange(JOB_INPUT_KEY.format(id=self.job_id), 0, -1))

    def input_chunks(self, offset: int = 0) -> Iterator[bytes]:
        """One stored piece per round trip (LINDEX), so a 200 MB input never sits whole in the worker.

        JobService stores the input in pieces of exactly INPUT_CHUNK_BYTES (the last may be
        shorter), so the piece holding `offset` is found without fetching the ones before it.
        """
        key = JOB_INPUT_KEY.format(id=self.job_id)
        index, skip = divmod(offset, INPUT_CHUNK_BYTES)
        count = self.conn.llen(key)
        while index < count:
            piece = self.conn.lindex(key, index)
            if piece is None:
                raise RuntimeError(f"the input of job {self.job_id} is gone")
            if index < count - 1 and len(piece) != INPUT_CHUNK_BYTES:
                raise RuntimeError(f"input piece {index} of job {self.job_id} has {len(piece)} bytes, "
                                   f"not {INPUT_CHUNK_BYTES}")
            yield piece[skip:] if skip else piece
            skip = 0
            index += 1

    def progress(self, done: int, total: int, force: bool = False) -> None:
        self._progress = (done, total)
        now = time.monotonic()
        if not force and now - self._last_progress < PROGRESS_INTERVAL and (
                done < total or now - self._started < PROGRESS_INTERVAL):
            return
        self._last_progress = now
        percent = round(100.0 * done / total, 2) if total else 0.0
        pipe = self.conn.pipeline(transaction=False)
        pipe.hset(JOB_KEY.format(id=self.job_id), "progress",
                  orjson.dumps({"done": done, "total": total, "percent": percent}))
        publish(pipe, self.job_id, JobStatus.STARTED.value, kind="progress")
        if self._parent:
            publish(pipe, self._parent, JobStatus.STARTED.value, kind="progress")
        pipe.execute()

    def save_checkpoint(self, state: dict[str, Any] | None) -> None:
        """Persist kernel state with the output position it matches; None means restart from zero."""
        self.life.checkpoint(self.job_id, state, self.output.position())
        self._last_checkpoint = time.monotonic()

    def preemptible(self, run_id: str, quantum: float) -> None:
        """Let this run be preempted once it has run `quantum` seconds (Lifecycle.should_yield decides)."""
        self._run_id = run_id
        self._yield_at = self._started + quantum

    def _poll_control(self) -> None:
        """Look for a control request (throttled); remembers the first stop reason seen. Past its quantum,
        a preemptible run also asks, every YIELD_INTERVAL, whether another client waits for its worker."""
        now = time.monotonic()
        if self.stop_reason is not None or now - self._last_control < CONTROL_INTERVAL:
            return
        self._last_control = now
        pipe = self.conn.pipeline(transaction=False)
        pipe.get(JOB_CONTROL_KEY.format(id=self.job_id))
        pipe.hmget(JOB_KEY.format(id=self.job_id), "status", "rq_id")
        control, (status, current) = pipe.execute()
        if status is None:
            self.stop_reason = "deleted"
        elif current is not None and current.decode() != self.rec.rq_id:
            # The job moved on to another run (retried or recovered while this one still ran): stop
            # without a word; the job, its control request and its checkpoint are that run's now.
            self.stop_reason = "superseded"
        elif JobStatus(status.decode()).terminal:
            # Ended by someone else (the web cancels a run that did not stop within its wait, and that
            # also deletes the control key): stop as for a cancel, which drops the scratch lists.
            self.stop_reason = "cancel"
        elif control:
            self.stop_reason = control.decode()
        elif self._yield_at is not None and now >= self._yield_at:
            self._yield_at = now + YIELD_INTERVAL
            if self.life.should_yield(self.rec, self._run_id):
                self.stop_reason = "preempt"

    def stopping(self) -> bool:
        """Only a pause, a shutdown or a preemption saves the state; a cancel or delete needs nothing durable."""
        self._poll_control()
        return self.stop_reason in _SAVING

    def checkpoint(self, state: dict[str, Any] | None = None) -> None:
        self._poll_control()
        if self.stop_reason is not None:
            if self.stop_reason in _SAVING:
                self.save_checkpoint(state)
            raise Stop()
        if state is not None and time.monotonic() - self._last_checkpoint >= CHECKPOINT_INTERVAL:
            self.save_checkpoint(state)


class _Heartbeats:
    """Keeps the deadline in the running set of every job this process runs fresh, even inside long
    C calls; one thread per process, so an inline job does not pay for starting a thread."""

    def __init__(self) -> None:
        self._reset()
        os.register_at_fork(after_in_child=self._reset)  # a work horse starts with no jobs and no thread

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, tuple[Redis, int]] = {}
        self._thread: threading.Thread | None = None

    def add(self, conn: Redis, job_id: str, timeout: int) -> None:
        """Beat for job_id every min(5, timeout / 4) seconds from now on, each beat moving its deadline
        `timeout` seconds ahead (its first deadline is set by the start)."""
        with self._lock:
            self._jobs[job_id] = (conn, timeout)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="crunch-heartbeats", daemon=True)
                self._thread.start()

    def remove(self, job_id: str) -> None:
        with self._lock:
            self._jobs.pop(job_id, None)

    def _run(self) -> None:
        while True:
            with self._lock:
                interval = min([5.0, *(t / 4 for _, t in self._jobs.values())])
            time.sleep(interval)
            with self._lock:
                jobs = list(self._jobs.items())
            for job_id, (conn, timeout) in jobs:
                try:
                    conn.zadd(RUNNING_KEY, {job_id: time.time() + timeout}, xx=False)
                except Exception:
                    log.warning("heartbeat for %s failed", job_id, exc_info=True)


_heartbeats = _Heartbeats()


def _rid(rec: JobRecord | None) -> str:
    """The id of the request that created the job, so worker log lines join up with the web's."""
    return (rec.extra.get("request_id") if rec is not None else None) or "-"


def execute(job_id: str) -> dict[str, Any] | None:
    """Entry point for RQ (enqueued by dotted name as jobs.worker.runner.execute)."""
    rq_job = get_current_job()
    worker = os.environ.get("RQ_WORKER_ID") or rq_job.worker_name or str(os.getpid())
    return run(rq_job.connection, job_id, rq_job.id, worker, dispatched=RQ_OVERRIDES)


def run(conn: Redis, job_id: str, rq_id: str, worker: str, *, start_then: Sequence[Sequence[Any]] = (),
        finish_then: Sequence[Sequence[Any]] = (),
        time_limit: Callable[[int], AbstractContextManager[Any]] | None = None,
        chain: list[Call] | None = None, tally: Tally | None = None,
        dispatched: bool = True, begun: Begun | Exception | None = None) -> dict[str, Any] | None:
    """Run one RQ run (rq_id) of a Crunch job. start_then / finish_then: commands that ride along with
    taking STARTED / a successful finish (a worker running the job inline keeps RQ's view of itself
    there, and drops RQ's job hash at the end); time_limit(seconds): a guard enforcing the type's
    timeout around the kernel, for callers that run it outside rq's own. chain: a worker running several
    fast runs in a row: the steps held back there (the previous run's finish) go with this run's start,
    and this run's finish is held back there in turn (the caller flushes it, Lifecycle.flush); tally: that
    chain's statistics, written once at its end (jobs.store.commands.Tally).
    dispatched=False: rq popped the run itself (jobs.compat.rq inactive: another rq version), so the fair
    dispatch never took it off its lane; the start does (Lifecycle.undispatched_start). begun: the run's
    start already taken with others of its take (begin_take), or the error that step met."""
    life = _lifecycle(conn)
    if isinstance(begun, Exception):
        raise begun
    if begun is None:
        # Fresh runs (no checkpoint, no control request) take STARTED in the same round trip as the read.
        begun = life.start(job_id, rq_id, worker, time.time(), fresh_reset(job_id, rq_id), then=start_then,
                           after=chain)
    started = begun.started
    # The job's fields as this run leaves them, so the finish event can carry them (see _finish_event).
    known = begun.fields
    rec = JobRecord.from_fields(known) if known else None
    if rec is None or rec.rq_id != rq_id:
        log.info("job %s: run %s superseded or deleted; skipping request_id=%s", job_id, rq_id, _rid(rec))
        if rec is not None:  # dispatch counted it as running (a deleted job's entry goes with the reaper)
            conn.zrem(CLIENT_RUNNING_KEY.format(client=client_of(rec)), rq_id)
        return None
    if begun.control in (b"cancel", b"pause"):
        # A control request for a job the queue still held: honour it without running.
        log.info("job %s %s before it ran request_id=%s", job_id, begun.control.decode(), _rid(rec))
        if begun.control == b"cancel":
            life.cancel(rec, (JobStatus.QUEUED,), runs=rec.runs)
        else:
            life.pause(rec, (JobStatus.QUEUED,), runs=rec.runs)
        _settle_parent(life, rec)  # a part: its whole job follows now, not at the reaper's next sweep
        return None
    ctx = RedisContext(life, rec, checkpoint=begun.checkpoint, reset_output=False)
    if begun.took:
        known["worker"] = worker
        known["started_at"] = known.get("started_at") or repr(started)
    else:
        # A resumed or recovered run: clear what its predecessor wrote after the checkpoint, then start.
        fields = {"worker": worker}
        if rec.started_at is None:
            fields["started_at"] = repr(started)
        known.update(fields)
        reset = Commands()
        ctx.output.reset_commands(reset)
        if not life.start_resumed(rec, fields, reset, then=start_then):
            return None
    if not dispatched:
        life.undispatched_start(rec)
    if rec.extra.get("parent"):  # a part of a split job: the whole job is started once a part is
        Fanout(life).started(rec.extra["parent"])
    if time_limit is None and rec.pausable and rec.queue != FAST_QUEUE and life.settings.preempt_quantum > 0:
        ctx.preemptible(rq_id, life.settings.preempt_quantum)  # a horse's checkpointing run (not an inline one)
    _heartbeats.add(conn, job_id, life.settings.heartbeat_timeout)
    if rec.queue != FAST_QUEUE:  # a fast job gets its one line when it ends
        log.info("job %s started type=%s run=%s request_id=%s", job_id, rec.type, rq_id, _rid(rec))
    t0 = time.perf_counter()

    def run_ms() -> str:
        return repr(rec.run_ms + (time.perf_counter() - t0) * 1000)

    try:
        spec = JOB_TYPES[rec.type]
        if time_limit is None:
            stats = _kernel(spec.kernel)(rec.params, ctx)
        else:
            with time_limit(life.settings.job_timeout(rec.type)):
                stats = _kernel(spec.kernel)(rec.params, ctx)
        _drop_scratch(ctx)
        pushes = ctx.output.take_pending(FINISH_INLINE_BYTES)
        meta = ctx.output.finish()
        total = (ctx._progress or (1, 1))[1]
        fields = {"result_meta": orjson.dumps(meta).decode(), "ended_at": repr(time.time()),
                  "run_ms": run_ms(),
                  "progress": orjson.dumps({"done": total, "total": total, "percent": 100.0}).decode()}
        if isinstance(stats, dict):
            fields["stats"] = orjson.dumps(stats).decode()
        # The result's last pushes, the state, the cache entry, counters and event: one atomic step.
        event = _finish_event({**known, **fields, "status": JobStatus.FINISHED.value}, meta, pushes,
                              ctx.output.chunks_key)
        # runs: only while this run is the job's current one (jobs.store.lifecycle), as every step below.
        life.finish(rec, fields, float(fields["run_ms"]) / 1000, event, pushes=pushes, then=finish_then,
                    defer=None if rec.extra.get("parent") else chain, tally=tally, runs=rec.runs)
        _settle_parent(life, rec)
        # A fast job's success is a DEBUG line: at a thousand a second, INFO lines would be most of the log
        # and a tenth of the worker's CPU (the web's request line already names the job).
        (log.debug if rec.queue == FAST_QUEUE else log.info)(
            "job %s finished in %.3f ms request_id=%s", job_id, float(fields["run_ms"]), _rid(rec))
        return {"job": job_id, "status": "finished"}
    except Stop:
        return _stopped(life, rec, ctx, run_ms())
    except Exception as exc:
        error = {"type": type(exc).__name__, "message": str(exc) or type(exc).__name__}
        log.error("job %s failed request_id=%s: %s", job_id, _rid(rec), "".join(traceback.format_exception(exc)))
        _drop_scratch(ctx)
        life.fail(rec, error, run_ms(), runs=rec.runs)
        _settle_parent(life, rec)
        raise
    finally:
        _heartbeats.remove(job_id)


def fresh_reset(job_id: str, rq_id: str) -> Commands:
    """What a fresh run's start drops: output an earlier run wrote (none before a job's first run; a retry
    is a later run)."""
    reset = Commands()
    if not rq_id.endswith("-1"):
        reset.delete(RESULT_CHUNKS_KEY.format(id=job_id), RESULT_COUNTS_KEY.format(id=job_id))
    return reset


def begin_take(conn: Redis, runs: Sequence[tuple[str, str, Sequence[Sequence[Any]]]],
               worker: str) -> list[Begun | Exception]:
    """The starts of a worker's take of fast runs, (job id, rq id, start_then) each, in one round trip; run()
    then runs each with its Begun. Why: a take of 16 cheap runs paid 16 start round trips, each one the
    worker waited out idle (two workers on two cores ran at about 0.25 CPU each during the batches bench).
    What it costs: the take's later runs read `started` while an earlier one runs (milliseconds: the fast
    lane holds only cheap jobs, see each type's queue_for)."""
    life = _lifecycle(conn)
    started = time.time()
    return life.start_many([life.start_call(job_id, rq_id, worker, started, fresh_reset(job_id, rq_id), then)
                            for job_id, rq_id, then in runs], started)


def _settle_parent(life: Lifecycle, rec: JobRecord) -> None:
    """A part of a split job ended (or paused): its whole job follows (jobs.store.fanout.Fanout.settle)."""
    if rec.extra.get("parent"):
        try:
            Fanout(life).settle(rec.extra["parent"])
        except Exception:  # the reaper settles it again (FANOUT_LIVE_KEY)
            log.warning("job %s: settling its whole job failed", rec.id, exc_info=True)


def _finish_event(job: dict[str, str], meta: dict[str, Any], pushes: list[tuple[Any, ...]],
                  chunks_key: str) -> dict[str, Any]:
    """Extra fields of the finished event: the job's fields as the finish leaves them and, when the
    whole result is small and rides along with the finish, its chunks; a waiter woken by the event
    then answers without reading the job back (JobService.wait_until)."""
    if sum(len(v) for v in job.values()) > PREFETCH_MAX_BYTES:
        return {}  # large params: waiters read the job back rather than every web process parsing it
    event: dict[str, Any] = {"job": job}
    if meta.get("kind") != "text" and (meta.get("json_bytes") or 0) <= PREFETCH_MAX_BYTES:
        chunks = [args[2] for args in pushes if args[0] == "RPUSH" and args[1] == chunks_key]
        if len(chunks) == (meta.get("chunks") or 0):
            event["chunks"] = [c.decode() if isinstance(c, bytes) else str(c) for c in chunks]
    return event


def _drop_scratch(ctx: RedisContext) -> None:
    """Forget a job's scratch lists once it cannot resume; costs nothing for jobs that never had any."""
    if ctx.scratch.used or ctx.resume_state is not None:
        try:
            ctx.scratch.clear()
        except Exception:
            log.warning("could not drop the scratch lists of job %s (they expire)", ctx.job_id, exc_info=True)


def drop_scratch_after_horse(conn: Redis, job_id: str) -> None:
    """In the worker's main process, after its work horse ended without finishing its run (stopped by a
    cancel's stop command, or killed): the horse could not drop its job's scratch lists (sort runs of
    up to a few hundred MB), so they go here unless the job can still resume from them."""
    try:
        if RedisScratch(conn, job_id, 0).clear_if_ended(JOB_KEY.format(id=job_id), _ENDED):
            log.info("job %s: dropped the scratch lists its stopped work horse left", job_id)
    except Exception:
        log.warning("could not drop the scratch lists of job %s (they expire)", job_id, exc_info=True)


_ENDED = tuple(s.value.encode() for s in JobStatus if s.terminal)


def _stopped(life: Lifecycle, rec: JobRecord, ctx: RedisContext, run_ms: str) -> dict[str, Any]:
    """Leave the job in the state its stop reason asks for."""
    conn, job_id, reason = life.conn, rec.id, ctx.stop_reason
    log.info("job %s stopped (%s) request_id=%s", job_id, reason, _rid(rec))
    if reason == "superseded":  # nothing is this run's to move any more (RedisContext._poll_control)
        return {"job": job_id, "status": "superseded"}
    if reason in ("deleted", "cancel"):
        _drop_scratch(ctx)
    if reason == "deleted":  # nothing left to move: the web deleted the record
        conn.delete(JOB_CHECKPOINT_KEY.format(id=job_id))
        conn.zrem(RUNNING_KEY, job_id)
        conn.zrem(CLIENT_RUNNING_KEY.format(client=client_of(rec)), rec.rq_id)
        return {"job": job_id, "status": "deleted"}
    if reason == "cancel":
        life.cancel(rec, (JobStatus.STARTED,), run_ms, runs=rec.runs)
        _settle_parent(life, rec)
        return {"job": job_id, "status": "canceled"}
    if reason == "pause":
        life.pause(rec, (JobStatus.STARTED,), run_ms, runs=rec.runs)
        _settle_parent(life, rec)
        return {"job": job_id, "status": "paused"}
    if reason == "preempt":  # another client's work waits: continue from the checkpoint on a later run
        life.preempt(rec, run_ms)
        return {"job": job_id, "status": "preempted"}
    # "requeue": the worker is shutting down; another run continues from the checkpoint.
    life.requeue(rec, run_ms)
    return {"job": job_id, "status": "requeued"}


def on_rq_failure(job: Any, connection: Redis, exc_type: Any, value: Any, tb: Any) -> None:
    """RQ failure callback: marks the job failed when its work horse died without a word."""
    job_id = job.args[0] if job.args else None
    if not job_id:
        return
    life = _lifecycle(connection)
    h = connection.hgetall(JOB_KEY.format(id=job_id))
    rec = JobRecord.from_hash(h) if h else None
    if rec is None or rec.rq_id != job.id or rec.status is not JobStatus.STARTED:
        return
    name = getattr(exc_type, "__name__", str(exc_type))
    error = {"type": name, "message": str(value) or "the work horse ended unexpectedly"}
    log.error("job %s failed: %s: %s request_id=%s", job_id, name, error["message"], _rid(rec))
    life.fail(rec, error, runs=rec.runs)
