"""Starts Crunch's RQ workers through rq's own API (Flask-RQ2's `flask rq worker` is broken on rq 2+).

`python worker.py` supervises WORKERS worker processes on this host: it restarts any that
die, and runs the reaper that re-queues jobs whose worker stopped heartbeating (on any host).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import multiprocessing
import os
import signal
import socket
import time
from typing import Any

from redis import Redis
from rq.serializers import JSONSerializer

from infra.embedded_redis import redact_url
from jobs.settings import process_settings
from jobs.store.connection import redis_from_url
from jobs.store.queues import QUEUES, JsonJob
from jobs.store.quota import SWEEP_STORED_LUA, sweep_args
from jobs.worker.rq_worker import CrunchWorker, WorkerQueue, on_horse_killed

log = logging.getLogger("crunch.worker")

#: How often the supervisor checks its children and looks for stalled jobs.
SUPERVISE_INTERVAL = 2.0


def preload() -> None:
    """Import kernels before forking horses, so each job starts with warm modules."""
    import jobs.worker.runner  # noqa: F401
    from jobs.types.registry import JOB_TYPES

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
    conn = redis_from_url(url)
    # Heartbeats at least every HEARTBEAT_TIMEOUT / 2 (rq's idle wait is worker_ttl - 15 s, a busy
    # worker beats every job_monitoring_interval), so /workers and /readyz can drop a worker that
    # missed HEARTBEAT_TIMEOUT: it is dead (rq's defaults, 420 s and 30 s, kept one listed for minutes).
    beat = process_settings().heartbeat_timeout
    worker = CrunchWorker(
        [WorkerQueue(q, connection=conn) for q in queues], connection=conn,
        name=f"{socket.gethostname()}.{os.getpid()}", serializer=JSONSerializer,
        job_class=JsonJob, queue_class=WorkerQueue,
        worker_ttl=15 + max(1, beat // 2), job_monitoring_interval=max(1, beat // 3),
        work_horse_killed_handler=on_horse_killed,
    )
    log.info("worker %s listening on %s", worker.name, ",".join(queues))
    # rq's INFO lines repeat, per job, what the runner's one line per job says; its warnings stay.
    worker.work(burst=burst, logging_level="WARNING", with_scheduler=False)


sweep_keys, sweep_argv = sweep_args()


def reap(conn: Redis) -> None:
    """Re-queue jobs whose worker died (SIGKILL, lost host), from their last checkpoint."""
    from jobs.store.fanout import Fanout
    from jobs.worker.runner import _lifecycle

    life = _lifecycle(conn)
    for job_id in life.recover():
        log.warning("job %s lost its worker; recovered", job_id)
    if fixed := life.heal_dispatch():
        log.warning("dispatch: %d running entries of runs that no longer run were fixed", fixed)
    if fixed := life.heal_lanes():
        log.warning("dispatch: %d waiting runs had lost their queue entry; put back", fixed)
    for rec in life.paused_due():  # paused for PAUSED_TTL: canceled, so its batch ends and its webhooks fire
        if Fanout(life).expire_paused(rec) if rec.extra.get("parts") else life.expire_paused(rec):
            log.info("job %s was paused for longer than PAUSED_TTL; canceled", rec.id)
    life.sweep_index()
    Fanout(life).sweep()  # a split job whose last part ended just before its worker died
    conn.eval(SWEEP_STORED_LUA, 2, *sweep_keys, *sweep_argv)  # expired jobs leave their client's storage count


def spawn_deliverer(ctx: Any, url: str) -> multiprocessing.process.BaseProcess:
    """The webhook delivery loop (jobs.worker.deliverer) as a child process of the supervisor."""
    from jobs.worker.deliverer import run_deliverer

    p = ctx.Process(target=run_deliverer, args=(url,), daemon=False, name="crunch-webhooks")
    p.start()
    return p


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
    conn = redis_from_url(url)  # before any worker: a malformed REDIS_URL stops the supervisor with its reason
    procs = [spawn() for _ in range(count)]
    log.info("started %d workers on %s for queues %s", count, redact_url(url), ",".join(queues))
    # The webhook delivery loop runs next to the workers on every host (deliveries are claimed atomically,
    # so any number of them share the work); a burst run has no use for it.
    deliverer = None if burst else spawn_deliverer(ctx, url)
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
        if deliverer is not None and not deliverer.is_alive():
            log.warning("webhook deliverer pid %s exited with %s; restarting", deliverer.pid, deliverer.exitcode)
            deliverer = spawn_deliverer(ctx, url)
        try:
            reap(conn)
        except Exception:
            log.warning("reaper could not reach Redis", exc_info=True)
    log.info("stopping workers")
    if deliverer is not None:
        procs.append(deliverer)  # stopped like a worker: its calls in flight settle first
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
    settings = process_settings()
    parser.add_argument("--url", default=settings.redis_url)
    parser.add_argument("--workers", type=int, default=settings.workers)
    parser.add_argument("--queues", default=",".join(QUEUES), help="comma-separated, in priority order")
    parser.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    args = parser.parse_args(argv)
    return supervise(args.url, max(1, args.workers), args.queues.split(","), args.burst)
