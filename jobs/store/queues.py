"""RQ plumbing: queues and jobs that serialize with JSON, never pickle."""

from __future__ import annotations

from typing import Any

import rq.job
import rq.queue
import rq.registry
import rq.results
import rq.serializers
import rq.worker.base
from rq.job import Job
from rq.queue import Queue
from rq.serializers import JSONSerializer

from jobs.types.spec import DEFAULT_QUEUE, FAST_QUEUE

#: Every queue Crunch uses, in the order workers take from them (cheap jobs first).
QUEUES = (FAST_QUEUE, DEFAULT_QUEUE)
#: The only function RQ ever runs, by dotted name, so the web never imports kernels.
RUNNER = "jobs.worker.runner.execute"
ON_FAILURE = "jobs.worker.runner.on_rq_failure"


_resolve_serializer = rq.serializers.resolve_serializer


def _resolve_json_fast(serializer: Any = None) -> Any:
    """rq.serializers.resolve_serializer, answering JSONSerializer without its isinstance check against a
    runtime-checkable Protocol (~60 us): rq resolves the serializer of every Job, Queue and registry it
    builds, about nine per job, which was 8 % of a worker's CPU. Any other serializer takes rq's own path."""
    if serializer is JSONSerializer:
        return JSONSerializer
    return _resolve_serializer(serializer)


# rq imports the function by name into each module that builds jobs, queues or registries.
for _module in (rq.job, rq.queue, rq.registry, rq.results, rq.worker.base):
    _module.resolve_serializer = _resolve_json_fast  # type: ignore[attr-defined]


class JsonJob(Job):
    """RQ job whose args, meta and result are JSON."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("serializer", JSONSerializer)
        super().__init__(*args, **kwargs)

    @classmethod
    def fetch(cls, id: str, connection: Any = None, serializer: Any = None) -> Job:  # noqa: A002
        return super().fetch(id, connection=connection, serializer=serializer or JSONSerializer)


class JsonQueue(Queue):
    """RQ queue that Flask-RQ2 can build (it has no serializer option of its own)."""

    job_class = JsonJob

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("serializer", JSONSerializer)
        kwargs["job_class"] = JsonJob
        super().__init__(*args, **kwargs)
