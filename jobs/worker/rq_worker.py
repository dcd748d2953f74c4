"""Crunch's rq worker classes: each worker runs cheap jobs from the fast queue inline and forks a
work horse for the rest (see jobs.worker.supervisor for the processes that run them)."""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from rq.timeouts import JobTimeoutException
from rq.worker import Worker

from jobs.compat.rq import InlineDequeue, QuietState
from jobs.store.keys import JOB_CONTROL_KEY
from jobs.store.queues import RUNNER, JsonJob, JsonQueue
from jobs.types.spec import FAST_QUEUE

#: RQ's list of the fast queue.
FAST_QUEUE_KEY = JsonQueue.redis_queue_namespace_prefix + FAST_QUEUE

log = logging.getLogger("crunch.worker")

#: rq heartbeats a worker three times around every job (three round trips each) for a key that lives
#: minutes: a heartbeat this soon after the previous one is skipped while the key's expiry covers it.
HEARTBEAT_MIN_INTERVAL = 1.0


#: A run of a Crunch job as RQ queues it: "<job id>-<run>".
_RUN_ID = re.compile(r"^([0-9a-f]{32})-[0-9]+$")


class InlineRun:
    """A fast-queue run, known by its RQ id alone: the worker runs jobs.worker.runner on it without reading
    RQ's job hash (the id names the Crunch job, whose own hash holds everything the run needs)."""

    def __init__(self, rq_id: str, crunch_id: str) -> None:
        self.id = rq_id
        self.crunch_id = crunch_id
        self.description = f"{RUNNER}({crunch_id!r})"
        self.origin = FAST_QUEUE


class WorkerQueue(InlineDequeue, JsonQueue):
    """The worker's side of Crunch's queues: a fast-queue run is dequeued as an InlineRun."""

    @classmethod
    def inline_run(cls, queue_key: str, job_id: str) -> InlineRun | None:
        m = _RUN_ID.match(job_id)
        if m is None or queue_key != FAST_QUEUE_KEY:
            return None
        return InlineRun(job_id, m.group(1))


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

    #: The Crunch job this worker runs inline right now (read by request_stop, a signal handler).
    _inline_job_id: str | None = None

    def execute_job(self, job: Any, queue: Any) -> None:
        """A fast-queue run inline; anything else (the default queue) in rq's forked work horse."""
        if isinstance(job, InlineRun):
            self._run_inline(job)
        else:
            super().execute_job(job, queue)

    def _run_inline(self, run: InlineRun) -> None:
        """A fast-queue run of jobs.worker.runner without rq's per-job records (execution, registries, result):
        Crunch's job hash already holds all of it, and this is two round trips instead of eight. The type's
        timeout still applies; the RQ job hash goes in the finish's own atomic step."""
        from jobs.worker.runner import run as run_job

        rq_key = JsonJob.key_for(run.id)
        self._inline_job_id = run.crunch_id
        state = self.hold_busy()
        # rq's view of this worker (state, current job) changes inside the start's and finish's own steps.
        idle = self.idle_commands(state)
        finished = False
        try:
            out = run_job(self.connection, run.crunch_id, run.id, self.name,
                          start_then=self.start_commands(run.id),
                          finish_then=[("DEL", rq_key), *self.count_commands(True), *idle],
                          time_limit=lambda seconds: self.death_penalty_class(seconds, JobTimeoutException,
                                                                             job_id=run.id))
            finished = bool(out) and out.get("status") == "finished"
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
        """On shutdown, ask the running job to checkpoint and re-queue instead of waiting it out."""
        try:
            job_id = self._inline_job_id
            if job_id is None:
                current = self.get_current_job_id()  # the horse's run, "<job id>-<run>"
                job_id = current.rsplit("-", 1)[0] if current else None
            if job_id:
                self.connection.set(JOB_CONTROL_KEY.format(id=job_id), "requeue", ex=3600, nx=True)
        except Exception:
            log.warning("could not ask the current job to re-queue", exc_info=True)
        super().request_stop(signum, frame)
