"""Section 3: a mixed workload - trivial jobs beside long ones, and two clients sharing the workers.

One service of its own (valkey, `worker.py --workers 2`, gunicorn) with PREEMPT_QUANTUM=2, so a
preemption happens within the bench's time; the overhead of one preemption is reported in ms, which
does not depend on the quantum (the slowdown at another quantum is that overhead divided by it).
Two clients are two source addresses (127.0.0.1 and 127.0.0.2: all of 127/8 is loopback), so no
tokens are needed. Long jobs are prime counts high up, each on its own range of the same width, so
no job reuses another's stored segments and all cost the same. They run whole (FANOUT_MAX_PARTS=1):
this section is about one long job per worker, its preemption and the fast lane beside it; split jobs
(jobs.store.fanout) have their own section, bench.wide. Split, the first long count's parts took both
workers and the second waited, so "every worker runs a long job" was never reached.
"""

from __future__ import annotations

import http.client
import statistics
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import requests

from bench.common import BenchError, Row, RssSampler, note, pct, print_header, print_row
from bench.e2e import LeanSession
from infra.embedded_redis import EmbeddedRedis
from infra.processes import Web, Workers

SECTION = "mixed"
WORKERS = 2
QUANTUM = 2
TRIVIAL_IDLE = 60
#: Width of one long count near 10^12 (about 0.25 s per 10^9 on one core): a few seconds each.
LONG_WIDTH = 16 * 10**9
BACKLOG = 8
BACKLOG_WIDTH = 2 * 10**9
JSON = {"Content-Type": "application/json"}
WAIT = {"Content-Type": "application/json", "Prefer": "wait=30"}


class From(LeanSession):
    """A kept-alive client connection from a given loopback address (one address = one client)."""

    def __init__(self, base: str, source: str) -> None:
        super().__init__(base)
        self.source = source
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=60, source_address=(source, 0))

    def request(self, method: str, url: str, data: bytes | None = None, headers: dict[str, str] | None = None
                ) -> Any:
        try:
            return super().request(method, url, data, headers)
        finally:  # LeanSession reconnects without the source address: put it back
            if self.conn.source_address != (self.source, 0):
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=60,
                                                       source_address=(self.source, 0))


def ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


class Mixed:
    def __init__(self, tmp: Path, sampler: RssSampler) -> None:
        self.tmp = tmp
        self.log_dir = tmp / "logs-mixed"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.sampler = sampler
        self.redis = EmbeddedRedis(tmp / "redis-mixed")
        self.workers: Workers | None = None
        self.web: Web | None = None
        self.base_n = 1000
        self.next_start = 10**12 - 4 * 10**11

    def start(self) -> Mixed:
        self.redis.start()
        self.workers = Workers(self.redis.url, self.log_dir, count=WORKERS, name="workers-mixed",
                               PREEMPT_QUANTUM=QUANTUM, FANOUT_MAX_PARTS=1).start()
        self.web = Web(self.redis.url, self.log_dir, FANOUT_MAX_PARTS=1).start()
        self.a = From(self.web.url, "127.0.0.1")
        self.b = From(self.web.url, "127.0.0.2")
        deadline = time.monotonic() + 60
        while len(requests.get(self.web.url + "/api/v1/workers", timeout=10).json()) < WORKERS:
            if time.monotonic() > deadline:
                raise BenchError(f"workers did not register:\n{self.workers.tail()}")
            time.sleep(0.2)
        return self

    def stop(self) -> None:
        for proc in (self.web, self.workers):
            if proc is not None:
                try:
                    proc.stop(timeout=20)
                finally:
                    proc.kill()
        self.redis.stop()
        self.redis.kill()

    # -- helpers ---------------------------------------------------------------------

    def post(self, s: From, path: str, body: dict[str, Any], headers: dict[str, str] = JSON) -> dict[str, Any]:
        r = s.post(path, orjson.dumps(body), headers)
        if r.status_code not in (200, 202):
            raise BenchError(f"POST {path} answered {r.status_code}: {r.text[:300]}")
        return r.json()

    def get(self, s: From, job_id: str, wait: int = 0) -> dict[str, Any]:
        r = s.get(f"/api/v1/jobs/{job_id}" + (f"?wait={wait}" if wait else ""))
        if r.status_code != 200:
            raise BenchError(f"GET job answered {r.status_code}: {r.text[:300]}")
        return r.json()

    def long(self, s: From, width: int = LONG_WIDTH) -> str:
        start = self.next_start
        self.next_start += width + 10**6
        return self.post(s, "/api/v1/primes", {"start": start, "end": start + width, "output": "count"})["id"]

    def done(self, s: From, ids: list[str], timeout: float = 300) -> list[dict[str, Any]]:
        out = []
        deadline = time.monotonic() + timeout
        for i in ids:
            while (j := self.get(s, i, wait=10))["status"] not in ("finished", "failed", "canceled"):
                if time.monotonic() > deadline:
                    raise BenchError(f"job {i} still {j['status']} after {timeout} s")
            if j["status"] != "finished":
                raise BenchError(f"job {i} ended {j['status']}: {j.get('error')}")
            out.append(j)
        return out

    def running(self, s: From, ids: list[str]) -> bool:
        return all(self.get(s, i)["status"] == "started" for i in ids)

    def trivial(self, s: From) -> float:
        """One F(n) with Prefer: wait=30: POST to its 200, in ms."""
        self.base_n += 1
        t0 = time.perf_counter()
        job = self.post(s, "/api/v1/fibonacci", {"n": self.base_n}, WAIT)
        if job["status"] != "finished":
            raise BenchError(f"trivial job answered {job['status']} (a 202 behind the long jobs)")
        return (time.perf_counter() - t0) * 1000

    # -- the measurements --------------------------------------------------------------

    def latencies(self) -> list[Row]:
        idle = [self.trivial(self.b) for _ in range(TRIVIAL_IDLE)]
        alone = self.done(self.a, [self.long(self.a) for _ in range(WORKERS)])
        base = statistics.mean(j["duration_ms"] for j in alone)
        longs = [self.long(self.a) for _ in range(WORKERS)]
        deadline = time.monotonic() + 60
        while not self.running(self.a, longs):
            if time.monotonic() > deadline:
                raise BenchError("the long jobs did not start")
            time.sleep(0.05)
        busy: list[float] = []
        stop = threading.Event()

        def loop() -> None:
            while not stop.is_set():
                busy.append(self.trivial(self.b))

        t = threading.Thread(target=loop, daemon=True)
        t.start()
        beside = self.done(self.a, longs)
        stop.set()
        t.join()
        slow = statistics.mean(j["duration_ms"] for j in beside)
        self.baseline_ms = base
        ref = "the same trivial jobs with idle workers, same run"
        return [
            Row(SECTION, "trivial F(n) while every worker runs a long job, p50", pct(busy, 50), pct(idle, 50), "ms",
                ref, f"{len(busy)} jobs one after another from a second client, POST Prefer: wait=30 -> 200, "
                     f"beside {WORKERS} long prime counts; none answered 202"),
            Row(SECTION, "  same, p99", pct(busy, 99), pct(idle, 99), "ms", ref),
            Row(SECTION, "long job run time beside that fast-lane stream", slow, base, "ms",
                f"the same long counts ({LONG_WIDTH / 1e9:.0f}e9 wide, near 1e12) with no other work, same run",
                f"the fast lane runs in the worker's main process while its horse sieves: on "
                f"{WORKERS} shared CPUs each trivial job takes its CPU from a long one"),
        ]

    def preemption(self) -> list[Row]:
        longs = [self.long(self.a) for _ in range(WORKERS)]
        deadline = time.monotonic() + 60
        while not self.running(self.a, longs):
            if time.monotonic() > deadline:
                raise BenchError("the long jobs did not start")
            time.sleep(0.05)
        others = [self.long(self.b, BACKLOG_WIDTH) for _ in range(2)]
        ended = self.done(self.a, longs)
        self.done(self.b, others)
        preempted = sum(j.get("preemptions") or 0 for j in ended)
        dur = statistics.mean(j["duration_ms"] for j in ended)
        per = (sum(j["duration_ms"] for j in ended) - self.baseline_ms * len(ended)) / preempted if preempted else None
        return [Row(SECTION, "long job run time with preemptions", dur, self.baseline_ms, "ms",
                    "the same long counts, not preempted, same run",
                    f"PREEMPT_QUANTUM={QUANTUM}: a second client's 2 jobs waited, {preempted} preemption(s) of "
                    f"these {len(ended)} jobs; run time counts every run, so redone work would show; "
                    + (f"about {per:.0f} ms per preemption" if per is not None and per > 0 else
                       "no slower than unpreempted within this run's noise" if per is not None else
                       "no preemption happened"))]

    def fair_share(self) -> list[Row]:
        backlog = [self.long(self.a, BACKLOG_WIDTH) for _ in range(BACKLOG)]
        second = self.long(self.b, BACKLOG_WIDTH)
        b = self.done(self.b, [second])[0]
        a = self.done(self.a, backlog)
        waited = (ts(b["started_at"]) - ts(b["created_at"])) * 1000
        fifo = (max(ts(j["started_at"]) for j in a) - ts(b["created_at"])) * 1000
        return [Row(SECTION, "second client's first job: wait to start", waited, fifo, "ms",
                    f"FIFO: when the last of the first client's {BACKLOG} queued jobs started (FIFO starts the "
                    "second client's job after it), same run",
                    f"{BACKLOG} jobs of the first client queued first, {WORKERS} workers")]


def run(tmp: Path, sampler: RssSampler, failures: list[str]) -> list[Row]:
    print_header("3. Mixed workload: trivial jobs beside long ones, two clients sharing the workers; lower is better",
                 "the same figure without the contention, or under FIFO, in this run")
    m = Mixed(tmp, sampler)
    rows: list[Row] = []
    try:
        sampler.set_phase("mixed: startup")
        m.start()
        for name, fn in (("latency", m.latencies), ("preemption", m.preemption), ("fair share", m.fair_share)):
            sampler.set_phase(f"mixed: {name}")
            try:
                got = fn()
            except Exception as exc:  # noqa: BLE001 - report and go on
                failures.append(f"mixed {name}: {type(exc).__name__}: {exc}")
                note(f"FAILED mixed {name}: {type(exc).__name__}: {exc}")
                continue
            for r in got:
                print_row(r)
            rows += got
    finally:
        m.stop()
    return rows
