"""`docker compose up` for real: the image built, the stack run, scaled, killed, restarted and stopped.

Everything runs on this machine with no registry. The test installs Debian's docker.io,
docker-compose and debootstrap when they are absent (as root, with apt-get), starts dockerd
when none answers, and runs `make offline-images`, which builds stand-ins for the three
base images from Debian's packages (infra/images/). The stack then runs under a project
name of its own, with the proxy published on 127.0.0.1 only; containers talk on the
project's Compose network only. Every wait is bounded, and the project's containers,
network and volume are removed at the end, pass or fail.

Each worker container runs one worker process (WORKERS=1), so "three containers share the
work" means three processes in three containers. HEARTBEAT_TIMEOUT is 10 s instead of 30 so
that a killed container's job is re-queued sooner. Results are checked against an
independent reference: prime counts by Lucy's algorithm (prime_pi below), Fibonacci by
iteration, sorts by sorted().

The timings (image build, time to ready, each scenario) are printed as they happen (seen
with -s, and with a failure's captured output) and in the terminal summary after the run
("docker compose timings"); measured, never asserted.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import re
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from tests.conftest import REPORT_LINES
from tests.test_deploy import SETTING_VARS

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.compose, pytest.mark.slow, pytest.mark.timeout(1800)]

#: Debian package -> a program it installs.
APT_PACKAGES = {"docker.io": "dockerd", "docker-compose": "docker-compose", "debootstrap": "debootstrap"}
#: The image tag the test builds: fixed, so a rerun reuses its layers (the pip layer above all).
TEST_IMAGE = "crunch-compose-test:latest"
TERMINAL = ("finished", "failed", "canceled")


# --------------------------------------------------------------------------------------
# Independent references
# --------------------------------------------------------------------------------------

def prime_pi(n: int) -> int:
    """The number of primes <= n by Lucy Hedgehog's O(n^(3/4)) method, vectorised with numpy.

    Nothing like the service's segmented sieve, so it checks it: pi(10^11) takes ~1 s here.
    small[v] = S(v) for v <= sqrt(n), large[i] = S(n // i); for each prime p, every
    S(v) with v >= p^2 loses S(v // p) - S(p - 1) (numbers whose least prime factor is p).
    """
    if n < 2:
        return 0
    r = math.isqrt(n)
    small = np.arange(-1, r, dtype=np.int64)
    large = np.zeros(r + 1, dtype=np.int64)
    large[1:] = n // np.arange(1, r + 1, dtype=np.int64) - 1
    for p in range(2, r + 1):
        if small[p] == small[p - 1]:
            continue  # not a prime
        sp, p2 = small[p - 1], p * p
        lim = min(r, n // p2)
        ip = np.arange(1, lim + 1, dtype=np.int64) * p
        inner = ip <= r
        vals = np.empty(lim, dtype=np.int64)
        vals[inner] = large[ip[inner]]
        vals[~inner] = small[n // ip[~inner]]
        large[1:lim + 1] -= vals - sp  # right-hand side read whole first: the values before p
        if p2 <= r:
            small[p2:] -= small[np.arange(p2, r + 1, dtype=np.int64) // p] - sp
    return int(large[1])


def primes_between(start: int, end: int) -> int:
    return prime_pi(end) - prime_pi(start - 1)


def fibonacci(n: int) -> int:
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


# --------------------------------------------------------------------------------------
# Docker on this machine
# --------------------------------------------------------------------------------------

def run(cmd: list[str], timeout: float, env: dict[str, str] | None = None, check: bool = True,
        cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
    if check and out.returncode != 0:
        raise AssertionError(f"`{' '.join(cmd)}` exited {out.returncode}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out


def ensure_packages() -> None:
    missing = [p for p, prog in APT_PACKAGES.items() if shutil.which(prog) is None and
               subprocess.run(["dpkg", "-s", p], capture_output=True).returncode != 0]
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip(f"needs {', '.join(missing)}: run as root on Debian (apt-get), as .ci/run does")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run(["apt-get", "update", "-qq"], timeout=600, env=env)
    run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], timeout=1200, env=env)


def docker_answers() -> bool:
    return subprocess.run(["docker", "info"], capture_output=True, timeout=60).returncode == 0


@contextlib.contextmanager
def docker_engine(log_path: Path) -> Iterator[None]:
    """A Docker engine for the test: the running one, else a dockerd started here and stopped after."""
    if docker_answers():
        yield
        return
    if os.geteuid() != 0:
        pytest.skip("no Docker engine answers and starting dockerd needs root")
    with log_path.open("wb") as log:
        proc = subprocess.Popen(["dockerd"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while not docker_answers():
            assert proc.poll() is None, f"dockerd exited {proc.returncode}:\n{log_path.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"dockerd did not answer in 90 s:\n{log_path.read_text()[-3000:]}"
            time.sleep(0.5)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


def compose_program() -> list[str]:
    """`docker compose` (v2) where the plugin exists, else Debian's docker-compose 1.29."""
    if subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30).returncode == 0:
        return ["docker", "compose"]
    return ["docker-compose"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------
# The stack
# --------------------------------------------------------------------------------------

@dataclass
class Timings:
    """Seconds per step, printed as they happen and summed up in the terminal summary."""

    config: pytest.Config
    rows: list[tuple[str, float]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def write(self, line: str) -> None:
        print(f"[compose] {line}", flush=True)

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.monotonic()
        yield
        self.add(name, time.monotonic() - t0)

    def add(self, name: str, seconds: float) -> None:
        self.rows.append((name, seconds))
        self.write(f"{name}: {seconds:.1f} s")

    def note(self, line: str) -> None:
        self.notes.append(line)
        self.write(line)

    def summary(self) -> None:
        rows = [*self.rows, ("the whole Compose test (setup to teardown)", time.monotonic() - self.started)]
        lines = [f"{name:<58} {seconds:7.1f} s" for name, seconds in rows] + self.notes
        self.config.stash.setdefault(REPORT_LINES, {})["docker compose timings"] = lines


class Stack:
    def __init__(self, project: str, env: dict[str, str], env_file: Path, port: int, timings: Timings) -> None:
        self.project, self.env, self.env_file, self.port, self.timings = project, env, env_file, port, timings
        self.base = f"http://127.0.0.1:{port}"
        self.http = requests.Session()
        self.http.trust_env = False  # never through a proxy from the environment: 127.0.0.1 only

    # -- compose and docker ------------------------------------------------------------
    def compose(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [*compose_program(), "--project-name", self.project, "--project-directory", str(ROOT),
               "-f", str(ROOT / "docker-compose.yml"), "--env-file", str(self.env_file), *args]
        return run(cmd, timeout=timeout, env=self.env, check=check)

    def containers(self, service: str, running: bool = True) -> list[str]:
        cmd = ["docker", "ps", "-q", "--no-trunc", "--filter", f"label=com.docker.compose.project={self.project}",
               "--filter", f"label=com.docker.compose.service={service}"]
        return run(cmd if running else [*cmd, "-a"], timeout=60).stdout.split()

    def health_checks(self, service: str) -> list[float]:
        """Seconds each recent healthcheck of the service's first container took (Docker keeps 5)."""
        (container, *_) = self.containers(service)
        out = run(["docker", "inspect", "-f", "{{json .State.Health}}", container], timeout=60).stdout
        stamp = re.compile(r"(\.\d{6})\d*")

        def parse(t: str) -> datetime:
            return datetime.fromisoformat(stamp.sub(r"\1", t).replace("Z", "+00:00"))

        return [(parse(e["End"]) - parse(e["Start"])).total_seconds() for e in json.loads(out)["Log"]]

    def redis_state(self, job_id: str) -> str:
        """What Redis holds for a job and its queues, for a failure message: a stuck job says why."""
        script = (
            f"valkey-cli hgetall crunch:job:{job_id}; valkey-cli get crunch:job:{job_id}:control; "
            "for k in crunch:running $(valkey-cli --scan --pattern 'rq:queue:*') "
            "$(valkey-cli --scan --pattern 'crunch:lane:*'); do t=$(valkey-cli type $k); echo \"== $k ($t)\"; "
            "case $t in list) valkey-cli lrange $k 0 20;; zset) valkey-cli zrange $k 0 20 withscores;; "
            "hash) valkey-cli hgetall $k;; string) valkey-cli get $k;; set) valkey-cli smembers $k;; esac; done")
        out = self.compose("exec", "-T", "redis", "sh", "-c", script, timeout=60, check=False)
        return out.stdout[-4000:] + out.stderr[-1000:]

    def logs(self, container: str) -> str:
        out = subprocess.run(["docker", "logs", container], capture_output=True, text=True, timeout=60)
        return out.stdout + out.stderr

    def ran_on(self, job_id: str, event: str = "started") -> set[str]:
        """The worker containers whose log says `job <id> <event>`."""
        needle = f"job {job_id} {event}"
        return {c for c in self.containers("worker", running=False) if needle in self.logs(c)}

    # -- HTTP ---------------------------------------------------------------------------
    def wait_ready(self, bound: float = 180) -> float:
        t0 = time.monotonic()
        last: Any = None
        while time.monotonic() - t0 < bound:
            try:
                r = self.http.get(f"{self.base}/readyz", timeout=5)
                if r.status_code == 200:
                    return time.monotonic() - t0
                last = (r.status_code, r.text[:200])
            except requests.RequestException as e:
                last = e
            time.sleep(0.25)
        raise AssertionError(f"not ready through the proxy within {bound} s: {last}\n{self.compose('ps').stdout}")

    def submit(self, kind: str, wait: int = 0, **kwargs: Any) -> dict[str, Any]:
        headers = {"Prefer": f"wait={wait}"} if wait else {}
        r = self.http.post(f"{self.base}/api/v1/{kind}", headers=headers, timeout=wait + 30, **kwargs)
        assert r.status_code in (200, 202), (r.status_code, r.text[:500])
        return r.json()

    def job(self, job_id: str, wait: int = 0) -> dict[str, Any]:
        r = self.http.get(f"{self.base}/api/v1/jobs/{job_id}", params={"wait": wait} if wait else None,
                          timeout=wait + 30)
        assert r.status_code == 200, (r.status_code, r.text[:500])
        return r.json()

    def poll(self, job_id: str, until: Callable[[dict[str, Any]], bool], bound: float,
             seen: list[dict[str, Any]] | None = None, every: float = 0.2) -> dict[str, Any]:
        """GET the job until `until(job)`, riding out the 503s of a restarting stack; bounded."""
        t0 = time.monotonic()
        last: Any = None
        while time.monotonic() - t0 < bound:
            try:
                r = self.http.get(f"{self.base}/api/v1/jobs/{job_id}", timeout=30)
                if r.status_code == 200:
                    last = r.json()
                    if seen is not None:
                        seen.append(last)
                    if until(last):
                        return last
                else:
                    last = (r.status_code, r.text[:200])
            except requests.RequestException as e:
                last = e
            time.sleep(every)
        raise AssertionError(f"job {job_id} not there within {bound} s; last: {last}")

    def finished(self, job_id: str, bound: float = 180) -> dict[str, Any]:
        job = self.poll(job_id, lambda j: j["status"] in TERMINAL, bound, every=0.5)
        assert job["status"] == "finished", job
        return job


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    timings = Timings(request.config)
    tmp = tmp_path_factory.mktemp("compose")
    with timings("install docker.io, docker-compose, debootstrap (when absent)"):
        ensure_packages()
    with docker_engine(tmp / "dockerd.log"):
        # Stand-ins for the base images, and nothing written to the checkout's .env.
        with timings("make offline-images (cached when unchanged)"):
            run(["make", "offline-images", "OFFLINE_ENV_FILE="], timeout=1200)
        project = f"crunchtest{os.getpid()}{uuid.uuid4().hex[:4]}"
        port = free_port()
        env = {k: v for k, v in os.environ.items() if k not in SETTING_VARS and not k.startswith("COMPOSE_")}
        env.update({
            "PYTHON_IMAGE": "crunch-offline/python:3.11", "REDIS_IMAGE": "crunch-offline/valkey:8",
            "NGINX_IMAGE": "crunch-offline/nginx:1.22", "CRUNCH_IMAGE": TEST_IMAGE,
            "PUBLISH_ADDRESS": "127.0.0.1", "PORT": str(port), "WORKERS": "1", "HEARTBEAT_TIMEOUT": "10",
            "MAX_BODY_BYTES": str(8 << 20), "REDIS_MAXMEMORY": "1gb",
            # Whole jobs: the scenarios below kill, scale and stop around one job's run (split jobs are
            # tests/test_fanout.py's).
            "FANOUT_MIN_SECONDS": "0",
            # docker-compose 1.29 gives up on a slow engine after 60 s; builds under load take longer.
            "COMPOSE_HTTP_TIMEOUT": "600", "DOCKER_CLIENT_TIMEOUT": "600",
        })
        env_file = tmp / "empty.env"  # so a developer's .env in the checkout changes nothing here
        env_file.write_text("")
        s = Stack(project, env, env_file, port, timings)
        try:
            with timings("image build (docker compose build)"):
                s.compose("build", timeout=1500)
            size = int(run(["docker", "image", "inspect", "-f", "{{.Size}}", TEST_IMAGE], timeout=60).stdout)
            timings.note(f"image {TEST_IMAGE}: {size / 1e6:.0f} MB (on the Debian stand-in base)")
            t0 = time.monotonic()
            s.compose("up", "-d", "--build", timeout=600)
            timings.add("up -d --build (cached) until ready through the proxy", time.monotonic() - t0 + s.wait_ready())
            for service, interval in (("redis", 2), ("web", 4)):
                took = s.health_checks(service)
                timings.note(f"{service} healthchecks took {', '.join(f'{t:.2f}' for t in took)} s "
                             f"(interval {interval} s)")
            yield s
        finally:
            with contextlib.suppress(Exception):  # kept after the run, beside the browser tests' screenshots
                saved = ROOT / "test-artifacts" / f"compose-{project}.log"
                saved.parent.mkdir(exist_ok=True)
                saved.write_text(s.compose("logs", "--no-color", "--timestamps", timeout=120, check=False).stdout)
                timings.note(f"container logs: {saved}")
            s.compose("down", "-v", "--remove-orphans", "--timeout", "10", timeout=300, check=False)
            # Earlier builds of the image, untagged by this one (the Dockerfile's label names them only).
            run(["docker", "image", "prune", "-f", "--filter", "label=org.opencontainers.image.title=crunch"],
                timeout=300, check=False)
            timings.summary()


# --------------------------------------------------------------------------------------
# Scenarios, in order
# --------------------------------------------------------------------------------------

def test_every_job_type_through_the_proxy(stack: Stack) -> None:
    # The first job of a fresh worker: numba's kernels come from the image's cache (compiling
    # them took ~4 s at build time), so pi(10^8) takes milliseconds.
    t0 = time.monotonic()
    job = stack.submit("primes", wait=30, json={"start": 0, "end": 10**8, "output": "count"})
    job = stack.finished(job["id"]) if job["status"] != "finished" else job
    stack.timings.note(f"first primes job, pi(10^8): {job['duration_ms']:.0f} ms in the worker, "
                       f"{(time.monotonic() - t0) * 1000:.0f} ms submit-to-answer")
    assert job["result"] == {"count": 5761455}
    assert job["duration_ms"] < 3000, "the first primes job compiled its kernels"
    warm = stack.compose("exec", "-T", "worker", "python", "-c",
                         "import primes; print(primes.warmup())", timeout=120).stdout.split()[-1]
    stack.timings.note(f"numba kernels loaded in a fresh process in the worker container: {float(warm):.2f} s")
    assert float(warm) < 2.5, "numba's cache in the image was not used"

    with stack.timings("every job type, submitted through the proxy"):
        listed = stack.submit("primes", wait=30, json={"start": 0, "end": 100})
        numbers = [3, -1, 2**70, 2.5, 0, -(2**65), 0.001, 10**30]
        sort_json = stack.submit("sort", wait=30, json={"numbers": numbers, "descending": True})
        sort_file = stack.submit("sort", wait=30, files={"file": ("n.txt", b"5, 3\n1 4\t2\n-7\n")})
        fib = stack.submit("fibonacci", wait=30, json={"n": 1000})
        table = (b"date,name,amount\n2024-01-05,a,10\n2024-02-10,b,30\n2024-04-01,c,20\n"
                 b"2024-03-31,d,5\nnot-a-date,e,1\n")
        csv_job = stack.submit("csv", wait=30, files={"file": ("t.csv", table)},
                               data={"date_column": "date", "from": "2024-01-01", "till": "2024-03-31",
                                     "sort_by": "amount", "descending": "true"})
        jobs = {k: stack.finished(j["id"]) for k, j in
                {"list": listed, "sort_json": sort_json, "sort_file": sort_file, "fib": fib, "csv": csv_job}.items()}
    assert jobs["list"]["result"] == [p for p in range(2, 101) if all(p % d for d in range(2, math.isqrt(p) + 1))]
    assert jobs["sort_json"]["result"] == sorted(numbers, reverse=True)
    assert jobs["sort_file"]["result"] == [-7, 1, 2, 3, 4, 5]
    value = fibonacci(1000)
    assert jobs["fib"]["result"] == {"n": 1000, "digits": len(str(value)), "value": str(value)}
    summary = jobs["csv"]["result"]
    assert (summary["rows"], summary["columns"], summary["skipped"]) == (3, ["date", "name", "amount"], 1)
    r = stack.http.get(stack.base + jobs["csv"]["result_url"], params={"format": "csv"}, timeout=30)
    assert r.status_code == 200
    rows = list(csv.reader(io.StringIO(r.text)))
    assert rows == [["date", "name", "amount"], ["2024-02-10", "b", "30"], ["2024-01-05", "a", "10"],
                    ["2024-03-31", "d", "5"]]


def test_the_proxy_refuses_big_bodies_and_absorbs_slow_ones(stack: Stack) -> None:
    # Over MAX_BODY_BYTES (8 MiB here): 413 problem+json from nginx, before any body is sent.
    with socket.create_connection(("127.0.0.1", stack.port), timeout=30) as s:
        s.sendall(b"POST /api/v1/sort HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n" % ((8 << 20) + 1))
        head = s.recv(65536).decode("latin-1")
    assert head.startswith("HTTP/1.1 413"), head[:300]
    assert "application/problem+json" in head and '"status": 413' in head

    # 600 clients trickling bodies (issue 17 took the web down with as many) while a normal
    # client submits and reads: nginx holds the bodies, gunicorn's threads never see them.
    sockets = []
    try:
        for _ in range(600):
            s = socket.create_connection(("127.0.0.1", stack.port), timeout=30)
            s.sendall(b"POST /api/v1/sort HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 100000\r\n\r\n{\"numbers\": [")
            sockets.append(s)
        worst = 0.0
        for n in range(5):
            t0 = time.monotonic()
            job = stack.submit("fibonacci", wait=10, json={"n": 200 + n})
            assert job["status"] == "finished" and job["result"]["value"] == str(fibonacci(200 + n))
            assert stack.http.get(f"{stack.base}/api/v1/jobs", params={"limit": 1}, timeout=30).status_code == 200
            worst = max(worst, time.monotonic() - t0)
        stack.timings.note(f"with 600 slow bodies held by the proxy: slowest normal submit+list {worst:.2f} s")
        assert worst < 10, "normal requests starved behind slow bodies"
    finally:
        for s in sockets:
            s.close()


def wait_for_workers(stack: Stack, containers: list[str], bound: float = 120) -> None:
    """Until /api/v1/workers lists a worker in each container (its name starts with the hostname)."""
    hostnames = {c[:12] for c in containers}
    t0 = time.monotonic()
    seen: set[str] = set()
    while time.monotonic() - t0 < bound:
        r = stack.http.get(f"{stack.base}/api/v1/workers", timeout=30)
        if r.status_code == 200:
            seen = {w["name"].split(".")[0] for w in r.json()}
            if hostnames <= seen:
                return
        time.sleep(0.5)
    raise AssertionError(f"workers of {sorted(hostnames)} not registered within {bound} s; saw {sorted(seen)}")


def test_three_worker_containers_share_the_work(stack: Stack) -> None:
    with stack.timings("--scale worker=3 until all three listen"):
        stack.compose("up", "-d", "--no-recreate", "--scale", "worker=3", timeout=600)
        workers = stack.containers("worker")
        assert len(workers) == 3, workers
        wait_for_workers(stack, workers)
    # Rounds of six jobs of ~1 s each (distinct ranges, so no segment is reused), until
    # every container has run one; with one process each they share them.
    with stack.timings("jobs spread over three worker containers"):
        used: set[str] = set()
        width, base = 3 * 10**9, 2 * 10**11
        for round_ in range(3):
            ranges = [(base + (6 * round_ + k) * width, base + (6 * round_ + k + 1) * width - 1) for k in range(6)]
            ids = [stack.submit("primes", json={"start": a, "end": b, "output": "count"})["id"] for a, b in ranges]
            for job_id, (a, b) in zip(ids, ranges, strict=True):
                assert stack.finished(job_id)["result"] == {"count": primes_between(a, b)}
                used |= stack.ran_on(job_id)
            if used >= set(workers):
                break
    stack.timings.note(f"worker containers that ran jobs: {len(used & set(workers))} of 3")
    assert used >= set(workers), f"only {len(used)} of 3 worker containers picked up jobs"


def test_a_killed_worker_containers_job_finishes_on_another(stack: Stack) -> None:
    start, end = 4 * 10**11, 4 * 10**11 + 4 * 10**10  # ~8 s on an idle core: the kill must land mid-run
    job = stack.submit("primes", json={"start": start, "end": end, "output": "count"})
    running = stack.poll(job["id"], lambda j: j["status"] == "started" and (j["progress"] or {}).get("done", 0) > 0,
                         bound=120)
    deadline = time.monotonic() + 30
    while not (found := stack.ran_on(job["id"])):
        assert time.monotonic() < deadline, "no worker container logged the job's start"
        time.sleep(0.5)
    (victim,) = found
    # Lost for good, like a host that died: no restart by Docker's policy, then SIGKILL.
    run(["docker", "update", "--restart=no", victim], timeout=60)
    run(["docker", "kill", victim], timeout=60)
    t_kill = time.monotonic()
    stack.timings.note(f"killed worker container {victim[:12]} at {running['progress']['percent']:.0f}% of its job")
    rerun = stack.poll(job["id"], lambda j: j["status"] == "started" and j.get("runs", 1) > running.get("runs", 1),
                       bound=120, every=0.5)
    stack.timings.add("kill -> the job running again on another container", time.monotonic() - t_kill)
    assert rerun["progress"]["done"] >= running["progress"]["done"], "re-run started before its checkpoint"
    done = stack.finished(job["id"], bound=300)
    stack.timings.add("kill -> the job finished on another container", time.monotonic() - t_kill)
    assert done["result"] == {"count": primes_between(start, end)}
    finishers = stack.ran_on(job["id"], "finished")
    assert finishers and victim not in finishers, (finishers, victim)
    # Back to three for the scenarios that follow.
    run(["docker", "rm", "-f", victim], timeout=60)
    stack.compose("up", "-d", "--no-recreate", "--scale", "worker=3", timeout=600)


def test_queued_jobs_survive_a_redis_restart(stack: Stack) -> None:
    stack.compose("stop", "worker", timeout=300)
    submitted = {
        "fib": stack.submit("fibonacci", json={"n": 4321}),
        "sort": stack.submit("sort", json={"numbers": [9, 7, 8, -1]}),
        "primes": stack.submit("primes", json={"start": 10**11, "end": 10**11 + 10**6, "output": "count"}),
    }
    for job in submitted.values():
        assert job["status"] == "queued", job
    run(["docker", "volume", "inspect", f"{stack.project}_redis-data"], timeout=60)  # the named volume
    with stack.timings("restart redis until the jobs answer again"):
        stack.compose("restart", "redis", timeout=300)
        for job in submitted.values():
            back = stack.poll(job["id"], lambda j: True, bound=120)
            assert back["status"] == "queued", back
    uptime = stack.compose("exec", "-T", "redis", "valkey-cli", "info", "server", timeout=60).stdout
    assert int(re.search(r"uptime_in_seconds:(\d+)", uptime).group(1)) < 120, "redis did not restart"
    aof = stack.compose("exec", "-T", "redis", "ls", "/data/appendonlydir", timeout=60).stdout.split()
    assert any(name.endswith(".aof") for name in aof), aof
    with stack.timings("workers back: the queued jobs run"):
        stack.compose("up", "-d", "--no-recreate", "--scale", "worker=3", timeout=600)
        results = {k: stack.finished(job["id"])["result"] for k, job in submitted.items()}
    value = fibonacci(4321)
    assert results["fib"] == {"n": 4321, "digits": len(str(value)), "value": str(value)}
    assert results["sort"] == [-1, 7, 8, 9]
    assert results["primes"] == {"count": primes_between(10**11, 10**11 + 10**6)}


def test_stop_and_up_resume_a_checkpointed_job(stack: Stack) -> None:
    start, end = 6 * 10**11, 6 * 10**11 + 4 * 10**10
    job = stack.submit("primes", json={"start": start, "end": end, "output": "count"})
    before = stack.poll(job["id"], lambda j: j["status"] == "started" and
                        (j["progress"] or {}).get("percent", 0) >= 10, bound=180)
    with stack.timings("docker compose stop (the running job checkpoints)"):
        stack.compose("stop", timeout=300)
    assert not stack.containers("worker") and not stack.containers("web")
    t0 = time.monotonic()
    stack.compose("up", "-d", "--scale", "worker=3", timeout=600)
    stack.timings.add("up again until ready through the proxy", time.monotonic() - t0 + stack.wait_ready())
    seen: list[dict[str, Any]] = []
    try:
        done = stack.poll(job["id"], lambda j: j["status"] in TERMINAL, bound=300, seen=seen, every=0.2)
    except AssertionError as e:
        raise AssertionError(f"{e}\nRedis holds:\n{stack.redis_state(job['id'])}") from None
    assert done["status"] == "finished", done
    assert done["result"] == {"count": primes_between(start, end)}
    low = min(j["progress"]["done"] for j in seen if j["progress"])
    stack.timings.note(f"stopped at {before['progress']['percent']:.0f}%; after up the progress never went "
                       f"below {100 * low / before['progress']['total']:.0f}%")
    assert low >= before["progress"]["done"], "the job started over instead of resuming from its checkpoint"


def test_down_v_removes_containers_network_and_volume(stack: Stack) -> None:
    with stack.timings("down -v"):
        stack.compose("down", "-v", "--remove-orphans", "--timeout", "20", timeout=300)
    label = f"label=com.docker.compose.project={stack.project}"
    assert not run(["docker", "ps", "-aq", "--filter", label], timeout=60).stdout.split()
    assert not run(["docker", "network", "ls", "-q", "--filter", label], timeout=60).stdout.split()
    assert not run(["docker", "volume", "ls", "-q", "--filter", label], timeout=60).stdout.split()
