"""RQ plumbing: queues and jobs that serialize with JSON, never pickle."""

from __future__ import annotations

from typing import Any

from rq.job import Job
from rq.queue import Queue
from rq.serializers import JSONSerializer

import jobs.compat.rq  # noqa: F401 - rq's serializer lookup, made cheap for JSON (see there)
from jobs.store.keys import QUEUES

__all__ = ["ON_FAILURE", "QUEUES", "RUNNER", "JsonJob", "JsonQueue"]
#: The only function RQ ever runs, by dotted name, so the web never imports kernels.
RUNNER = "jobs.worker.runner.execute"
ON_FAILURE = "jobs.worker.runner.on_rq_failure"


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
