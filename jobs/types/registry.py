"""Every job type Crunch offers, by the name used in URLs and records, and how long a run may take."""

from __future__ import annotations

from jobs.types.csv import CsvJob
from jobs.types.fibonacci import FibonacciJob
from jobs.types.primes import PrimesJob
from jobs.types.sort import SortJob
from jobs.types.spec import JobSpec

JOB_TYPES: dict[str, JobSpec] = {spec.name: spec for spec in (PrimesJob(), FibonacciJob(), SortJob(), CsvJob())}


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
