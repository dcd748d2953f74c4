"""Section: 10,000 trivial jobs sent as batches of 1,000 by 4 clients, against Celery and plain RQ doing the same.

Crunch: each client POSTs /api/v1/batches (1,000 fib items), long-polls the batch until it is
finished, then reads its 1,000 results back (GET .../jobs?limit=1000): timed until the last
client holds its last result. Celery (solo pool x2, Redis broker and result backend): each client
sends a `group` of 1,000 tasks (Celery's batch primitive) and blocks on GroupResult.get(). Plain RQ
(SimpleWorker x2): each client enqueues 1,000 jobs with Queue.enqueue_many in one pipeline, then
polls their statuses (one pipelined round trip per 20 ms) and reads the results. Every side runs
the same trivial work (bench.trivial.fib), on the same Redis, in the same run.

Round trips are Redis's own count of read events on client connections (INFO stats
total_reads_processed): one per request or pipeline the server read, from every process.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import orjson
import requests
from redis import Redis

from bench import plain_celery, plain_rq
from bench.common import BenchError, CpuMeter, Row, RssSampler, calls_since, note, print_header, print_row, redis_calls
from bench.e2e import celery_version

SECTION = "batches"
JOBS = 10_000
BATCH = 1_000
CLIENTS = 4
WORKERS = 2


def reads(conn: Redis) -> int:
    """Read events Redis processed on client connections so far (about one per round trip)."""
    return int(conn.info("stats").get("total_reads_processed", 0))


def split(total: int, batch: int, clients: int) -> list[list[range]]:
    """The batches of n values each client sends, dealt out round-robin: 10 batches to 4 clients."""
    plan: list[list[range]] = [[] for _ in range(clients)]
    for k, start in enumerate(range(0, total, batch)):
        plan[k % clients].append(range(start, min(total, start + batch)))
    return plan


def run_clients(plan: list[list[range]], one: Any) -> float:
    """Each client thread runs `one(values)` for each of its batches; wall seconds for all of them."""
    errors: list[str] = []
    barrier = threading.Barrier(len(plan) + 1)

    def client(batches: list[range]) -> None:
        barrier.wait()
        for values in batches:
            try:
                one(values)
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=client, args=(b,), daemon=True) for b in plan]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise BenchError(f"{len(errors)} batches failed; first: {errors[0]}")
    return wall


def crunch_batches(base: str, offset: int) -> Any:
    """One Crunch batch: POST, long-poll to the end, read every result back and check it."""
    local = threading.local()

    def one(values: range) -> None:
        s = getattr(local, "s", None) or requests.Session()
        local.s = s
        body = orjson.dumps({"jobs": [{"type": "fibonacci", "params": {"n": offset + v}} for v in values]})
        r = s.post(base + "/api/v1/batches", data=body, headers={"Content-Type": "application/json"}, timeout=120)
        if r.status_code not in (200, 202):
            raise BenchError(f"POST /batches answered {r.status_code}: {r.text[:200]}")
        batch = orjson.loads(r.content)
        while batch["status"] != "finished":
            batch = orjson.loads(s.get(f"{base}/api/v1/batches/{batch['id']}?wait=30", timeout=60).content)
        page = orjson.loads(s.get(f"{base}/api/v1/batches/{batch['id']}/jobs?limit={len(values)}", timeout=60).content)
        jobs = page["jobs"]
        if len(jobs) != len(values) or any(j["result"]["n"] != offset + v for j, v in zip(jobs, values, strict=True)):
            raise BenchError("a batch's results came back wrong")

    return one


def measure_crunch(svc: Any, n_jobs: int = JOBS, offset: int = 10) -> dict[str, Any]:
    """F(n) for n = 10..10,009 (the references' n), all cheap jobs (the fast queue), after a warm-up batch
    of other n (imports, connections, scripts loaded)."""
    plan = split(n_jobs, BATCH, CLIENTS)
    run_clients(split(2 * BATCH, BATCH, 2), crunch_batches(svc.base, 20_000))  # warm up
    calls0, reads0 = redis_calls(svc.conn), reads(svc.conn)
    cpu = CpuMeter(svc.pids()).start()
    wall = run_clients(plan, crunch_batches(svc.base, offset))
    cpu.stop()
    return {"jobs": n_jobs, "wall_s": wall, "rate": n_jobs / wall, "cpu_s": cpu.used,
            "cpu_per_job": cpu.per_job_ms(n_jobs), "redis_calls": calls_since(svc.conn, calls0),
            "round_trips": reads(svc.conn) - reads0}


def run(tmp: Path, sampler: RssSampler, failures: list[str]) -> list[Row]:
    """Start the service (as bench.e2e does: valkey, worker.py --workers 2, gunicorn) and measure."""
    from bench.e2e import Service, keep_logs

    svc = Service(tmp / "batches", sampler)
    try:
        sampler.set_phase("batches: startup")
        svc.start()
        return measure(svc, sampler)
    except Exception as exc:  # noqa: BLE001 - reported; the rest of the run is still written
        failures.append(f"batches: {type(exc).__name__}: {exc}")
        note(f"FAILED batches: {type(exc).__name__}: {exc}")
        print(svc.logs())
        return []
    finally:
        sampler.set_phase("teardown")
        svc.stop()
        keep_logs(svc.log_dir)


def measure(svc: Any, sampler: RssSampler) -> list[Row]:
    print()
    print_header(f"2e. Batches: {JOBS:,} trivial jobs as batches of {BATCH:,} from {CLIENTS} clients, "
                 f"{WORKERS} worker processes each side; jobs/s higher is better",
                 "Celery group (solo pool x2) and plain RQ enqueue_many (SimpleWorker x2), same Redis, same run")
    sampler.set_phase("batches: Crunch")
    ours = measure_crunch(svc)
    redis_pid = svc.redis.proc.pid
    refs: dict[str, dict[str, Any]] = {}
    for name, fn in (("Celery", plain_celery.measure_batches), ("plain RQ", plain_rq.measure_batches)):
        sampler.set_phase(f"batches: {name}")
        try:
            refs[name] = fn(svc.redis.url, svc.log_dir, split(JOBS, BATCH, CLIENTS), procs=WORKERS,
                            sampler=sampler, redis_pid=redis_pid)
        except BenchError as exc:
            note(f"{name} not measured: {exc}")
    rows: list[Row] = []
    case = f"{JOBS:,} trivial jobs, batches of {BATCH:,}, {CLIENTS} clients"
    cpu_ms = sum(ours["cpu_s"].values()) / JOBS * 1000
    rt = ours["round_trips"] / JOBS
    cmds = sum(ours["redis_calls"].values()) / JOBS
    for name, ref in refs.items():
        ref_name = {"Celery": f"Celery {celery_version()} group, solo pool x{WORKERS}, Redis broker + backend",
                    "plain RQ": f"plain RQ enqueue_many, SimpleWorker x{WORKERS}"}[name]
        rows += [
            Row(SECTION, case, ours["rate"], ref["rate"], "jobs/s", ref_name,
                f"Crunch: all {JOBS:,} results in the clients' hands in {ours['wall_s']:.2f} s; "
                f"{name}: {ref['wall_s']:.2f} s", {"crunch": ours, name: ref}),
            Row(SECTION, "  CPU per job, all processes", cpu_ms, sum(ref["cpu_s"].values()) / JOBS * 1000, "ms",
                ref_name, f"Crunch: {ours['cpu_per_job']}; {name}: {ref['cpu_per_job']}"),
            Row(SECTION, "  Redis round trips per job", rt, ref["round_trips"] / JOBS, "trips", ref_name,
                "INFO stats total_reads_processed (read events on client connections), every process"),
            Row(SECTION, "  Redis commands per job", cmds, sum(ref["redis_calls"].values()) / JOBS, "cmds",
                ref_name, "INFO commandstats, commands inside Lua scripts included"),
        ]
    if not refs:
        rows.append(Row(SECTION, case, ours["rate"], None, "jobs/s", "", ours["cpu_per_job"], {"crunch": ours}))
    for r in rows:
        print_row(r)
    celery = refs.get("Celery")
    if celery:
        ratio = ours["rate"] / celery["rate"]
        note(f"target: Crunch's batch jobs/s at least 3x Celery's: {ratio:.2f}x "
             f"({'met' if ratio >= 3 else 'NOT met'} in this run)")
    return rows

