"""Section 1: kernels in-process (no Redis, no HTTP) against the library call they wrap."""

from __future__ import annotations

import importlib
import traceback

import gmpy2

from bench.common import Row, median, note, print_header, print_row, row_from_dict, timed
from jobs.context import LocalContext
from jobs.kernels import fibonacci as fib_kernel
from jobs.types.registry import JOB_TYPES

SECTION = "kernels"
#: (n, repetitions); the median is reported.
FIB_CASES = ((1_000_000, 7), (10_000_000, 3))


def _ours(n: int) -> int:
    ctx = LocalContext()
    fib_kernel.run({"n": n}, ctx)
    return ctx.output.value["digits"]


def _ref(n: int) -> int:
    return len(gmpy2.fib(n).digits(10))


def fibonacci_rows() -> list[Row]:
    rows = []
    for n, reps in FIB_CASES:
        ours, refs = [], []
        _ours(n)  # warm-up: first-touch page faults for the big buffers
        for _ in range(reps):  # interleaved, so drift hits both sides alike
            t, d1 = timed(lambda n=n: _ours(n))
            ours.append(t)
            t, d2 = timed(lambda n=n: _ref(n))
            refs.append(t)
            if d1 != d2:
                raise AssertionError(f"F({n}): kernel gave {d1} digits, gmpy2 {d2}")
        exp = len(str(n)) - 1
        row = Row(SECTION, f"fibonacci F(10^{exp}) kernel, LocalContext", median(ours), median(refs), "s",
                  "gmpy2.fib(n).digits(10)", f"median of {reps}, {d1:,} digits")
        print_row(row)
        rows.append(row)
    return rows


def helper_rows(job_type: str) -> list[Row]:
    """Rows from bench.bench_<type>.run(), if that module exists and the type is registered."""
    try:
        mod = importlib.import_module(f"bench.bench_{job_type}")
    except ImportError as exc:
        note(f"{job_type} bench not available yet ({exc})")
        return []
    if job_type not in JOB_TYPES:
        note(f"{job_type}: bench.bench_{job_type} imports, but {job_type!r} "
             f"is not in jobs.types.registry.JOB_TYPES yet; "
             "skipping its rows")
        return []
    try:
        raw = mod.run()
    except Exception as exc:  # noqa: BLE001 - one broken helper must not sink the whole bench
        note(f"bench.bench_{job_type}.run() failed: {type(exc).__name__}: {exc}")
        traceback.print_exc()
        return []
    rows = []
    for d in raw or []:
        row = d if isinstance(d, Row) else row_from_dict(SECTION, dict(d))
        print_row(row)
        rows.append(row)
    return rows


def run() -> list[Row]:
    print_header("Kernels in-process (no Redis, no HTTP); median wall time, lower is better",
                 "the bare library call for the same input, timed in this process, interleaved with ours")
    rows = fibonacci_rows()
    for job_type in ("primes", "sort"):
        rows += helper_rows(job_type)
    return rows
