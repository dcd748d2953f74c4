"""Crunch's rq worker classes: each worker runs cheap jobs from the fast queue inline and forks a
work horse for the rest (see jobs.worker.supervisor for the processes that run them)."""

from __future__ import annotations

import logging
import os
import re
import signal
import time
from typing import Any

import redis.exceptions
from rq.timeouts import HorseMonitorTimeoutException, JobTimeoutException, UnixSignalDeathPenalty
from rq.worker import Worker

from jobs.compat.rq import INLINE, InlineDequeue, QuietState
from jobs.store.commands import Tally
from jobs.store.keys import JOB_CONTROL_KEY, PREFIX
from jobs.store.queues import RUNNER, JsonJob, JsonQueue
from jobs.types.spec import FAST_QUEUE

#: RQ's list of the fast queue.
FAST_QUEUE_KEY = JsonQueue.redis_queue_namespace_prefix + FAST_QUEUE

log = logging.getLogger("crunch.worker")

#: How long the main process blocks on the fast lane at a time while its horse runs (seconds): the most
#: a horse that died without a word (SIGKILL) goes unnoticed; a horse that ends normally wakes it at once.
FAST_LANE_POLL = 0.5
#: How long the main process polls for its horse every few ms once the horse said it is done (it exits right
#: after), before it waits on the fast lane again. Waiting another FAST_LANE_POLL instead left a worker idle
#: 0.5-0.6 s between the parts of a split job (measured on a 10^12 count at load 4).
HORSE_EXIT_WAIT = 2.0
#: The poll interval meanwhile (seconds).
HORSE_EXIT_POLL = 0.005
#: List: a horse pushes one entry here as it exits, so its worker's fast-lane wait ends at once.
HORSE_DONE_KEY = PREFIX + "worker:{name}:horse-done"

#: The most fast-lane runs one dispatch hands a worker (and at most one per DISPATCH_SHARE waiting): the
#: worker's pop and dispatch (two round trips, and rq's loop around them) are paid once for all of them.
#: A cheap job takes milliseconds, so a worker's handful delays the last of them by milliseconds too.
#: Measured with `python -m bench --only batches` (see README "Batches and webhooks").
FAST_TAKE = 16
#: The longest a take holds back its runs' finishes (seconds): a cheap job's result is not kept from its
#: client behind the rest of the take for longer than this, should a take's runs be slower than expected.
CHAIN_HOLD = 0.02

#: rq heartbeats a worker three times around every job (three round trips each) for a key that lives
#: minutes: a heartbeat this soon after the previous one is skipped while the key's expiry covers it.
HEARTBEAT_MIN_INTERVAL = 1.0


#: A run of a Crunch job as RQ queues it: "<job id>-<run>".
_RUN_ID = re.compile(r"^([0-9a-f]{32})-[0-9]+$")


class InlineRun:
    """A fast-queue run, known by its RQ id alone: the worker runs jobs.worker.runner on it without reading
    RQ's job hash (the id names the Crunch job, whose own hash holds everything the run needs). `more`: the
    further runs the same dispatch took (FAST_TAKE), run one after another by the same worker."""

    def __init__(self, rq_id: str, crunch_id: str, more: list[InlineRun] | None = None) -> None:
        self.id = rq_id
        self.crunch_id = crunch_id
        self.description = f"{RUNNER}({crunch_id!r})"
        self.origin = FAST_QUEUE
        self.more = more or []


class WorkerQueue(InlineDequeue, JsonQueue):
    """The worker's side of Crunch's queues: the popped entry goes through the fair dispatch, and a
    fast-queue run is dequeued as an InlineRun."""

    @classmethod
    def dispatched(cls, connection: Any, queue_key: str, job_id: str, most: int | None = None) -> list[str]:
        """The popped entry only says that a run of the lane waits; the lifecycle's dispatch picks which
        (jobs.store.dispatch), in one script: on the fast lane, which this worker runs inline, up to
        FAST_TAKE of them. Empty: nothing waits after all (rq pops again)."""
        from jobs.worker.runner import _lifecycle

        if most is None:
            most = FAST_TAKE if queue_key == FAST_QUEUE_KEY else 1
        return _lifecycle(connection).dispatch(queue_key[len(cls.redis_queue_namespace_prefix):], job_id, most)

    @classmethod
    def inline_run(cls, queue_key: str, job_id: str, more: list[str] | None = None) -> InlineRun | None:
        m = _RUN_ID.match(job_id)
        if m is None or queue_key != FAST_QUEUE_KEY:
            return None
        runs = [InlineRun(r, mm.group(1)) for r in more or () if (mm := _RUN_ID.match(r))]
        return InlineRun(job_id, m.group(1), runs)


class CrunchWorker(QuietState, Worker):
    """Fast-queue runs inline (no fork, no rq per-job records), a forked work horse for the rest."""

    _beat_at = float("-inf")
    _beat_expires = float("-inf")

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        """rq's heartbeat, minus the repeats: skipped when one was sent under HEARTBEAT_MIN_INTERVAL ago
        and the worker key's expiry already reaches as far (the next job or idle wait heartbeats again)."""
        ttl = timeout or self.worker_ttl + 60
        t = time.monotonic()
        if pipeline is None and t - self._beat_at < HEARTBEAT_MIN_INTERVAL \
                and self._beat_expires >= t + ttl - HEARTBEAT_MIN_INTERVAL:
            return
        super().heartbeat(timeout, pipeline)
        self._beat_at, self._beat_expires = t, t + ttl

    _suspension_checked = float("-inf")

    def check_for_suspension(self, burst: bool) -> None:
        """rq's check (a round trip with a heartbeat, before every job), at most once per
        HEARTBEAT_MIN_INTERVAL while jobs keep coming: `rq suspend` still stops the worker within a second."""
        if time.monotonic() - self._suspension_checked < HEARTBEAT_MIN_INTERVAL:
            return
        super().check_for_suspension(burst)
        self._suspension_checked = time.monotonic()

    #: Set by request_stop: the fast lane beside a horse takes nothing new.
    _stopping = False
    #: The Crunch job this worker runs inline right now (read by request_stop, a signal handler).
    _inline_job_id: str | None = None

    def handle_job_failure(self, job: Any, queue: Any, *args: Any, **kwargs: Any) -> None:
        """rq's bookkeeping of a failed run; in the main process (a horse stopped by a cancel, or killed) it
        then drops the scratch lists of the Crunch job if it has ended: the horse could not."""
        try:
            super().handle_job_failure(job, queue, *args, **kwargs)
        finally:
            m = None if self.is_horse else _RUN_ID.match(job.id or "")
            if m is not None:
                from jobs.worker.runner import drop_scratch_after_horse

                drop_scratch_after_horse(self.connection, m.group(1))

    def execute_job(self, job: Any, queue: Any) -> None:
        """A fast-queue run inline (and the runs its dispatch took with it, one after another); anything
        else (the default queue) in rq's forked work horse."""
        if not isinstance(job, InlineRun):
            super().execute_job(job, queue)
            return
        if not job.more:
            self._run_inline(job)
            return
        from jobs.worker.runner import _lifecycle, begin_take

        # A take of several runs: their starts go in one round trip (begin_take), their finishes are held
        # back and sent together at the end (or once CHAIN_HOLD has passed), their counters are written once
        # (Tally), and rq's view of this worker is busy from the first start to the last finish. A take is
        # run to its end even when a shutdown is asked for: its runs are started, and cheap.
        runs = [job, *job.more]
        begun = list(begin_take(self.connection, [(r.crunch_id, r.id, self.start_commands(r.id) if not i else [])
                                                  for i, r in enumerate(runs)], self.name))
        chain: list[Any] = []
        tally = Tally()
        life = _lifecycle(self.connection)
        held_since = time.monotonic()
        try:
            while runs:
                run, first = runs.pop(0), begun.pop(0)
                self._run_inline(run, chain=chain, tally=tally, last=not runs, begun=first)
                if chain and time.monotonic() - held_since > CHAIN_HOLD:
                    life.flush(chain, tally)
                    held_since = time.monotonic()
        finally:
            try:
                life.flush(chain, tally)
                if runs:  # a BaseException: started runs are re-queued now, the others go back to their lines
                    for run, one in zip(runs, begun, strict=True):
                        if not isinstance(one, Exception) and one.took:
                            life.recover_run(run.crunch_id, run.id)
                    life.undispatch([r.id for r, one in zip(runs, begun, strict=True)
                                     if isinstance(one, Exception) or not one.took])
            except Exception:  # the reaper recovers both (heal_dispatch, the heartbeat check)
                log.warning("could not send the last finishes or give back %d taken runs", len(runs), exc_info=True)

    def _run_inline(self, run: InlineRun, beside_horse: bool = False, chain: list[Any] | None = None,
                    tally: Tally | None = None, last: bool = True, begun: Any = None) -> None:
        """A fast-queue run of jobs.worker.runner without rq's per-job records (execution, registries, result):
        Crunch's job hash already holds all of it, and this is two round trips instead of eight. The type's
        timeout still applies; the RQ job hash goes in the finish's own atomic step. beside_horse: run while
        this worker's horse runs a long job (wait_for_horse), so rq's view of the worker stays the horse's. chain,
        tally, begun: see jobs.worker.runner.run; last: whether rq's view of the worker goes idle after this run
        (a run followed by another of the same take leaves it busy)."""
        from jobs.worker.runner import run as run_job

        rq_key = JsonJob.key_for(run.id)
        self._inline_job_id = run.crunch_id
        state = self.hold_busy()
        # rq's view of this worker (state, current job) changes inside the start's and finish's own steps.
        idle = [] if beside_horse or not last else self.idle_commands(state)
        counted = self.count_commands(True) if tally is None else []
        finished = False
        try:
            out = run_job(self.connection, run.crunch_id, run.id, self.name,
                          start_then=[] if beside_horse else self.start_commands(run.id),
                          finish_then=[("DEL", rq_key), *counted, *idle],
                          time_limit=lambda seconds: self.death_penalty_class(seconds, JobTimeoutException,
                                                                             job_id=run.id),
                          chain=chain, tally=tally, begun=begun)
            finished = bool(out) and out.get("status") == "finished"
            if finished and tally is not None:
                for cmd in self.count_commands(True):
                    tally.add(*cmd)
        except Exception:  # noqa: BLE001 - the runner recorded the failure on the job (status, error) and logged it
            with self.connection.pipeline(transaction=False) as pipe:
                for cmd in self.count_commands(False):
                    pipe.execute_command(*cmd)
                pipe.execute()
        finally:
            self._inline_job_id = None
            self.release_busy(state)
            if not finished:
                with self.connection.pipeline(transaction=False) as pipe:
                    pipe.delete(rq_key)
                    for cmd in idle:
                        pipe.execute_command(*cmd)
                    pipe.execute()

    def request_stop(self, signum: int, frame: Any) -> None:
        """On shutdown, ask the running jobs (the horse's, and one running inline beside it) to checkpoint
        and re-queue instead of waiting them out."""
        try:
            ids = [self._inline_job_id]
            if self.horse_pid:
                current = self.get_current_job_id()  # the horse's run, "<job id>-<run>"
                ids.append(current.rsplit("-", 1)[0] if current else None)
            for job_id in filter(None, ids):
                self.connection.set(JOB_CONTROL_KEY.format(id=job_id), "requeue", ex=3600, nx=True)
        except Exception:
            log.warning("could not ask the current job to re-queue", exc_info=True)
        self._stopping = True
        super().request_stop(signum, frame)

    # -- the fast lane while a horse runs --------------------------------------------------

    def perform_job(self, job: Any, queue: Any, execution: Any) -> bool:
        """In the work horse: rq's perform_job, then wake the main process's fast-lane wait (wait_for_horse)."""
        try:
            return super().perform_job(job, queue, execution)
        finally:
            try:
                key = HORSE_DONE_KEY.format(name=self.name)
                with self.connection.pipeline(transaction=False) as pipe:
                    pipe.rpush(key, 1)
                    pipe.expire(key, 60)
                    pipe.execute()
            except Exception:  # the main process notices within FAST_LANE_POLL anyway
                log.debug("could not signal the horse's end", exc_info=True)

    def wait_for_horse(self) -> tuple[int | None, int | None, Any]:
        """While the work horse runs a long job, run the fast lane's jobs inline in this process, which rq
        leaves idle: a cheap job never waits behind long ones, on any number of hosts, and no worker is set
        aside for cheap jobs (a reserved worker would idle most of the time, and one is not enough under
        a burst). Preemption (jobs.worker.runner) would also free a worker, but only at a checkpoint after
        a quantum: seconds, not the sub-second start a cheap job needs.

        rq's monitor_work_horse calls this inside a SIGALRM death penalty of job_monitoring_interval and,
        on HorseMonitorTimeoutException, heartbeats, checks the job's timeout and calls again. Here the alarm
        is taken over (a signal must not land inside a Redis reply or an inline job): it is cancelled and its
        deadline kept, and the same exception is raised at that deadline between two steps. Each step is a
        non-blocking wait4 on the horse, then a BLPOP of at most FAST_LANE_POLL on the fast lane and the
        horse's done-list; a fast entry is dispatched and its run executed at once.

        What it costs the long job: the fast jobs' own CPU, which on a machine with as many workers as cores
        comes from the long jobs; the waiting itself is two round trips a second. Measured (bench "mixed", 2
        workers on 2 CPUs at load 11-17): with both workers on a long count, 1,003 trivial jobs one after
        another took p50 46 ms / p99 222 ms from POST to result (idle workers: 21.6 / 48 ms), none answered
        202, and the long counts ran 1.48x as long as alone, the whole stream's CPU (web, Redis, inline runs)
        coming from the same two cores. Another death penalty class, or no alarm set (rq waits for a horse
        it has just killed), or rq's internals not the ones jobs.compat.rq was written for: waits as rq does.
        """
        left = signal.alarm(0)
        if not left or not INLINE or self.death_penalty_class is not UnixSignalDeathPenalty:
            if left:
                signal.alarm(left)
            return super().wait_for_horse()
        deadline = time.monotonic() + left
        done_key = HORSE_DONE_KEY.format(name=self.name)
        exiting_until = float("-inf")  # until then the horse is about to exit: poll it, take nothing new
        while True:
            try:
                pid, stat, rusage = os.wait4(self.horse_pid, os.WNOHANG)
            except ChildProcessError:
                return None, None, None
            if pid:
                return pid, stat, rusage
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise HorseMonitorTimeoutException("job monitoring interval passed")
            if self._stopping:  # shutting down: wait for the horse, take nothing new
                time.sleep(min(0.1, remaining))
                continue
            if time.monotonic() < exiting_until:
                time.sleep(min(HORSE_EXIT_POLL, remaining))
                continue
            try:
                popped = self.connection.blpop([FAST_QUEUE_KEY, done_key], min(FAST_LANE_POLL, remaining))
                if popped is None:
                    continue
                if popped[0].decode() != FAST_QUEUE_KEY:  # the horse said it is done: it exits now
                    exiting_until = time.monotonic() + HORSE_EXIT_WAIT
                    continue
                taken = WorkerQueue.dispatched(self.connection, FAST_QUEUE_KEY, popped[1].decode(), most=1)
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                log.warning("fast lane: Redis unreachable; waiting on the horse", exc_info=True)
                time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
                continue
            run = WorkerQueue.inline_run(FAST_QUEUE_KEY, taken[0]) if taken else None
            if run is not None:
                self._run_inline(run, beside_horse=True)


def on_horse_killed(job: Any, retpid: int, ret_val: int, rusage: Any) -> None:
    """rq's work_horse_killed_handler: the horse died by a signal (SIGKILL, the OOM killer). Re-queue its
    job now, from its last checkpoint, rather than when its heartbeat lapses (HEARTBEAT_TIMEOUT, 30-40 s
    later). rq then records the run's failure, which the failure callback ignores: the job is QUEUED again."""
    m = _RUN_ID.match(job.id or "")
    if m is None:
        return
    from jobs.worker.runner import _lifecycle

    try:
        if _lifecycle(job.connection).recover_run(m.group(1), job.id):
            log.warning("job %s lost its work horse (wait status %s); re-queued at once", m.group(1), ret_val)
    except Exception:  # the reaper still recovers it after the heartbeat timeout
        log.warning("could not re-queue job %s after its work horse died", m.group(1), exc_info=True)
