"""Starts Crunch's RQ workers through rq's own API (Flask-RQ2's `flask rq worker` is broken on rq 2+).

`python worker.py` supervises WORKERS worker processes on this host: it restarts any that
die, and runs the reaper that re-queues jobs whose worker stopped heartbeating (on any host).
Each worker runs cheap jobs from the fast queue inline and forks a work horse for the rest.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from typing import Any

from redis import Redis
from rq.serializers import JSONSerializer
from rq.worker import Worker, WorkerStatus

from jobs.keys import JOB_CONTROL_KEY
from jobs.queueing import QUEUES, JsonJob, JsonQueue
from jobs.spec import FAST_QUEUE

log = logging.getLogger("crunch.worker")

#: How often the supervisor checks its children and looks for stalled jobs.
SUPERVISE_INTERVAL = 2.0


class CrunchWorker(Worker):
    """Inline for fast-queue jobs (no fork, ~5x the throughput), a forked horse for the rest."""

    def execute_job(self, job: Any, queue: Any) -> None:
        if queue.name == FAST_QUEUE:
            execution = self.prepare_execution(job)
            self.perform_job(job, queue, execution)
            self.set_state(WorkerStatus.IDLE)
        else:
            super().execute_job(job, queue)

    def get_heartbeat_ttl(self, job: Any, working_time: float = 0.0) -> int:
        if self._horse_pid:
            return super().get_heartbeat_ttl(job, working_time)
        # Inline jobs cannot heartbeat rq while they run, so cover their whole timeout.
        return int(job.timeout or 180) + 60

    def request_stop(self, signum: int, frame: Any) -> None:
        """On shutdown, ask the running job to checkpoint and re-queue instead of waiting it out."""
        try:
            current = self.get_current_job_id()
            if current:
                job_id = current.rsplit("-", 1)[0]
                self.connection.set(JOB_CONTROL_KEY.format(id=job_id), "requeue", ex=3600, nx=True)
        except Exception:
            log.warning("could not ask the current job to re-queue", exc_info=True)
        super().request_stop(signum, frame)


def preload() -> None:
    """Import kernels before forking horses, so each job starts with warm modules."""
    import jobs.runner  # noqa: F401
    from jobs.registry import JOB_TYPES

    for spec in JOB_TYPES.values():
        importlib.import_module(spec.kernel.partition(":")[0])
    import primes

    primes.warmup()  # load (or compile once) the numba kernels before the first job


def run_worker(url: str, queues: list[str], burst: bool = False) -> None:
    """One rq worker process."""
    # Own process group: a terminal's Ctrl-C reaches only the supervisor, which stops us once.
    os.setpgrp()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(process)d %(levelname)s %(message)s",
                        force=True)
    preload()
    conn = Redis.from_url(url)
    worker = CrunchWorker(
        [JsonQueue(q, connection=conn) for q in queues], connection=conn,
        name=f"{socket.gethostname()}.{os.getpid()}", serializer=JSONSerializer,
        job_class=JsonJob, queue_class=JsonQueue,
    )
    worker.work(burst=burst, logging_level="INFO", with_scheduler=False)


def reap(conn: Redis) -> None:
    """Re-queue jobs whose worker died (SIGKILL, lost host), from their last checkpoint."""
    from jobs.runner import _service

    for job_id in _service(conn).recover_stalled():
        log.warning("job %s lost its worker; recovered", job_id)


def supervise(url: str, count: int, queues: list[str], burst: bool) -> int:
    """Keep `count` workers alive until SIGINT/SIGTERM, then stop them cleanly."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s supervisor %(levelname)s %(message)s")
    ctx = multiprocessing.get_context("fork")
    stopping = False

    def spawn() -> multiprocessing.process.BaseProcess:
        p = ctx.Process(target=run_worker, args=(url, queues, burst), daemon=False)
        p.start()
        return p

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    procs = [spawn() for _ in range(count)]
    log.info("started %d workers on %s for queues %s", count, url, ",".join(queues))
    conn = Redis.from_url(url)
    while not stopping:
        time.sleep(SUPERVISE_INTERVAL)
        if stopping:
            break
        for i, p in enumerate(procs):
            if not p.is_alive():
                if burst:
                    continue
                log.warning("worker pid %s exited with %s; restarting", p.pid, p.exitcode)
                procs[i] = spawn()
        if burst and not any(p.is_alive() for p in procs):
            return 0
        try:
            reap(conn)
        except Exception:
            log.warning("reaper could not reach Redis", exc_info=True)
    log.info("stopping workers")
    for p in procs:
        if p.is_alive():
            os.kill(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            log.warning("worker pid %s did not stop in time; killing", p.pid)
            p.kill()
            p.join()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0")
    parser.add_argument("--workers", type=int, default=int(os.environ.get("WORKERS") or os.cpu_count() or 1))
    parser.add_argument("--queues", default=",".join(QUEUES), help="comma-separated, in priority order")
    parser.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    args = parser.parse_args(argv)
    return supervise(args.url, max(1, args.workers), args.queues.split(","), args.burst)


if __name__ == "__main__":
    sys.exit(main())
