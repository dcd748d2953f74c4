"""Fault injection under a steady mixed load (issue 17), against real processes on a Redis of its own.

Faults, in order: a SIGKILLed work horse, a SIGKILLed worker, a SIGKILLed gunicorn worker, a
SIGKILLed Redis restarted on the same port, and a full stop and start. A load thread submits
fibonacci, primes and sort jobs all along; at the end every accepted job is checked against an
independent reference (plain iteration, a numpy sieve, sorted(), a known value of pi(x)), and a
table prints per fault: accepted, finished correct, wrong, lost, and the time to recover.

Default run ~1.5 min; FAULT_SECONDS=60 (seconds of load around each fault) runs it longer by hand:
    FAULT_SECONDS=60 .venv/bin/python -m pytest tests/test_faults.py -s
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import requests

from infra.embedded_redis import EmbeddedRedis
from infra.processes import Web, Workers
from tests.conftest import fib_reference

pytestmark = [pytest.mark.e2e, pytest.mark.faults,
              pytest.mark.timeout(300 + 12 * float(os.environ.get("FAULT_SECONDS", "5")))]

#: Seconds of load before and after each fault.
FAULT_SECONDS = float(os.environ.get("FAULT_SECONDS", "5"))
#: Heartbeat timeout of this stack: a dead worker must leave /workers within it.
HEARTBEAT = 5
#: pi(10^10), a known value: the long job whose work horse is killed mid-run.
PI_1E10 = 455_052_511
PRIMES_LIMIT = 2 * 10**6


def _prime_counts() -> np.ndarray:
    """pi(x) for x < PRIMES_LIMIT by a plain sieve of Eratosthenes: the primes jobs' reference."""
    sieve = np.ones(PRIMES_LIMIT, dtype=bool)
    sieve[:2] = False
    for p in range(2, int(PRIMES_LIMIT**0.5) + 1):
        if sieve[p]:
            sieve[p * p::p] = False
    return np.cumsum(sieve)


@dataclass
class Accepted:
    phase: str
    at: float
    kind: str
    params: dict[str, Any]
    id: str


@dataclass
class Load:
    """Submits a mixed stream of small jobs (about 8 a second) until stopped; records what was accepted."""

    url: str
    phase: str = "warm-up"
    accepted: list[Accepted] = field(default_factory=list)
    refused: dict[str, int] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)

    def job(self, rng: random.Random) -> tuple[str, dict[str, Any]]:
        kind = rng.choice(["fibonacci", "primes", "sort"])
        if kind == "fibonacci":
            return kind, {"n": rng.randrange(1000, 20_000)}
        if kind == "primes":
            a = rng.randrange(0, PRIMES_LIMIT // 2)
            return kind, {"start": a, "end": a + rng.randrange(1000, PRIMES_LIMIT // 2 - 1), "output": "count"}
        return kind, {"numbers": [rng.randrange(-10**12, 10**12) for _ in range(rng.randrange(1, 200))]}

    def run(self) -> None:
        rng = random.Random(17)
        session = requests.Session()
        while not self.stop.is_set():
            kind, params = self.job(rng)
            try:
                r = session.post(f"{self.url}/api/v1/{kind}", json=params, timeout=10)
                if r.status_code in (200, 202):
                    self.accepted.append(Accepted(self.phase, time.monotonic(), kind, params, r.json()["id"]))
                else:
                    self.refused[self.phase] = self.refused.get(self.phase, 0) + 1
            except requests.RequestException:
                self.refused[self.phase] = self.refused.get(self.phase, 0) + 1
                session = requests.Session()
            self.stop.wait(0.12)


def until(check: Any, timeout: float, step: float = 0.02) -> float:
    """Seconds until check() is true (polled); fails after timeout."""
    t0 = time.monotonic()
    while True:
        try:
            if check():
                return time.monotonic() - t0
        except (requests.RequestException, psutil.Error, ValueError, KeyError):
            pass
        assert time.monotonic() - t0 < timeout, f"not recovered within {timeout} s"
        time.sleep(step)


def children(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children()
    except psutil.NoSuchProcess:
        return []


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[EmbeddedRedis, Workers, Web]]:
    redis = EmbeddedRedis(tmp_path / "redis").start()
    workers = Workers(redis.url, tmp_path, count=2, HEARTBEAT_TIMEOUT=HEARTBEAT).start()
    web = Web(redis.url, tmp_path, HEARTBEAT_TIMEOUT=HEARTBEAT).start()
    yield redis, workers, web
    workers.stop()
    web.stop()
    redis.stop()


def test_faults_under_load_lose_nothing_and_recover_in_seconds(stack: tuple[EmbeddedRedis, Workers, Web]) -> None:
    redis, workers, web = stack
    api = requests.Session()
    load = Load(web.url)
    loader = threading.Thread(target=load.run, daemon=True)
    loader.start()
    recovery: dict[str, str] = {}
    try:
        time.sleep(FAULT_SECONDS)

        # 1. A work horse, mid-run: its job must run again within 2 s (not after the heartbeat reaper).
        load.phase = "work horse"
        long = api.post(f"{web.url}/api/v1/primes", json={"start": 0, "end": 10**10, "output": "count"}).json()
        until(lambda: api.get(f"{web.url}/api/v1/jobs/{long['id']}").json()["status"] == "started", 60)
        horses = [c for w in children(workers.proc.pid) for c in w.children()]
        assert horses, "no work horse found"
        runs = api.get(f"{web.url}/api/v1/jobs/{long['id']}").json()["runs"]
        t_kill = time.monotonic()
        for h in horses:
            os.kill(h.pid, signal.SIGKILL)

        def rerun() -> bool:
            job = api.get(f"{web.url}/api/v1/jobs/{long['id']}").json()
            return job["runs"] > runs and job["status"] == "started"

        took = until(rerun, 60)
        recovery["work horse"] = f"job running again {took:.2f} s after the kill"
        horse_s = time.monotonic() - t_kill
        time.sleep(FAULT_SECONDS)

        # 2. A worker: the supervisor starts another; the dead one leaves /workers within HEARTBEAT.
        load.phase = "worker"
        names = {w["name"] for w in api.get(f"{web.url}/api/v1/workers").json()}
        # The supervisor's children are its two workers and the webhook deliverer: count the others.
        others = {c.pid for c in children(workers.proc.pid)} - {int(n.rsplit(".", 1)[1]) for n in names}
        victim = next(c for c in children(workers.proc.pid) if c.pid not in others)
        dead = next(n for n in names if n.endswith(f".{victim.pid}"))
        os.kill(victim.pid, signal.SIGKILL)
        t_kill = time.monotonic()

        def replaced() -> bool:
            pids = [c.pid for c in children(workers.proc.pid) if c.pid not in others]
            return len(pids) == 2 and victim.pid not in pids

        took = until(replaced, 30)
        gone = until(lambda: dead not in {w["name"] for w in api.get(f"{web.url}/api/v1/workers").json()},
                     HEARTBEAT * 3) + took
        gone = time.monotonic() - t_kill
        ready = until(lambda: api.get(f"{web.url}/readyz").json()["workers"] == 2, 60) + gone
        recovery["worker"] = (f"replaced in {took:.1f} s, gone from /workers in {gone:.1f} s, "
                              f"/readyz counts 2 again in {ready:.1f} s")
        assert gone <= HEARTBEAT * 2.5, recovery["worker"]
        time.sleep(FAULT_SECONDS)

        # 3. A gunicorn worker: the other answers meanwhile, the master forks a new one.
        load.phase = "web process"
        procs = children(web.proc.pid)
        os.kill(procs[0].pid, signal.SIGKILL)
        took = until(lambda: len(children(web.proc.pid)) == len(procs)
                     and api.get(f"{web.url}/readyz", timeout=5).status_code == 200, 30)
        recovery["web process"] = f"replaced and serving in {took:.1f} s"
        time.sleep(FAULT_SECONDS)

        # 4. Redis, SIGKILLed and restarted on the same port: the stack serves within 5 s of the restart.
        load.phase = "redis"
        redis.kill()
        time.sleep(1)
        redis.start()
        took = until(lambda: api.get(f"{web.url}/api/v1/jobs?limit=1", timeout=5).status_code == 200
                     and api.post(f"{web.url}/api/v1/fibonacci", json={"n": 77}, timeout=5).status_code in (200, 202),
                     30)
        recovery["redis"] = f"serving {took:.2f} s after the restart"
        redis_s = took
        time.sleep(FAULT_SECONDS)

        # 5. Everything stopped and started again.
        load.phase = "full restart"
        workers.stop()
        web.stop()
        t0 = time.monotonic()
        web.start()
        workers.start()
        recovery["full restart"] = f"serving {time.monotonic() - t0:.1f} s after the start"
        time.sleep(FAULT_SECONDS)
    finally:
        load.stop.set()
        loader.join()

    # Every accepted job, against its reference.
    pi = _prime_counts()
    rows: dict[str, dict[str, int]] = {}
    wrong_detail = []
    deadline = time.monotonic() + 240
    for a in load.accepted:
        row = rows.setdefault(a.phase, {"accepted": 0, "correct": 0, "wrong": 0, "lost": 0})
        row["accepted"] += 1
        job = None
        while time.monotonic() < deadline:
            r = api.get(f"{web.url}/api/v1/jobs/{a.id}?wait=10", timeout=30)
            if r.status_code != 200:
                break
            job = r.json()
            if job["status"] in ("finished", "failed", "canceled"):
                break
        if job is None or job["status"] != "finished":
            row["lost"] += 1
            wrong_detail.append((a.phase, a.kind, a.id, job and job["status"]))
            continue
        got = api.get(f"{web.url}{job['result_url']}", timeout=30).json()
        if a.kind == "fibonacci":
            ok = got["value"] == str(fib_reference(a.params["n"]))
        elif a.kind == "primes":
            ok = got["count"] == int(pi[a.params["end"]] - (pi[a.params["start"] - 1] if a.params["start"] else 0))
        else:
            ok = got == sorted(a.params["numbers"])
        row["correct" if ok else "wrong"] += 1
        if not ok:
            wrong_detail.append((a.phase, a.kind, a.id, "wrong"))
    done = api.get(f"{web.url}/api/v1/jobs/{long['id']}?wait=30", timeout=60).json()
    while done["status"] not in ("finished", "failed", "canceled") and time.monotonic() < deadline + 120:
        done = api.get(f"{web.url}/api/v1/jobs/{long['id']}?wait=30", timeout=60).json()
    long_ok = done["status"] == "finished" and done["result"]["count"] == PI_1E10

    print(f"\nfault injection, {FAULT_SECONDS:.0f} s of load around each fault:")
    print(f"  {'fault':<13} {'accepted':>8} {'correct':>8} {'wrong':>6} {'lost':>5} {'refused':>8}  recovery")
    for phase in ["warm-up", "work horse", "worker", "web process", "redis", "full restart"]:
        row = rows.get(phase, {"accepted": 0, "correct": 0, "wrong": 0, "lost": 0})
        print(f"  {phase:<13} {row['accepted']:>8} {row['correct']:>8} {row['wrong']:>6} {row['lost']:>5} "
              f"{load.refused.get(phase, 0):>8}  {recovery.get(phase, '')}")
    print(f"  the killed horse's pi(10^10) job: {done['status']}, runs {done['runs']}, "
          f"{'correct' if long_ok else 'WRONG'}")
    assert not wrong_detail, wrong_detail
    assert long_ok, done
    assert horse_s < 2 * 2.5, recovery["work horse"]
    assert redis_s < 5 * 2, recovery["redis"]
