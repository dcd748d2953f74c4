"""rq internals Crunch overrides for throughput, written for rq 3.0.0 (requirements.txt).

- The serializer lookup: rq resolves the serializer of every Job, Queue and registry it builds (about
  nine per job) through rq.serializers.resolve_serializer, whose isinstance check against a
  runtime-checkable Protocol costs ~60 us: 8 % of a worker's CPU. rq imports that function by name
  into each module that builds them, so the override replaces it there. Fallback: rq's own lookup.
- Enqueueing into a command recorder: rq's Queue.enqueue_call(pipeline=...) writes the job through the
  pipeline it is given, and asks `explicit_transaction` before calling multi(); Crunch hands it a
  recorder (jobs.store.commands.Commands) so the enqueue rides in the lifecycle's one atomic script.
  Fallback: a real redis-py pipeline, never executed, as the recorder (about 3x the CPU per command).
- The fast-queue inline path (jobs.worker.rq_worker): InlineDequeue replaces the worker queue's
  `_fetch_dequeued_job` so a fast run is not read back from rq's job hash; the worker's `_state` is
  set without a write while the inline run holds it; and rq's worker hash fields (state, current_job,
  successful_job_count, failed_job_count) are written inside the run's own start and finish steps:
  two round trips per trivial job instead of eight. Fallback: fast jobs run as rq runs any job
  (a forked work horse each), slower but complete. The same post-pop step asks the worker queue's
  `dispatched` hook which waiting run to start (the fair dispatch, jobs.store.dispatch); fallback: the
  popped run itself (first in, first out), and no fast lane beside a running horse.
"""

from __future__ import annotations

from typing import Any

import rq.job
import rq.queue
import rq.registry
import rq.results
import rq.serializers
import rq.worker.base
from rq.serializers import JSONSerializer
from rq.worker import WorkerStatus

from jobs.compat import written_for

VERSION = "3.0.0"
#: Whether the overrides below are in use (the installed rq is the one they were written for).
ACTIVE = written_for("rq", VERSION, "Crunch's rq overrides (jobs.compat.rq: serializer lookup, recorded "
                     "enqueue, inline fast runs)",
                     fallback="rq's serializer lookup, a pipeline recorder and forked runs for fast jobs")

_resolve_serializer = rq.serializers.resolve_serializer


def _resolve_json_fast(serializer: Any = None) -> Any:
    """rq.serializers.resolve_serializer, answering JSONSerializer without the Protocol check."""
    if serializer is JSONSerializer:
        return JSONSerializer
    return _resolve_serializer(serializer)


if ACTIVE:
    # rq imports the function by name into each module that builds jobs, queues or registries.
    for _module in (rq.job, rq.queue, rq.registry, rq.results, rq.worker.base):
        _module.resolve_serializer = _resolve_json_fast  # type: ignore[attr-defined]


class _RecorderAsPipeline:
    """A Commands recorder as rq's enqueue sees a pipeline: already in a transaction (a script is atomic)."""

    explicit_transaction = True

    def __init__(self, recorder: Any) -> None:
        self._recorder = recorder

    def multi(self) -> None:
        """Nothing to open: a replay script is atomic already."""

    def __getattr__(self, name: str) -> Any:
        return getattr(self._recorder, name)


def enqueue_recorded(queue: rq.queue.Queue, recorder: Any, func: str, **kwargs: Any) -> None:
    """queue.enqueue_call(func, **kwargs), its writes recorded on `recorder` (a Commands) instead of sent."""
    if ACTIVE:
        queue.enqueue_call(func, pipeline=_RecorderAsPipeline(recorder), **kwargs)
        return
    from jobs.compat.redis import pipeline_commands

    pipe = queue.connection.pipeline(transaction=True)
    queue.enqueue_call(func, pipeline=pipe, **kwargs)
    recorder.extend(cmd for cmd in pipeline_commands(pipe) if cmd[0] not in ("MULTI", "EXEC"))


class InlineDequeue:
    """Mixin for the worker's queue class: a dequeued id that `inline_run(queue_key, job_id)` recognises
    (a fast-queue run) comes back as that object, without rq's read of its job hash."""

    _queues: dict[tuple[str, int], Any] = {}

    @classmethod
    def dispatched(cls, connection: Any, queue_key: str, job_id: str) -> list[str]:
        """The runs to start for a popped entry (empty: none, rq pops again); here the entry itself. Only
        runs the worker executes inline may come several at a time (see inline_run)."""
        return [job_id]

    @classmethod
    def inline_run(cls, queue_key: str, job_id: str, more: list[str] | None = None) -> Any:
        """The inline run for this dequeued id (and the further runs taken with it), or None to let rq
        fetch the job as usual."""
        return None

    if ACTIVE:
        @classmethod
        def _fetch_dequeued_job(cls, connection: Any, queue_key: str, job_id: str, job_class: Any = None,
                                serializer: Any = None, death_penalty_class: Any = None) -> Any:
            """rq 3.0's post-pop step (rebuild the queue, HGETALL the job), after `dispatched` chose the run,
            minus the read for an inline run."""
            chosen = cls.dispatched(connection, queue_key, job_id)
            if not chosen:
                return None  # rq's dequeue_any pops again
            job_id = chosen[0]
            run = cls.inline_run(queue_key, job_id, chosen[1:])
            if run is None:
                return super()._fetch_dequeued_job(  # type: ignore[misc]
                    connection, queue_key, job_id, job_class=job_class, serializer=serializer,
                    death_penalty_class=death_penalty_class)
            queue = cls._queues.get((queue_key, id(connection)))
            if queue is None:
                queue = cls._queues[(queue_key, id(connection))] = cls.from_queue_key(  # type: ignore[attr-defined]
                    queue_key, connection=connection, job_class=job_class, serializer=serializer,
                    death_penalty_class=death_penalty_class)
            return run, queue


class QuietState:
    """Mixin for the worker: rq's set_state without re-writing the state it already wrote (rq sets idle
    twice per job), and the worker-hash writes an inline run folds into its own start and finish."""

    if ACTIVE:
        def set_state(self, state: str, pipeline: Any = None) -> None:
            if pipeline is None and state == self._state:
                return
            super().set_state(state, pipeline)  # type: ignore[misc]

    def hold_busy(self) -> Any:
        """Mark this worker busy in memory only (a SIGTERM then waits for the job, as rq's _shutdown does);
        returns the state to give back to release_busy()."""
        state, self._state = self._state, WorkerStatus.BUSY
        return state

    def release_busy(self, state: Any) -> None:
        self._state = state

    def start_commands(self, rq_id: str) -> list[tuple[Any, ...]]:
        """rq's view of this worker taking a job, as commands for the run's start step."""
        return [("HSET", self.key, "state", WorkerStatus.BUSY.value, "current_job", rq_id)]  # type: ignore[attr-defined]

    def idle_commands(self, state: Any) -> list[tuple[Any, ...]]:
        """rq's view of this worker back at `state` with no current job."""
        return [("HSET", self.key, "state", getattr(state, "value", state)),  # type: ignore[attr-defined]
                ("HDEL", self.key, "current_job")]  # type: ignore[attr-defined]

    def count_commands(self, succeeded: bool) -> list[tuple[Any, ...]]:
        """rq's per-worker job counters, as one command."""
        field = "successful_job_count" if succeeded else "failed_job_count"
        return [("HINCRBY", self.key, field, 1)]  # type: ignore[attr-defined]


#: Whether the worker may run fast-queue runs inline (see InlineDequeue).
INLINE: bool = ACTIVE
