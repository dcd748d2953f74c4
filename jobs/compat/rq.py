"""rq internals Crunch overrides for speed, in one place.

rq resolves the serializer of every Job, Queue and registry it builds (about nine per job) through
rq.serializers.resolve_serializer, whose isinstance check against a runtime-checkable Protocol costs
~60 us: 8 % of a worker's CPU. rq imports that function by name into each module that builds them,
so the override replaces it there.
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
