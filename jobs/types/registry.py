"""Every job type Crunch offers, by the name used in URLs and records, and how long a run may take.

The API, the pages, the OpenAPI document, the runner and the settings all look types up here, so
registering a spec is all it takes to serve a new type (README: "Adding a job type"). Built-in types
are registered at import; `register` and `registered` add one at run time (a test's extra type).
An app built by create_app serves the types registered when it was built (its routes take their
names from here then), and a worker runs any type registered in its process.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

from jobs.context import CONTEXT_EXTRAS
from jobs.types.csv import CsvJob
from jobs.types.fibonacci import FibonacciJob
from jobs.types.primes import PrimesJob
from jobs.types.sort import SortJob
from jobs.types.spec import JobSpec

#: A type's name is a path segment of /api/v1/<name> and /<name>, so it may not be one of the
#: pages' or the API's own segments.
NAME_RE = re.compile(r"[a-z][a-z0-9_-]{0,31}")
RESERVED = frozenset(("jobs", "queues", "workers", "batches", "submit", "login", "logout", "docs", "static",
                      "rq", "healthz", "readyz", "metrics", "openapi.json", "operations", "api"))
DOWNLOAD_FORMATS = frozenset(("json", "csv", "txt"))

JOB_TYPES: dict[str, JobSpec] = {}


def register(spec: JobSpec) -> JobSpec:
    """Add a type; ValueError when its spec is incomplete or its name is taken."""
    name = getattr(spec, "name", "")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or name in RESERVED:
        raise ValueError(f"job type name {name!r} must match {NAME_RE.pattern} and not be one of "
                         f"{', '.join(sorted(RESERVED))}")
    if name in JOB_TYPES:
        raise ValueError(f"job type {name!r} is already registered")
    module, sep, func = getattr(spec, "kernel", "").partition(":")
    if not (module and sep and func):
        raise ValueError(f"job type {name!r}: kernel must be a dotted path 'module:function'")
    if not spec.needs <= CONTEXT_EXTRAS.keys():
        raise ValueError(f"job type {name!r} needs {sorted(spec.needs - CONTEXT_EXTRAS.keys())}, which no "
                         f"context provides (known: {', '.join(sorted(CONTEXT_EXTRAS))})")
    if not spec.accepts_json and not spec.accepts_form:
        raise ValueError(f"job type {name!r} accepts neither JSON nor multipart bodies")
    if not set(spec.downloads) <= DOWNLOAD_FORMATS:
        raise ValueError(f"job type {name!r}: downloads must be among {', '.join(sorted(DOWNLOAD_FORMATS))}")
    JOB_TYPES[name] = spec
    return spec


def unregister(name: str) -> None:
    JOB_TYPES.pop(name, None)


@contextmanager
def registered(spec: JobSpec) -> Iterator[JobSpec]:
    """The type registered for the duration of a with-block (tests)."""
    register(spec)
    try:
        yield spec
    finally:
        unregister(spec.name)


def summary_of(job_type: str, params: dict) -> str:  # type: ignore[type-arg]
    """The one line a job's spec writes for it (the resource's `summary`, the pages' titles); a record
    of a type this process does not know, or with params its spec cannot read, still gets a line."""
    spec = JOB_TYPES.get(job_type)
    if spec is not None:
        try:
            return spec.summary(params)
        except (KeyError, TypeError, ValueError):
            pass
    return f"{job_type} job"


for _spec in (PrimesJob(), FibonacciJob(), SortJob(), CsvJob()):
    register(_spec)


def parse_timeouts(text: str) -> dict[str, int]:
    """JOB_TIMEOUTS ("primes=7200,sort=300"): per-type run limits in seconds over the types' defaults."""
    out: dict[str, int] = {}
    for entry in filter(None, (e.strip() for e in text.split(","))):
        name, sep, seconds = entry.partition("=")
        name = name.strip()
        if not sep or name not in JOB_TYPES or not seconds.strip().isdigit() or int(seconds) < 1:
            raise ValueError(f"JOB_TIMEOUTS entry {entry!r} is not TYPE=SECONDS with TYPE one of "
                             f"{', '.join(JOB_TYPES)} and SECONDS >= 1")
        out[name] = int(seconds)
    return out

