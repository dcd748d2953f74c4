"""RQ plumbing: queues and jobs that serialize with JSON, never pickle."""

from __future__ import annotations

from typing import Any

from rq.job import Job
from rq.queue import Queue
from rq.serializers import JSONSerializer

from jobs.spec import DEFAULT_QUEUE, FAST_QUEUE

#: Every queue Crunch uses, in the order workers take from them (cheap jobs first).
QUEUES = (FAST_QUEUE, DEFAULT_QUEUE)
#: The only function RQ ever runs, by dotted name, so the web never imports kernels.
RUNNER = "jobs.runner.execute"
ON_FAILURE = "jobs.runner.on_rq_failure"


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
