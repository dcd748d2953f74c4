"""Every job type Crunch offers, by the name used in URLs and records."""

from __future__ import annotations

from jobs.csv import CsvJob
from jobs.fibonacci import FibonacciJob
from jobs.primes import PrimesJob
from jobs.sort import SortJob
from jobs.spec import JobSpec

JOB_TYPES: dict[str, JobSpec] = {spec.name: spec for spec in (PrimesJob(), FibonacciJob(), SortJob(), CsvJob())}
