"""Plain RQ, the reference for job throughput: a worker process and the driver that feeds it.

`python -m bench.plain_rq --url URL --queue Q [--fork]` runs one rq.SimpleWorker (or the
forking rq.Worker) with rq's defaults (pickle), exactly as a plain RQ user would.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from redis import Redis
from rq import Queue, SimpleWorker, Worker
from rq.registry import FailedJobRegistry, FinishedJobRegistry
from rq.results import Result
from rq.utils import utcparse

from bench.common import BenchError, CpuMeter, calls_since, closed_loop, redis_calls, reference_pids, reference_summary
from bench.trivial import fib
from infra.processes import Proc, base_env


def worker_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="a plain RQ worker for the benchmark")
    parser.add_argument("--url", required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--fork", action="store_true", help="rq.Worker (fork per job) instead of SimpleWorker")
    args = parser.parse_args(argv)
    conn = Redis.from_url(args.url)
    cls = Worker if args.fork else SimpleWorker
    worker = cls([Queue(args.queue, connection=conn)], connection=conn, name=f"bench-plain-{os.getpid()}")
    worker.work(logging_level="WARNING", with_scheduler=False)
    return 0


def measure(redis_url: str, log_dir: Path, n_jobs: int, fork: bool, procs: int = 2, clients: int = 0,
            sampler: Any = None, redis_pid: int | None = None, timeout: float = 120) -> dict[str, Any]:
    """Start `procs` plain workers and time n_jobs trivial jobs to completion.

    clients=0: one thread enqueues them all at once (a burst), latency = RQ's enqueued_at -> ended_at.
    clients=K: K threads each enqueue one job and block on its result (Job.latest_result, an XREAD),
    like Crunch's HTTP clients; latency = enqueue call -> result in hand.
    """
    kind = "fork" if fork else "simple"
    qname = f"bench-plain-{kind}"
    conn = Redis.from_url(redis_url)
    queue = Queue(qname, connection=conn)
    queue.empty()
    finished = FinishedJobRegistry(queue=queue)
    failed = FailedJobRegistry(queue=queue)
    conn.delete(finished.key, failed.key)
    argv = [sys.executable, "-m", "bench.plain_rq", "--url", redis_url, "--queue", qname] + (["--fork"] if fork else [])
    workers = [Proc(f"plain-rq-{kind}-{i}", argv, base_env(redis_url), log_dir) for i in range(procs)]
    try:
        for i, w in enumerate(workers):
            w.start()
            if sampler is not None:
                sampler.track(f"plain_rq_{i}", w.proc.pid)
        deadline = time.monotonic() + 30
        while Worker.count(connection=conn, queue=queue) < procs:
            if time.monotonic() > deadline or not all(w.alive for w in workers):
                raise BenchError(f"plain RQ workers did not register:\n{workers[0].tail()}")
            time.sleep(0.05)
        calls0 = redis_calls(conn)
        cpu = CpuMeter(reference_pids(workers, redis_pid)).start()
        if clients:
            wall, lat = _closed_loop(queue, n_jobs, clients, timeout)
        else:
            wall, lat = _burst(conn, queue, finished, failed, n_jobs, timeout)
        cpu.stop()
        calls = calls_since(conn, calls0)
        n_failed = conn.zcard(failed.key)
    finally:
        for w in workers:
            w.stop(timeout=15)
        if sampler is not None:
            for i in range(procs):
                sampler.untrack(f"plain_rq_{i}")
    return reference_summary(n_jobs, wall, lat, cpu, calls, failed=n_failed)


def _burst(conn: Redis, queue: Queue, finished: Any, failed: Any, n_jobs: int,
           timeout: float) -> tuple[float, list[float]]:
    ids = []
    t0 = time.perf_counter()
    for n in range(10, 10 + n_jobs):
        ids.append(queue.enqueue(fib, n, result_ttl=600).id)
    deadline = time.monotonic() + timeout
    while (done := conn.zcard(finished.key) + conn.zcard(failed.key)) < n_jobs:
        if time.monotonic() > deadline:
            raise BenchError(f"plain RQ finished only {done}/{n_jobs} jobs in {timeout}s")
        time.sleep(0.002)
    wall = time.perf_counter() - t0
    pipe = conn.pipeline(transaction=False)
    for job_id in ids:
        pipe.hmget(f"rq:job:{job_id}", "enqueued_at", "ended_at")
    lat = [(utcparse(end.decode()) - utcparse(enq.decode())).total_seconds() * 1000
           for enq, end in pipe.execute() if enq and end]
    return wall, lat


def _closed_loop(queue: Queue, n_jobs: int, clients: int, timeout: float) -> tuple[float, list[float]]:
    """Each of `clients` threads: enqueue one distinct fib job, block on its result, repeat."""

    def call(i: int) -> None:
        result = queue.enqueue(fib, 10 + i, result_ttl=600).latest_result(timeout=int(timeout))
        if result is None or result.type != Result.Type.SUCCESSFUL:
            raise BenchError(f"plain RQ job for n={10 + i} gave {result and result.type}")

    return closed_loop(n_jobs, clients, lambda: call, "plain RQ")


if __name__ == "__main__":
    sys.exit(worker_main())


def measure_batches(redis_url: str, log_dir: Path, plan: list[list[range]], procs: int = 2, sampler: Any = None,
                    redis_pid: int | None = None, timeout: float = 300) -> dict[str, Any]:
    """The batch reference (bench.batches): each client thread sends its batches one after the other, each
    as Queue.enqueue_many in one pipeline, then polls the statuses (one pipelined round trip per 20 ms)
    until all ended and reads every result back (one pipeline), as a plain RQ user would without HTTP."""
    from bench.batches import reads, run_clients

    qname = "bench-plain-batches"
    conn = Redis.from_url(redis_url)
    Queue(qname, connection=conn).empty()
    argv = [sys.executable, "-m", "bench.plain_rq", "--url", redis_url, "--queue", qname]
    workers = [Proc(f"plain-rq-batch-{i}", argv, base_env(redis_url), log_dir) for i in range(procs)]
    n_jobs = sum(len(r) for batches in plan for r in batches)
    try:
        for i, w in enumerate(workers):
            w.start()
            if sampler is not None:
                sampler.track(f"plain_rq_{i}", w.proc.pid)
        deadline = time.monotonic() + 30
        while Worker.count(connection=conn, queue=Queue(qname, connection=conn)) < procs:
            if time.monotonic() > deadline or not all(w.alive for w in workers):
                raise BenchError(f"plain RQ workers did not register:\n{workers[0].tail()}")
            time.sleep(0.05)
        local = threading.local()

        def one(values: range) -> None:
            c = getattr(local, "conn", None) or Redis.from_url(redis_url)
            local.conn = c
            q = Queue(qname, connection=c)
            with c.pipeline() as pipe:
                jobs = q.enqueue_many([Queue.prepare_data(fib, (10 + v,), result_ttl=600) for v in values],
                                      pipeline=pipe)
                pipe.execute()
            ids = [j.id for j in jobs]
            pending = list(ids)
            end = time.monotonic() + timeout
            while pending:
                with c.pipeline(transaction=False) as pipe:
                    for job_id in pending:
                        pipe.hget(f"rq:job:{job_id}", "status")
                    statuses = pipe.execute()
                if any(s == b"failed" for s in statuses):
                    raise BenchError("a plain RQ job failed")
                pending = [j for j, s in zip(pending, statuses, strict=True) if s != b"finished"]
                if pending:
                    if time.monotonic() > end:
                        raise BenchError(f"plain RQ: {len(pending)} jobs still pending")
                    time.sleep(0.02)
            with c.pipeline(transaction=False) as pipe:
                for job_id in ids:
                    pipe.xrevrange(Result.get_key(job_id), count=1)
                replies = pipe.execute()
            for job_id, v, reply in zip(ids, values, replies, strict=True):
                result_id, payload = reply[0]
                value = Result.restore(job_id, result_id.decode(), payload, connection=c).return_value
                if value["n"] != 10 + v:
                    raise BenchError(f"plain RQ job for n={10 + v} answered {value!r:.80}")

        calls0, reads0 = redis_calls(conn), reads(conn)
        cpu = CpuMeter(reference_pids(workers, redis_pid)).start()
        wall = run_clients(plan, one)
        cpu.stop()
        calls, trips = calls_since(conn, calls0), reads(conn) - reads0
    finally:
        for w in workers:
            w.stop(timeout=15)
        if sampler is not None:
            for i in range(procs):
                sampler.untrack(f"plain_rq_{i}")
    return reference_summary(n_jobs, wall, [], cpu, calls, round_trips=trips)
