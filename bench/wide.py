"""Section 4: wide prime counts as jobs split over every worker, against `primesieve` on all threads.

One service of its own (valkey, gunicorn, `worker.py --workers N`) with MAX_PRIMES_END = 2^64 - 1. Each
job is timed by its client, from the POST to the long-poll that sees it finished, so the figure holds
the split, dispatch, every part and the final sum; the reference is Debian's `primesieve` CLI on all
threads (its default), wall time of the process, in the same run. Every count is checked against
primesieve's. Before each timed job the segment store and the request cache are emptied, so the job
sieves every number (a warm rerun would reuse stored segment counts and take milliseconds).

The scaling curve runs the same wide job with 1 and then 2 workers (`worker.py --workers N`); its
reference is `primesieve -t1` for one worker and all threads for two. Each row notes the 1-minute load average seen
when it was measured, and how many cores each side kept busy on average (CPU seconds over wall seconds):
on the shared 2-CPU machine other work takes cores from both sides, so the wall-time ratios and the
curve move with it, and the CPU-second ratio is the steadier figure.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson
import requests
from redis import Redis

from bench.common import BenchError, Row, RssSampler, cpu_seconds, note, print_header, print_row
from bench.e2e import flush_request_cache, flush_segments
from infra.embedded_redis import EmbeddedRedis
from infra.processes import Web, Workers

SECTION = "wide"
TOP = 2**64 - 1
#: The wide job of the scaling curve: 2*10^11 numbers from 0 (about 12 s of one core; the same width below
#: 10^12 takes 3-4x that, which on a loaded machine made the section run 6 minutes).
WIDE = (0, 2 * 10**11)
#: (label, lo, hi): the issue's job rows, each against primesieve on all threads.
JOB_CASES = (
    ("count 1e10 below 1e12", 10**12 - 10**10, 10**12),
    ("count 1e10 below 1e15", 10**15 - 10**10, 10**15),
    ("count 1e9 just below 2^64", TOP - 10**9 + 1, TOP),
)
WORKER_COUNTS = (1, 2)
TARGET = 1.3


def load() -> str:
    return f"load {os.getloadavg()[0]:.1f}"


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def primesieve(lo: int, hi: int, threads: int | None = None) -> tuple[float, int, float]:
    """Wall seconds, count and CPU seconds of one `primesieve LO HI --count` run (all threads unless
    `threads`)."""
    exe = shutil.which("primesieve")
    if exe is None:
        raise BenchError("primesieve CLI not installed (apt-get install primesieve)")
    argv = [exe, str(lo), str(hi), "--count", "--quiet", *([f"-t{threads}"] if threads else [])]
    t0, c0 = time.perf_counter(), children_cpu()
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return time.perf_counter() - t0, int(out.split()[-1]), children_cpu() - c0


class Wide:
    def __init__(self, tmp: Path, sampler: RssSampler) -> None:
        self.log_dir = tmp / "logs-wide"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.sampler = sampler
        self.redis = EmbeddedRedis(tmp / "redis-wide")
        self.env = {"MAX_PRIMES_END": TOP}
        self.workers: Workers | None = None
        self.web: Web | None = None
        self.s = requests.Session()

    def start(self, workers: int) -> None:
        if self.web is None:
            self.redis.start()
            self.conn = Redis.from_url(self.redis.url)
            self.sampler.track("redis", self.redis.proc.pid)  # type: ignore[union-attr]
            self.web = Web(self.redis.url, self.log_dir, WEB_PROCESSES=1, **self.env).start()
            self.sampler.track("web", self.web.proc.pid)  # type: ignore[union-attr]
        self.stop_workers()
        self.workers = Workers(self.redis.url, self.log_dir, count=workers, name=f"workers-wide-{workers}",
                               **self.env).start()
        self.sampler.track("workers", self.workers.proc.pid)  # type: ignore[union-attr]
        deadline = time.monotonic() + 60
        while len(self.s.get(self.web.url + "/api/v1/workers", timeout=10).json()) != workers:
            if time.monotonic() > deadline or not self.workers.alive:
                raise BenchError(f"{workers} workers did not register:\n{self.workers.tail()}")
            time.sleep(0.2)
        # One small split job first (4 parts): every worker has run a part before the timed jobs.
        self.job(10**11, 10**11 + 10**10, flush=False)

    def stop_workers(self) -> None:
        if self.workers is not None:
            try:
                self.workers.stop(timeout=20)
            finally:
                self.workers.kill()
            self.workers = None

    def stop(self) -> None:
        self.stop_workers()
        if self.web is not None:
            try:
                self.web.stop(timeout=20)
            finally:
                self.web.kill()
        self.redis.stop()
        self.redis.kill()

    def job(self, lo: int, hi: int, flush: bool = True) -> tuple[float, dict[str, Any]]:
        """Client wall seconds from POST to finished, and the finished job."""
        assert self.web is not None
        if flush:
            flush_request_cache(self.conn)
            flush_segments(self.conn)
        body = orjson.dumps({"start": lo, "end": hi, "output": "count"})
        t0 = time.perf_counter()
        r = self.s.post(self.web.url + "/api/v1/primes", data=body,
                        headers={"Content-Type": "application/json"}, timeout=60)
        if r.status_code not in (200, 202):
            raise BenchError(f"POST answered {r.status_code}: {r.text[:300]}")
        job = r.json()
        while job["status"] not in ("finished", "failed", "canceled"):
            r = self.s.get(f"{self.web.url}/api/v1/jobs/{job['id']}?wait=30", timeout=60)
            job = r.json()
        wall = time.perf_counter() - t0
        if job["status"] != "finished":
            raise BenchError(f"count [{lo}, {hi}] ended {job['status']}: {job.get('error')}")
        return wall, job

    def row(self, case: str, lo: int, hi: int, threads: int | None, ref_name: str, extra_note: str = "",
            ) -> tuple[Row, dict[str, Any], float]:
        assert self.workers is not None and self.workers.proc is not None
        seen = load()
        cpu0 = cpu_seconds(self.workers.proc.pid)
        wall, job = self.job(lo, hi)
        cpu = cpu_seconds(self.workers.proc.pid) - cpu0
        seen += f" / {load()}"
        ref, ref_count, ref_cpu = primesieve(lo, hi, threads)
        seen += f" / {load()}"
        count = job["result"]["count"]
        if count != ref_count:
            raise BenchError(f"count [{lo}, {hi}]: the job says {count}, primesieve {ref_count}")
        parts = (job.get("stats") or {}).get("parts")
        how = f"{parts} parts" if parts else "ran whole (not split)"
        row = Row(SECTION, case, wall, ref, "s", ref_name,
                  f"{how}; CPU s: workers {cpu:.1f}, primesieve {ref_cpu:.1f} ({cpu / ref_cpu:.2f}x); cores busy on "
                  f"average: workers {cpu / wall:.2f}, primesieve {ref_cpu / ref:.2f}; "
                  f"count {count:,} = primesieve's; "
                  f"{seen} (before the job / after it / after the reference); target {TARGET}x"
                  + (f"; {extra_note}" if extra_note else ""))
        print_row(row)
        return row, job, cpu


def run(tmp: Path, sampler: RssSampler, failures: list[str]) -> list[Row]:
    cpus = os.cpu_count() or 1
    print_header(f"4. Wide prime counts as jobs split over the workers ({cpus} CPUs here); client wall time from "
                 "POST to finished, lower is better",
                 "Debian's `primesieve LO HI --count` CLI, wall time, all threads unless -tN is named, same run")
    w = Wide(tmp, sampler)
    rows: list[Row] = []
    curve: dict[int, tuple[float, float]] = {}
    try:
        for n in sorted(WORKER_COUNTS, reverse=True):  # 2 first: the rows, then the curve's 1
            sampler.set_phase(f"wide: {n} workers")
            w.start(n)
            lo, hi = WIDE
            ref = "all threads" if n == max(WORKER_COUNTS) else f"-t{n}"
            try:
                row, _, cpu = w.row(f"count [0, 2e11], {n} worker{'s' if n > 1 else ''}", lo, hi,
                               None if n == max(WORKER_COUNTS) else n, f"primesieve {lo} {hi} ({ref})")
                rows.append(row)
                curve[n] = (row.ours or 0.0, cpu)
            except Exception as exc:  # noqa: BLE001 - report and go on
                failures.append(f"wide {n} workers: {type(exc).__name__}: {exc}")
                note(f"FAILED wide job on {n} workers: {type(exc).__name__}: {exc}")
            if n != max(WORKER_COUNTS):
                continue
            for label, lo, hi in JOB_CASES:
                try:
                    row, _, _ = w.row(f"{label}, job on {n} workers", lo, hi, None,
                                   f"primesieve {lo} {hi} (all threads)")
                    rows.append(row)
                except Exception as exc:  # noqa: BLE001 - report and go on
                    failures.append(f"wide {label}: {type(exc).__name__}: {exc}")
                    note(f"FAILED {label}: {type(exc).__name__}: {exc}")
    finally:
        w.stop()
    if len(curve) > 1:
        base = curve[min(curve)][0]
        print(f"   scaling curve, the same count of [0, 2e11] (load average now {os.getloadavg()[0]:.1f}): "
              + ", ".join(f"{n} worker{'s' if n > 1 else ''} {t:.1f} s (speed-up {base / t:.2f}x, "
                          f"{c / t:.2f} cores busy)" for n, (t, c) in sorted(curve.items())))
        sys_note = (f"on {cpus} CPUs; each worker is one process on one core, so more workers than cores "
                    "(or a busy machine) add no speed here: more hosts do")
        print(f"   {sys_note}")
    return rows
