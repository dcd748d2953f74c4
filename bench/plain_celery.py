"""Celery, the second reference for job throughput: a solo-pool worker process and the driver that feeds it.

`python -m bench.plain_celery --url URL --queue Q` runs one Celery worker with `--pool=solo`
(one process, tasks run inline) on the Redis broker, with Celery's defaults otherwise, as a
plain Celery user would. The result backend is the same Redis, so a client can block on
AsyncResult.get() (a pub/sub wake-up) the way Crunch's HTTP clients block on `Prefer: wait`.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from celery import Celery
from redis import Redis

from bench.common import BenchError, CpuMeter, calls_since, closed_loop, redis_calls, reference_pids, reference_summary
from bench.trivial import fib as _fib
from infra.processes import Proc, base_env

#: The broker/backend URL, read from the environment so the worker process builds the same app.
URL_ENV = "BENCH_CELERY_URL"

app = Celery("bench_celery", broker=os.environ.get(URL_ENV, "redis://127.0.0.1:6379/0"),
             backend=os.environ.get(URL_ENV, "redis://127.0.0.1:6379/0"))
app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"],
                broker_connection_retry_on_startup=True, worker_hijack_root_logger=False)


@app.task(name="bench.fib")
def fib(n: int) -> dict[str, object]:
    """The same trivial work as Crunch's small Fibonacci job (bench.trivial.fib)."""
    return _fib(n)


def worker_main(argv: list[str]) -> int:
    """One solo-pool Celery worker: `--url URL --queue Q --name N`."""
    args = dict(zip(argv[::2], argv[1::2], strict=False))
    app.conf.broker_url = app.conf.result_backend = args["--url"]
    app.worker_main(["worker", "--pool=solo", "--loglevel=WARNING", "-Q", args["--queue"],
                     "-n", args["--name"]])
    return 0


def _client(redis_url: str, qname: str) -> Celery:
    """The sending side's own app, one per section: a full `make bench` runs two sections on two Redis
    servers, and an app keeps its broker connections and result backend from its first use (reusing the
    module's app, the batches section sent to the throughput section's stopped server). Tasks go by name
    (send_task, signature), as a client that does not import the task's code sends them."""
    client = Celery("bench_celery_client", broker=redis_url, backend=redis_url)
    client.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"],
                       broker_connection_retry_on_startup=True, task_default_queue=qname)
    return client


def measure(redis_url: str, log_dir: Path, n_jobs: int, procs: int = 2, clients: int = 16, sampler: Any = None,
            redis_pid: int | None = None, timeout: float = 120, warmup: int = 32) -> dict[str, Any]:
    """Start `procs` solo workers; `clients` threads each apply_async one task and block on .get()."""
    qname = "bench-celery"
    conn = Redis.from_url(redis_url)
    conn.delete(qname)
    client = _client(redis_url, qname)
    env = base_env(redis_url, **{URL_ENV: redis_url})
    workers = [Proc(f"plain-celery-{i}", [sys.executable, "-m", "bench.plain_celery", "--url", redis_url,
                                          "--queue", qname, "--name", f"bench-celery-{i}@%h"], env, log_dir)
               for i in range(procs)]
    try:
        for i, w in enumerate(workers):
            w.start()
            if sampler is not None:
                sampler.track(f"plain_celery_{i}", w.proc.pid)  # type: ignore[union-attr]
        deadline = time.monotonic() + 60
        while len(client.control.ping(timeout=0.5) or []) < procs:
            if time.monotonic() > deadline or not all(w.alive for w in workers):
                raise BenchError(f"Celery workers did not answer a ping:\n{workers[0].tail()}")
        _closed_loop(client, warmup, clients, timeout, offset=100_000)  # connections, imports, prefetch
        calls0 = redis_calls(conn)
        cpu = CpuMeter(reference_pids(workers, redis_pid)).start()
        wall, lat = _closed_loop(client, n_jobs, clients, timeout)
        cpu.stop()
        calls = calls_since(conn, calls0)
    finally:
        client.close()
        for w in workers:
            w.stop(timeout=15)
        if sampler is not None:
            for i in range(procs):
                sampler.untrack(f"plain_celery_{i}")
    return reference_summary(n_jobs, wall, lat, cpu, calls)


def _closed_loop(client: Celery, n_jobs: int, clients: int, timeout: float,
                 offset: int = 10) -> tuple[float, list[float]]:
    """Each of `clients` threads: send one distinct fib task, block on its result, repeat."""

    def call(i: int) -> None:
        value = client.send_task("bench.fib", (offset + i,)).get(timeout=timeout)
        if value["n"] != offset + i:
            raise BenchError(f"Celery task for n={offset + i} answered {value!r:.80}")

    return closed_loop(n_jobs, clients, lambda: call, "Celery")


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))


def measure_batches(redis_url: str, log_dir: Path, plan: list[list[range]], procs: int = 2, sampler: Any = None,
                    redis_pid: int | None = None, timeout: float = 300) -> dict[str, Any]:
    """The batch reference (bench.batches): each client thread sends its batches one after the other, each
    as a Celery `group` of tasks (Celery's way to submit many), and blocks on GroupResult.get()."""
    from celery import group

    from bench.batches import reads, run_clients

    qname = "bench-celery-batches"
    conn = Redis.from_url(redis_url)
    conn.delete(qname)
    client = _client(redis_url, qname)
    env = base_env(redis_url, **{URL_ENV: redis_url})
    workers = [Proc(f"plain-celery-batch-{i}", [sys.executable, "-m", "bench.plain_celery", "--url", redis_url,
                                                "--queue", qname, "--name", f"bench-celery-batch-{i}@%h"], env,
                    log_dir) for i in range(procs)]
    n_jobs = sum(len(r) for batches in plan for r in batches)
    try:
        for i, w in enumerate(workers):
            w.start()
            if sampler is not None:
                sampler.track(f"plain_celery_{i}", w.proc.pid)  # type: ignore[union-attr]
        deadline = time.monotonic() + 60
        while len(client.control.ping(timeout=0.5) or []) < procs:
            if time.monotonic() > deadline or not all(w.alive for w in workers):
                raise BenchError(f"Celery workers did not answer a ping:\n{workers[0].tail()}")

        def one(values: range) -> None:
            results = group(client.signature("bench.fib", (10 + v,)) for v in values).apply_async().get(
                timeout=timeout)
            if [r["n"] for r in results] != [10 + v for v in values]:
                raise BenchError("a Celery group's results came back wrong")

        calls0, reads0 = redis_calls(conn), reads(conn)
        cpu = CpuMeter(reference_pids(workers, redis_pid)).start()
        wall = run_clients(plan, one)
        cpu.stop()
        calls, trips = calls_since(conn, calls0), reads(conn) - reads0
    finally:
        client.close()
        for w in workers:
            w.stop(timeout=15)
        if sampler is not None:
            for i in range(procs):
                sampler.untrack(f"plain_celery_{i}")
    return reference_summary(n_jobs, wall, [], cpu, calls, round_trips=trips)
