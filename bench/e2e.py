"""Section 2: the real service end to end (valkey + `worker.py` + gunicorn), next to its references."""

from __future__ import annotations

import http.client
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import gmpy2
import numpy as np
import orjson
import requests
from redis import Redis

from bench import plain_celery, plain_rq
from bench.common import (
    BenchError,
    CpuMeter,
    Row,
    RssSampler,
    calls_since,
    closed_loop,
    median,
    note,
    pct,
    print_header,
    print_row,
    redis_calls,
    timed,
)
from infra.embedded_redis import EmbeddedRedis
from infra.processes import Web, Workers
from jobs.store.keys import REQUEST_CACHE_PREFIX
from jobs.types.registry import JOB_TYPES

SECTION = "e2e"
#: Names for `python -m bench --only NAME`.
SECTIONS = ("fibonacci", "primes", "sort", "throughput", "cache", "longpoll")
TERMINAL = {"finished", "failed", "canceled"}
JSON = {"Content-Type": "application/json"}
WAIT = {"Content-Type": "application/json", "Prefer": "wait=30"}

CLIENTS = 16
WORKERS = 2
THROUGHPUT_JOBS = 2000
PLAIN_FORK_JOBS = 500
CACHE_REQUESTS = 3000
LONGPOLL_JOBS = 100
FIB_E2E_N = 10_000_000
FIB_E2E_REPS = 3


class Service:
    """valkey-server, `worker.py --workers 2` and gunicorn (2 processes, gthread), all in a temp dir."""

    def __init__(self, tmp: Path, sampler: RssSampler) -> None:
        self.tmp = tmp
        self.log_dir = tmp / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.sampler = sampler
        self.redis = EmbeddedRedis(tmp / "redis")
        self.workers: Workers | None = None
        self.web: Web | None = None

    def start(self) -> Service:
        self.redis.start()
        self.sampler.track("redis", self.redis.proc.pid)  # type: ignore[union-attr]
        self.conn = Redis.from_url(self.redis.url)
        # Assigned before start(), so stop() reaches them even when start() raises.
        self.workers = Workers(self.redis.url, self.log_dir, count=WORKERS)
        self.workers.start()
        self.sampler.track("workers", self.workers.proc.pid)  # type: ignore[union-attr]
        self.web = Web(self.redis.url, self.log_dir)
        try:
            self.web.start()
        except requests.RequestException:
            # Web.start() gives up on a slow /healthz (read timeout 1 s) on a busy machine; wait on.
            self._wait_healthy(self.web)
        self.sampler.track("web", self.web.proc.pid)  # type: ignore[union-attr]
        self.base = self.web.url
        deadline = time.monotonic() + 30
        while True:
            found = requests.get(self.base + "/api/v1/workers", timeout=5).json()
            if len(found) >= WORKERS:
                return self
            if time.monotonic() > deadline or not self.workers.alive:
                raise BenchError(f"workers did not register:\n{self.workers.tail()}")
            time.sleep(0.1)

    @staticmethod
    def _wait_healthy(web: Web, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if requests.get(web.url + "/healthz", timeout=5).ok:
                    return
            except requests.RequestException:
                pass
            if not web.alive:
                raise BenchError(f"gunicorn exited:\n{web.tail()}")
            time.sleep(0.1)
        raise BenchError(f"gunicorn did not come up:\n{web.tail()}")

    def stop(self) -> None:
        """Graceful stop of everything, then SIGKILL to each process group that is still there."""
        for proc in (self.web, self.workers):
            if proc is not None:
                try:
                    proc.stop(timeout=20)
                finally:
                    proc.kill()
        self.redis.stop()
        self.redis.kill()

    def pids(self) -> dict[str, int]:
        """Process-tree roots for CPU accounting; 'client' is this process (the HTTP clients' threads)."""
        return {"web": self.web.proc.pid, "workers": self.workers.proc.pid,  # type: ignore[union-attr]
                "redis": self.redis.proc.pid, "client": os.getpid()}  # type: ignore[union-attr]

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} log (tail) ---\n{p.tail(30)}" for p in (self.web, self.workers) if p)


# -- clients -------------------------------------------------------------------------

def flush_request_cache(conn: Redis) -> int:
    """Forget every canonical-request -> job mapping, so the next identical request runs cold."""
    keys = list(conn.scan_iter(match=REQUEST_CACHE_PREFIX + "*", count=1000))
    return conn.delete(*keys) if keys else 0


class Waited:
    """Counts submissions that had to fall back to polling (no free wait slot, or wait ran out)."""

    def __init__(self) -> None:
        self.fallbacks = 0


class LeanResponse:
    """The part of requests.Response the benchmarks read."""

    def __init__(self, status: int, content: bytes) -> None:
        self.status_code = status
        self.content = content
        self.ok = status < 400

    @property
    def text(self) -> str:
        return self.content.decode(errors="replace")

    def json(self) -> Any:
        return orjson.loads(self.content)


class LeanSession:
    """A keep-alive HTTP/1.1 client on http.client, for the throughput loops: per call it costs the
    load generator a third of the CPU requests does (URL parsing, settings merge and a PreparedRequest
    every time), and on a 2-CPU machine the load generator shares the cores with the service it measures."""

    def __init__(self, base: str) -> None:
        parts = urlsplit(base)
        self.base = base
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)

    def request(self, method: str, url: str, data: bytes | None = None,
                headers: dict[str, str] | None = None) -> LeanResponse:
        path = url[len(self.base):] if url.startswith(self.base) else url
        for attempt in (0, 1):
            try:
                self.conn.request(method, path, body=data, headers=headers or {})
                r = self.conn.getresponse()
                return LeanResponse(r.status, r.read())
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # The server closed an idle kept-alive connection: reconnect once.
                self.conn.close()
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def post(self, url: str, data: bytes | None = None, headers: dict[str, str] | None = None,
             timeout: float | None = None) -> LeanResponse:
        return self.request("POST", url, data, headers)

    def get(self, url: str, timeout: float | None = None) -> LeanResponse:
        return self.request("GET", url)


#: Either HTTP client: the benchmarks use only post(), get(), and the response's status, body and json().
Session = requests.Session | LeanSession


def submit_wait(s: Session, base: str, path: str, data: bytes, stats: Waited | None = None) -> dict[str, Any]:
    """POST with `Prefer: wait=30`; if that answers 202, long-poll the job until it is terminal."""
    r = s.post(base + path, data=data, headers=WAIT, timeout=60)
    if r.status_code not in (200, 202):
        raise BenchError(f"POST {path} answered {r.status_code}: {r.text[:300]}")
    job = r.json()
    while job["status"] not in TERMINAL:
        if stats is not None:
            stats.fallbacks += 1
        t0 = time.monotonic()
        r = s.get(f"{base}/api/v1/jobs/{job['id']}?wait=30", timeout=60)
        if r.status_code != 200:
            raise BenchError(f"GET job {job['id']} answered {r.status_code}: {r.text[:300]}")
        job = r.json()
        if job["status"] not in TERMINAL and time.monotonic() - t0 < 0.01:
            time.sleep(0.005)  # the server had no wait slot free: do not spin
    if job["status"] != "finished":
        raise BenchError(f"job {job['id']} ({path}) ended {job['status']}: {job.get('error')}")
    return job


def hammer(base: str, count: int, threads: int, fn: Callable[[Any, int], None], lean: bool = True
           ) -> tuple[float, list[float]]:
    """Run fn(session, i) for i in range(count) from `threads` clients, each on its own kept-alive
    connection (LeanSession, or requests.Session when not lean); (wall s, latencies ms)."""

    def make_call() -> Callable[[int], None]:
        s: Session = LeanSession(base) if lean else requests.Session()
        s.get(base + "/healthz", timeout=10)
        return lambda i: fn(s, i)

    return closed_loop(count, threads, make_call, "HTTP")


# -- 2a. one big Fibonacci ------------------------------------------------------------

def fibonacci_e2e(svc: Service) -> list[Row]:
    n = FIB_E2E_N
    body = orjson.dumps({"n": n})
    s = requests.Session()
    expected = len(gmpy2.fib(n).digits(10))

    def once() -> tuple[float, float, float]:
        flush_request_cache(svc.conn)
        t0 = time.perf_counter()
        r = s.post(svc.base + "/api/v1/fibonacci", data=body, headers=WAIT, timeout=60)
        t1 = time.perf_counter()
        job = r.json()
        if r.status_code != 200 or job["status"] != "finished" or job["cached"]:
            raise BenchError(f"F({n}): expected a fresh finished job, got {r.status_code} {r.text[:300]}")
        rr = s.get(svc.base + job["result_url"], timeout=60)
        value = orjson.loads(rr.content)
        t2 = time.perf_counter()
        if value["digits"] != expected or len(value["value"]) != expected:
            raise BenchError(f"F({n}) result has {value['digits']} digits, expected {expected}")
        return t2 - t0, t1 - t0, t2 - t1

    once()  # warm-up: imports in the web process, first fork of a horse
    ours, posts, gets, refs = [], [], [], []
    for _ in range(FIB_E2E_REPS):
        total, post, get = once()
        ours.append(total)
        posts.append(post)
        gets.append(get)
        refs.append(timed(lambda: gmpy2.fib(n).digits(10))[0])
    row = Row(SECTION, "F(10^7): POST wait=30 + GET result_url", median(ours), median(refs), "s",
              "gmpy2.fib(n).digits(10) alone",
              f"median of {FIB_E2E_REPS}, cold (request cache flushed before each); "
              f"POST {median(posts) * 1000:.0f} ms + GET result {median(gets) * 1000:.0f} ms "
              f"({expected:,} digits, JSON parsed)",
              {"post_s": median(posts), "get_result_s": median(gets), "runs": ours})
    print_row(row)
    return [row]


# -- 2a'. primes and sort, once they are registered ----------------------------------

def _cold_run(svc: Service, path: str, data: bytes, reps: int = 2) -> tuple[float, float, float, Any]:
    """Median (total, POST, GET result) of a cold submit-wait plus fetching the result."""
    s = requests.Session()
    totals, posts, gets = [], [], []
    result: Any = None
    for _ in range(reps + 1):
        flush_request_cache(svc.conn)
        t0 = time.perf_counter()
        job = submit_wait(s, svc.base, path, data)
        t1 = time.perf_counter()
        result = job["result"]
        if result is None:
            result = orjson.loads(s.get(svc.base + job["result_url"], timeout=120).content)
        t2 = time.perf_counter()
        totals.append(t2 - t0)
        posts.append(t1 - t0)
        gets.append(t2 - t1)
    # the first run is the warm-up
    return median(totals[1:]), median(posts[1:]), median(gets[1:]), result


def flush_segments(conn: Redis) -> int:
    """Forget every sieved segment, so a primes job really sieves (cold) instead of reusing."""
    keys = list(conn.scan_iter(match="crunch:primes:*", count=1000))
    return conn.delete(*keys) if keys else 0


def primesieve_t1(end: int) -> tuple[float | None, int | None]:
    """Median wall time of the primesieve CLI on one thread, and its count."""
    exe = shutil.which("primesieve")
    if not exe:
        return None, None
    runs, out = [], ""
    for _ in range(3):
        t, out = timed(lambda: subprocess.run([exe, str(end), "-t1", "--count", "--quiet"], capture_output=True,
                                              text=True, check=True).stdout)
        runs.append(t)
    return median(runs), int(out.split()[-1])


def primes_e2e(svc: Service) -> list[Row]:
    end = 10**9
    body = orjson.dumps({"start": 0, "end": end, "output": "count"})
    s = requests.Session()
    ref, ref_count = primesieve_t1(end)
    ref_name = ("`primesieve 1000000000 -t1 --count` CLI wall time" if ref is not None
                else "primesieve CLI not installed (apt-get install primesieve)")
    rows = []
    for label, flush_segs in (("cold: every segment sieved", True), ("warm: segment counts reused", False)):
        walls, execs, job = [], [], {}
        for _ in range(3):
            flush_request_cache(svc.conn)
            if flush_segs:
                flush_segments(svc.conn)
            t0 = time.perf_counter()
            job = submit_wait(s, svc.base, "/api/v1/primes", body)
            walls.append(time.perf_counter() - t0)
            execs.append(job["duration_ms"] / 1000)
        count = job["result"]["count"]
        if ref_count is not None and count != ref_count:
            raise BenchError(f"primes count {count} but primesieve says {ref_count}")
        row = Row(SECTION, f"primes count [0, 10^9] job execution, {label.split(':')[0]}", median(execs), ref, "s",
                  ref_name, f"{label}; duration_ms of the job, median of 3; POST wait=30 round trip "
                  f"{median(walls) * 1000:.0f} ms; stats {job.get('stats')}; count={count}")
        print_row(row)
        rows.append(row)
    # Listing mode: 50,847,534 primes streamed through /result.
    flush_request_cache(svc.conn)
    flush_segments(svc.conn)
    t0 = time.perf_counter()
    job = submit_wait(s, svc.base, "/api/v1/primes", orjson.dumps({"start": 0, "end": end}))
    t1 = time.perf_counter()
    nbytes = commas = 0
    with s.get(svc.base + job["result_url"], stream=True, timeout=600) as r:
        total = int(r.headers["X-Total-Count"])
        for chunk in r.iter_content(1 << 20):
            nbytes += len(chunk)
            commas += chunk.count(b",")
    t2 = time.perf_counter()
    if total != 50_847_534 or commas + 1 != total:
        raise BenchError(f"listing returned {total} items ({commas + 1} in the body)")
    mem = svc.conn.info("memory")
    row = Row(SECTION, "primes list [0, 10^9]: job + stream /result", t2 - t0, ref, "s", ref_name,
              f"50,847,534 primes, {nbytes / 2**20:.0f} MiB of JSON; job {job['duration_ms'] / 1000:.2f} s "
              f"(POST wait {t1 - t0:.2f} s), stream {t2 - t1:.2f} s; Redis used_memory_peak "
              f"{mem['used_memory_peak'] / 2**20:.0f} MiB")
    print_row(row)
    rows.append(row)
    svc.conn.delete(*[k for k in svc.conn.scan_iter(match=f"crunch:job:{job['id']}*")])
    return rows


def sort_e2e(svc: Service) -> list[Row]:
    size = 1_000_000
    arr = np.random.default_rng(7).integers(-(2**62), 2**62, size=size, dtype=np.int64)
    data = orjson.dumps({"numbers": arr}, option=orjson.OPT_SERIALIZE_NUMPY)
    total, post, get, result = _cold_run(svc, "/api/v1/sort", data)

    def in_process() -> bytes:
        numbers = np.array(orjson.loads(data)["numbers"], dtype=np.int64)
        return orjson.dumps(np.sort(numbers), option=orjson.OPT_SERIALIZE_NUMPY)

    expected = np.sort(arr)
    refs = [timed(in_process)[0] for _ in range(3)]
    bare = median([timed(lambda: np.sort(arr))[0] for _ in range(3)])
    if len(result) != size or result[:3] != expected[:3].tolist() or result[-1] != int(expected[-1]):
        raise BenchError(f"sort returned {len(result)} numbers, or in the wrong order")
    row = Row(SECTION, "sort 10^6 int64 (JSON): POST wait + GET result", total, median(refs), "s",
              "in-process JSON in -> JSON out: orjson.loads + numpy.sort + orjson.dumps",
              f"median of 2, cold; POST {post * 1000:.0f} ms + GET result {get * 1000:.0f} ms; "
              f"body {len(data) / 2**20:.1f} MiB; numpy.sort alone {bare * 1000:.1f} ms")
    print_row(row)
    return [row]


# -- 2b. trivial-job throughput next to plain RQ -------------------------------------

def throughput(svc: Service) -> list[Row]:
    stats = Waited()
    path = "/api/v1/fibonacci"

    def warm(s: Session, i: int) -> None:
        submit_wait(s, svc.base, path, orjson.dumps({"n": 100_000 + i}))

    hammer(svc.base, 64, CLIENTS, warm)

    def one(s: Session, i: int, base_n: int = 10) -> None:
        job = submit_wait(s, svc.base, path, orjson.dumps({"n": base_n + i}), stats)
        if job["cached"] or job["deduplicated"]:
            raise BenchError(f"n={10 + i} was answered from cache/dedupe; the jobs must be distinct")

    svc.sampler.set_phase("throughput: Crunch")
    calls0 = redis_calls(svc.conn)
    cpu = CpuMeter(svc.pids()).start()
    wall, lat = hammer(svc.base, THROUGHPUT_JOBS, CLIENTS, one)
    cpu.stop()
    calls = calls_since(svc.conn, calls0)
    rate = THROUGHPUT_JOBS / wall
    # The same loop with requests as the client, so the client's share of the CPU is visible.
    svc.sampler.set_phase("throughput: Crunch, requests client")
    rcpu = CpuMeter(svc.pids()).start()
    rwall, rlat = hammer(svc.base, THROUGHPUT_JOBS, CLIENTS, lambda s, i: one(s, i, 10 + THROUGHPUT_JOBS),
                         lean=False)
    rcpu.stop()
    redis_pid = svc.redis.proc.pid  # type: ignore[union-attr]
    plain: dict[str, dict[str, Any]] = {}
    for label, kw in (("clients", {"fork": False, "clients": CLIENTS, "n_jobs": THROUGHPUT_JOBS}),
                      ("burst", {"fork": False, "n_jobs": THROUGHPUT_JOBS}),
                      ("fork burst", {"fork": True, "n_jobs": PLAIN_FORK_JOBS})):
        svc.sampler.set_phase(f"throughput: plain RQ {label}")
        try:
            plain[label] = plain_rq.measure(svc.redis.url, svc.log_dir, procs=WORKERS, sampler=svc.sampler,
                                            redis_pid=redis_pid, **kw)
        except BenchError as exc:
            note(f"plain RQ ({label}) not measured: {exc}")
    celery: dict[str, Any] | None = None
    svc.sampler.set_phase("throughput: Celery")
    try:
        celery = plain_celery.measure(svc.redis.url, svc.log_dir, THROUGHPUT_JOBS, procs=WORKERS, clients=CLIENTS,
                                      sampler=svc.sampler, redis_pid=redis_pid)
    except BenchError as exc:
        note(f"Celery not measured: {exc}")
    case = f"trivial fib jobs/s, {CLIENTS} HTTP clients waiting"
    rows = [Row(SECTION, case, rate, None, "jobs/s", "",
                f"Crunch: {THROUGHPUT_JOBS} distinct jobs (n=10..{THROUGHPUT_JOBS + 9}), each client POSTs with "
                f"Prefer: wait=30 on its own kept-alive http.client connection and holds until its 200; all done "
                f"in {wall:.2f} s; {stats.fallbacks} fell back to polling",
                {"wall_s": wall, "fallback_polls": stats.fallbacks, "cpu_s": cpu.used, "redis_calls": calls,
                 "requests_client": {"rate": THROUGHPUT_JOBS / rwall, "p50_ms": pct(rlat, 50),
                                     "p99_ms": pct(rlat, 99), "cpu_s": rcpu.used}})]
    closed = plain.get("clients")
    if closed:
        rows[0].ref, rows[0].ref_name = closed["rate"], (
            f"plain RQ SimpleWorker x{WORKERS}; {CLIENTS} Python threads each enqueue + block on "
            "Job.latest_result (the same closed loop, no HTTP)")
        rows[0].extra["plain_rq_clients"] = closed
    if closed:
        rows.append(Row(SECTION, f"{case}, requests client", THROUGHPUT_JOBS / rwall, closed["rate"], "jobs/s",
                        rows[0].ref_name, f"the same loop with requests.Session clients (n={10 + THROUGHPUT_JOBS}.."
                        f"{2 * THROUGHPUT_JOBS + 9}): p50 {pct(rlat, 50):.1f} ms; {rcpu.per_job_ms(THROUGHPUT_JOBS)}"))
    if "burst" in plain:
        p = plain["burst"]
        rows.append(Row(SECTION, case, rate, p["rate"], "jobs/s",
                        f"plain RQ SimpleWorker x{WORKERS}; {THROUGHPUT_JOBS} jobs enqueued at once from one "
                        "Python thread, timed until all finished", "", {"plain_rq_burst": p}))
    if "fork burst" in plain:
        p = plain["fork burst"]
        rows.append(Row(SECTION, case, rate, p["rate"], "jobs/s",
                        f"plain RQ forking rq.Worker x{WORKERS}; {PLAIN_FORK_JOBS} jobs enqueued at once "
                        "(Crunch runs fast-queue jobs inline, without a fork)", "", {"plain_rq_fork": p}))
    ref_name = "plain RQ, same closed loop: enqueue -> result in the client's hand" if closed else ""
    burst = plain.get("burst")
    burst_note = (f"(plain RQ burst, enqueued_at->ended_at, mostly queue wait: p50 {burst['p50_ms']:.0f} ms, "
                  f"p99 {burst['p99_ms']:.0f} ms)") if burst else ""
    rows += [
        Row(SECTION, "  submit -> 200 with result, p50", pct(lat, 50), closed and closed["p50_ms"], "ms",
            ref_name, burst_note),
        Row(SECTION, "  submit -> 200 with result, p99", pct(lat, 99), closed and closed["p99_ms"], "ms",
            ref_name),
        Row(SECTION, "  CPU per job, all processes", sum(cpu.used.values()) / THROUGHPUT_JOBS * 1000,
            closed and sum(closed["cpu_s"].values()) / closed["jobs"] * 1000, "ms",
            "plain RQ closed loop (less sensitive to other load than jobs/s)",
            f"Crunch: {cpu.per_job_ms(THROUGHPUT_JOBS)}"
            + (f"; plain RQ: {closed['cpu_per_job']}" if closed else "")),
        Row(SECTION, "  Redis commands per job", sum(calls.values()) / THROUGHPUT_JOBS,
            closed and closed["redis_calls_per_job"], "cmds", "plain RQ closed loop",
            "INFO commandstats, commands inside Lua scripts included; Crunch top: "
            + ", ".join(f"{k} {v / THROUGHPUT_JOBS:.1f}" for k, v in list(calls.items())[:8])
            + ("; plain RQ top: " + ", ".join(f"{k} {v / closed['jobs']:.1f}"
                                              for k, v in list(closed["redis_calls"].items())[:8])
               if closed else "")),
    ]
    if celery:
        ref_name = (f"Celery {celery_version()} solo pool x{WORKERS}, Redis broker + result backend; {CLIENTS} "
                    "Python threads each apply_async + block on AsyncResult.get (same closed loop, no HTTP)")
        rows += [
            Row(SECTION, case, rate, celery["rate"], "jobs/s", ref_name, "", {"celery": celery}),
            Row(SECTION, "  submit -> 200 with result, p50", pct(lat, 50), celery["p50_ms"], "ms", ref_name),
            Row(SECTION, "  submit -> 200 with result, p99", pct(lat, 99), celery["p99_ms"], "ms", ref_name),
            Row(SECTION, "  CPU per job, all processes", sum(cpu.used.values()) / THROUGHPUT_JOBS * 1000,
                sum(celery["cpu_s"].values()) / celery["jobs"] * 1000, "ms", ref_name,
                f"Celery: {celery['cpu_per_job']}"),
            Row(SECTION, "  Redis commands per job", sum(calls.values()) / THROUGHPUT_JOBS,
                celery["redis_calls_per_job"], "cmds", ref_name,
                "Celery top: " + ", ".join(f"{k} {v / celery['jobs']:.1f}"
                                           for k, v in list(celery["redis_calls"].items())[:8])),
        ]
    for r in rows:
        print_row(r)
    return rows


def celery_version() -> str:
    import celery

    return celery.__version__


# -- 2c. cache hits -------------------------------------------------------------------

def cache_hits(svc: Service) -> list[Row]:
    body = orjson.dumps({"n": 1000})
    submit_wait(requests.Session(), svc.base, "/api/v1/fibonacci", body)

    def hit(s: Session, i: int) -> None:
        r = s.post(svc.base + "/api/v1/fibonacci", data=body, headers=JSON, timeout=30)
        if r.status_code != 200 or b'"cached":true' not in r.content:
            raise BenchError(f"expected a 200 cached answer, got {r.status_code}: {r.text[:200]}")

    def health(s: Session, i: int) -> None:
        r = s.get(svc.base + "/healthz", timeout=30)
        if r.status_code != 200:
            raise BenchError(f"/healthz answered {r.status_code}")

    hammer(svc.base, 200, CLIENTS, hit)  # warm-up
    svc.sampler.set_phase("cache hits")
    wall, lat = hammer(svc.base, CACHE_REQUESTS, CLIENTS, hit)
    hwall, hlat = hammer(svc.base, CACHE_REQUESTS, CLIENTS, health)
    ref_name = f"GET /healthz on the same gunicorn, {CLIENTS} clients (the HTTP floor)"
    rows = [
        Row(SECTION, f"cache hit (POST identical F(1000)), {CLIENTS} clients", CACHE_REQUESTS / wall,
            CACHE_REQUESTS / hwall, "req/s", ref_name, f"{CACHE_REQUESTS} requests, result inlined (209 digits)"),
        Row(SECTION, "  cache hit latency p50", pct(lat, 50), pct(hlat, 50), "ms", ref_name),
        Row(SECTION, "  cache hit latency p99", pct(lat, 99), pct(hlat, 99), "ms", ref_name),
    ]
    for r in rows:
        print_row(r)
    return rows


# -- 2d. long-poll wake-up latency ---------------------------------------------------

def longpoll(svc: Service) -> list[Row]:
    """Submit a job that takes ~30 ms in a forked horse, long-poll it at once, time ended_at -> response."""
    s = requests.Session()
    lat: list[float] = []
    late = 0
    for i in range(LONGPOLL_JOBS):
        r = s.post(svc.base + "/api/v1/fibonacci", data=orjson.dumps({"n": 1_000_000 + i}), headers=JSON,
                   timeout=30)
        if r.status_code != 202:
            raise BenchError(f"expected 202 for a new job, got {r.status_code}: {r.text[:200]}")
        job_id = r.json()["id"]
        sent = time.time()
        r = s.get(f"{svc.base}/api/v1/jobs/{job_id}?wait=30", timeout=60)
        received = time.time()
        job = r.json()
        if job["status"] != "finished":
            raise BenchError(f"long-poll answered with status {job['status']}")
        # The resource's ended_at is rounded to ms; the job hash holds the same instant unrounded.
        ended = float(svc.conn.hget(f"crunch:job:{job_id}", "ended_at"))
        if ended < sent:
            late += 1  # finished before the poll was even sent: not a wake-up
            continue
        lat.append((received - ended) * 1000)
    # Reference: one minimal HTTP round trip from the same client.
    rtt = []
    for _ in range(200):
        t, _r = timed(lambda: s.get(svc.base + "/healthz", timeout=10))
        rtt.append(t * 1000)
    ref_name = "one GET /healthz round trip, 1 client (sequential)"
    extra = f"{len(lat)} jobs (n=10^6+i, forked horse); {late} skipped: done before the poll was sent"
    rows = [
        Row(SECTION, "long-poll: job ended_at -> client has it, p50", pct(lat, 50), pct(rtt, 50), "ms",
            ref_name, extra),
        Row(SECTION, "long-poll: job ended_at -> client has it, p99", pct(lat, 99), pct(rtt, 99), "ms", ref_name),
    ]
    for r in rows:
        print_row(r)
    return rows


# -- driver ---------------------------------------------------------------------------

def run(tmp: Path, sampler: RssSampler, failures: list[str], only: set[str] | None = None) -> list[Row]:
    """Start the service once and run the sections named in `only` (all by default)."""
    only = set(SECTIONS) if only is None else only
    rows: list[Row] = []
    svc = Service(tmp, sampler)
    try:
        sampler.set_phase("startup")
        t, _ = timed(svc.start)
        print()
        print(f"== End to end: valkey {svc.redis.url}, worker.py --workers {WORKERS}, gunicorn {svc.base} "
              f"(2 processes, gthread, {os.environ.get('WEB_THREADS', '256')} threads) - started in {t:.1f} s")

        def section(name: str, fn: Callable[[Service], list[Row]], key: str) -> None:
            if key not in only:
                return
            sampler.set_phase(name)
            try:
                rows.extend(fn(svc))
            except Exception as exc:  # noqa: BLE001 - report and go on with the next section
                failures.append(f"{name}: {type(exc).__name__}: {exc}")
                note(f"FAILED {name}: {type(exc).__name__}: {exc}")

        def header(keys: set[str], title: str, reference: str) -> None:
            if keys & only:
                print_header(title, reference)

        header({"fibonacci", "primes", "sort"},
               "2a. One big job end to end: wall time from POST to having the full result, lower is better",
               "the kernel's library call alone, in this process, same run")
        section("e2e fibonacci", fibonacci_e2e, "fibonacci")
        for job_type, fn in (("primes", primes_e2e), ("sort", sort_e2e)):
            if job_type in JOB_TYPES:
                section(f"e2e {job_type}", fn, job_type)
            else:
                note(f"{job_type}: not in jobs.types.registry.JOB_TYPES yet; end-to-end row skipped")

        header({"throughput"},
               f"2b. Throughput of trivial jobs, {WORKERS} worker processes each side; jobs/s higher is better; "
               "latency, CPU and Redis commands per job lower is better",
               f"plain RQ on the same Redis, {WORKERS} worker processes, the same trivial work "
               "(bench.trivial.fib), enqueued from Python without HTTP: (1) rq.SimpleWorker with "
               f"{CLIENTS} client threads that each enqueue and block on the result, (2) rq.SimpleWorker "
               "with all jobs enqueued at once, (3) forking rq.Worker with all jobs enqueued at once; and "
               f"Celery with the Redis broker, {WORKERS} solo-pool worker processes, {CLIENTS} client threads "
               "that each apply_async and block on the result")
        section("throughput", throughput, "throughput")

        header({"cache"},
               "2c. Cache hits: identical finished request POSTed again (200, cached); req/s higher is better",
               "GET /healthz on the same server with the same clients: the cost of HTTP + Flask alone")
        section("cache hits", cache_hits, "cache")

        header({"longpoll"},
               "2d. Long-poll wake-up: job's ended_at (job hash, same clock) -> waiting client's GET ?wait=30 "
               "returns; lower is better",
               "one minimal HTTP round trip (GET /healthz) from the same client")
        section("long-poll", longpoll, "longpoll")
    except Exception:
        print(svc.logs())
        raise
    finally:
        sampler.set_phase("teardown")
        svc.stop()
        keep_logs(svc.log_dir)
    return rows


def keep_logs(log_dir: Path) -> None:
    """Copy the service logs of this run to var/bench/logs (the temp dir goes away)."""
    dest = Path(__file__).resolve().parent.parent / "var" / "bench" / "logs"
    shutil.rmtree(dest, ignore_errors=True)
    try:
        shutil.copytree(log_dir, dest)
    except OSError as exc:
        note(f"could not keep the logs: {exc}")
