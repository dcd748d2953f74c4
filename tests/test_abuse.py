"""Abusive clients against a real gunicorn (issue 17): slow bodies on 1,000 sockets, an over-budget
100 MB upload refused before it is sent, and the errors gunicorn answers itself as problem+json.

Latencies are printed (run with -s to see them) and asserted generously; the target is 2 s."""

from __future__ import annotations

import json
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import requests

from infra.processes import Web

pytestmark = pytest.mark.e2e

#: Sockets trickling bodies; the contract's figure.
SLOW_SOCKETS = 1000


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of one HTTP/1.1 response (Content-Length framed); skips a 100 Continue."""
    buf = b""
    while True:
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed before the headers: {buf!r}")
            buf += chunk
        head, _, body = buf.partition(b"\r\n\r\n")
        if head.startswith(b"HTTP/1.1 100"):
            buf = body
            continue
        break
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body


class SlowBodies:
    """Sockets that each send complete headers, then their body one byte at a time, every 0.5 s."""

    def __init__(self, port: int, count: int, length: int = 10_000) -> None:
        self.head = (f"POST /api/v1/fibonacci HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {length}\r\n\r\n").encode()
        self.socks: list[socket.socket] = []
        for _ in range(count):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(self.head + b'{"n": 5, "pad": "')
            s.setblocking(False)
            self.socks.append(s)
        self.cut = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            for s in list(self.socks):
                try:
                    s.send(b"a")
                except OSError:  # cut off by the server, or its buffer is full: either way it is held
                    if s.fileno() < 0:
                        continue
            self.stop.wait(0.5)

    def __enter__(self) -> SlowBodies:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        for s in self.socks:
            s.close()


@pytest.fixture(scope="module")
def edge_web(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Web]:
    """The default web (2 processes x 256 threads), with a submit budget small enough to cross."""
    w = Web(redis_url, tmp_path_factory.mktemp("edge-web"), RATE_LIMIT_SUBMIT="5/minute").start()
    yield w
    w.stop()


def test_slow_bodies_on_a_thousand_sockets_do_not_delay_other_clients(edge_web: Web) -> None:
    latencies: dict[str, list[float]] = {"GET /healthz": [], "GET /api/v1/jobs": [], "GET /api/v1/queues": [],
                                         "POST /api/v1/fibonacci": []}
    with SlowBodies(edge_web.port, SLOW_SOCKETS):
        time.sleep(3)  # every slow socket is past its body grace and waiting for (or holding) a body slot
        end = time.monotonic() + 10
        while time.monotonic() < end:
            for what in latencies:
                method, path = what.split()
                t0 = time.perf_counter()
                r = requests.request(method, edge_web.url + path, json={"n": 10} if method == "POST" else None,
                                     timeout=30)
                latencies[what].append(time.perf_counter() - t0)
                # The POSTs spend this client's small budget: a quick 429 is an answer too.
                assert r.status_code in ((200, 202, 429) if method == "POST" else (200,)), (what, r.status_code)
            time.sleep(0.1)
    print(f"\nwith {SLOW_SOCKETS} sockets trickling bodies:")
    worst = 0.0
    for what, times in latencies.items():
        times.sort()
        worst = max(worst, times[-1])
        print(f"  {what:<20} n={len(times):3d} median {statistics.median(times) * 1000:7.1f} ms  "
              f"p95 {times[int(len(times) * 0.95) - 1] * 1000:7.1f} ms  max {times[-1] * 1000:7.1f} ms")
    assert worst < 2.0 * 2.5, f"a normal request took {worst:.2f} s (target 2 s)"
    assert edge_web.alive


def _over_budget(web: Web) -> None:
    """Spend the 5/minute submit budget of 127.0.0.1 (this process's requests all come from it)."""
    for _ in range(10):
        r = requests.post(web.url + "/api/v1/fibonacci", json={"n": 3}, timeout=30)
        if r.status_code == 429:
            return
    raise AssertionError("the budget was never exhausted")


@pytest.mark.parametrize("expect", [True, False], ids=["expect-100-continue", "headers-only"])
def test_an_over_budget_100_mb_upload_is_refused_before_its_body_is_sent(edge_web: Web, expect: bool) -> None:
    _over_budget(edge_web)
    with socket.create_connection(("127.0.0.1", edge_web.port), timeout=30) as sock:
        t0 = time.perf_counter()
        sock.sendall(b"POST /api/v1/sort HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100000000\r\n" + (b"Expect: 100-continue\r\n" if expect else b"") + b"\r\n")
        status, headers, body = read_response(sock)  # not one byte of the body sent
        took = time.perf_counter() - t0
    how = "Expect" if expect else "headers only"
    print(f"\nover budget, 100 MB announced ({how}): {status} in {took * 1000:.0f} ms")
    assert status == 429, body
    assert headers["content-type"].startswith("application/problem+json")
    assert int(headers["retry-after"]) >= 1
    assert json.loads(body)["type"].endswith("rate-limit")


def test_expect_100_continue_gets_its_continue_when_the_app_reads_the_body(redis_url: str, tmp_path: Path) -> None:
    """Within budget, an upload that waits for 100 Continue gets it, and then its answer."""
    w = Web(redis_url, tmp_path, WEB_PROCESSES=1, WEB_THREADS=8).start()
    try:
        body = json.dumps({"numbers": list(range(100_000, 0, -1))}).encode()
        with socket.create_connection(("127.0.0.1", w.port), timeout=30) as sock:
            sock.sendall(b"POST /api/v1/sort HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body))
            assert sock.recv(64).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
            sock.sendall(body)
            status, _, data = read_response(sock)
        assert status in (200, 202), data
    finally:
        w.stop()


@pytest.mark.parametrize("raw, status", [
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n", 431),
    (b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", 400),
    (b"GARBAGE\r\n\r\n", 400),
])
def test_errors_gunicorn_answers_itself_are_problem_json(edge_web: Web, raw: bytes, status: int) -> None:
    with socket.create_connection(("127.0.0.1", edge_web.port), timeout=30) as sock:
        sock.sendall(raw)
        got, headers, body = read_response(sock)
    assert got == status, (got, body[:200])
    assert headers["content-type"] == "application/problem+json", headers
    problem = json.loads(body)
    assert problem["status"] == status and problem["title"] and problem["detail"], problem


def test_headers_that_never_end_get_a_408_problem(redis_url: str, tmp_path: Path) -> None:
    w = Web(redis_url, tmp_path, WEB_PROCESSES=1, REQUEST_HEADER_TIMEOUT=1).start()
    try:
        with socket.create_connection(("127.0.0.1", w.port), timeout=30) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
            status, headers, body = read_response(sock)
        assert status == 408 and headers["content-type"] == "application/problem+json", body
    finally:
        w.stop()


def test_requests_in_flight_are_drained_on_shutdown(tmp_path: Path) -> None:
    """SIGTERM during a 6 s long-poll: the poll is answered, not reset (no workers: the job stays queued)."""
    from infra.embedded_redis import EmbeddedRedis

    redis = EmbeddedRedis(tmp_path / "redis").start()
    w = Web(redis.url, tmp_path, WEB_PROCESSES=1).start()
    try:
        job = requests.post(w.url + "/api/v1/fibonacci", json={"n": 1234}, timeout=30).json()
        answers: list[object] = []

        def poll() -> None:
            try:
                answers.append(requests.get(f"{w.url}/api/v1/jobs/{job['id']}?wait=6", timeout=30))
            except requests.RequestException as exc:
                answers.append(exc)

        t = threading.Thread(target=poll)
        t.start()
        time.sleep(1)
        t0 = time.monotonic()
        w.stop()
        t.join()
        print(f"\nstopped in {time.monotonic() - t0:.1f} s with a long-poll in flight")
        assert isinstance(answers[0], requests.Response) and answers[0].status_code == 200, answers
        assert answers[0].json()["status"] == "queued"
    finally:
        w.stop()
        redis.stop()


def test_peak_memory_of_web_and_redis_for_four_concurrent_big_sorts(tmp_path: Path) -> None:
    """Four clients each POST 10^7 numbers (79 MB of JSON) at once; the peak RSS of the web (all
    gunicorn processes) and of Redis is sampled every 50 ms and printed.

    Target: web under 1.5 GiB, Redis under 1 GiB. Why: one 10^7-number body peaks at 0.3-0.7 GiB
    in the web while it is decoded and packed, and each web process takes one big upload at a time
    (REQUEST_BIG_BODY_SLOTS=1), so 2 processes hold at most 2 of them plus their idle ~0.1 GiB
    each, whatever the number of clients (the issue measured 1.9 GiB for three on one process).
    Redis holds each job's input (8 bytes a number, 80 MB) and result (80 MB) once: 4 x 160 MB =
    640 MB at most, less as results replace inputs. Measured: web 0.93 GiB (largest process 0.50),
    Redis 0.41 GiB."""
    from infra.embedded_redis import EmbeddedRedis
    from infra.processes import Workers

    redis = EmbeddedRedis(tmp_path / "redis").start()
    workers = Workers(redis.url, tmp_path, count=2).start()
    w = Web(redis.url, tmp_path).start()
    try:
        web_procs = [psutil.Process(w.proc.pid), *psutil.Process(w.proc.pid).children()]
        redis_proc = psutil.Process(redis.proc.pid)
        peak = {"web": 0, "redis": 0, "web process": 0}
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                rss = [p.memory_info().rss for p in web_procs if p.is_running()]
                peak["web"] = max(peak["web"], sum(rss))
                peak["web process"] = max(peak["web process"], max(rss))
                peak["redis"] = max(peak["redis"], redis_proc.memory_info().rss)
                stop.wait(0.05)

        n = 10**7
        bodies = [b'{"numbers": [' + b",".join(b"%d" % ((i * 7919 + k) % n) for i in range(n)) + b"]}"
                  for k in range(4)]
        answers: list[int] = []

        def post(body: bytes) -> None:
            r = requests.post(w.url + "/api/v1/sort", data=body, headers={"Content-Type": "application/json"},
                              timeout=600)
            answers.append(r.status_code)
            if r.status_code in (200, 202):
                done = requests.get(f"{w.url}/api/v1/jobs/{r.json()['id']}?wait=30", timeout=60).json()
                while done["status"] not in ("finished", "failed"):
                    done = requests.get(f"{w.url}/api/v1/jobs/{r.json()['id']}?wait=30", timeout=60).json()
                answers.append(done["status"] == "finished")

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t0 = time.perf_counter()
        threads = [threading.Thread(target=post, args=(b,)) for b in bodies]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        took = time.perf_counter() - t0
        stop.set()
        sampler.join()
        gib = 1 << 30
        print(f"\n4 concurrent 10^7-number sorts ({len(bodies[0]) / 1e6:.0f} MB of JSON each), {took:.0f} s: "
              f"peak RSS web {peak['web'] / gib:.2f} GiB (largest process {peak['web process'] / gib:.2f} GiB), "
              f"Redis {peak['redis'] / gib:.2f} GiB; targets 1.5 and 1 GiB")
        assert answers.count(202) + answers.count(200) == 4 and answers.count(True) == 4, answers
        assert peak["web"] < 1.5 * gib and peak["redis"] < 1 * gib, peak
    finally:
        w.stop()
        workers.stop()
        redis.stop()


def test_the_storage_quota_counts_inputs_and_results_and_is_released(tmp_path: Path) -> None:
    """Real workers: each finished sort holds its input and its result; past MAX_STORED_BYTES_PER_CLIENT
    the next submission is 429 with nothing queued; deleting the jobs gives the room back."""
    from redis import Redis

    from infra.embedded_redis import EmbeddedRedis
    from infra.processes import Workers
    from jobs.store.quota import STORED_TOTAL_KEY

    redis = EmbeddedRedis(tmp_path / "redis").start()
    workers = Workers(redis.url, tmp_path, count=1).start()
    w = Web(redis.url, tmp_path, WEB_PROCESSES=1, MAX_STORED_BYTES_PER_CLIENT=100_000).start()
    conn = Redis.from_url(redis.url)
    total = STORED_TOTAL_KEY.format(client="127.0.0.1")
    try:
        ids, held, refused = [], [], None
        for k in range(20):
            r = requests.post(w.url + "/api/v1/sort", json={"numbers": list(range(k * 10**6 + 2000, k * 10**6, -1))},
                              headers={"Prefer": "wait=30"}, timeout=60)
            if r.status_code == 429:
                refused = r
                break
            assert r.status_code == 200 and r.json()["status"] == "finished", r.text
            ids.append(r.json()["id"])
            held.append(int(conn.get(total) or 0))
        print(f"\nstorage quota 100,000 bytes: {len(ids)} sorts of 2,000 numbers held {held} bytes, then "
              f"{refused.status_code if refused is not None else 'none refused'}")
        assert refused is not None and refused.json()["type"].endswith("storage-quota"), held
        per = held[0]
        assert per > 16_000 + 8_000, per  # the 16 KB input and the result both count
        jobs_before = conn.zcard("crunch:jobs")
        probe = {"numbers": list(range(99 * 10**6 + 2000, 99 * 10**6, -1))}
        assert requests.post(w.url + "/api/v1/sort", json=probe, timeout=30).status_code == 429
        assert conn.zcard("crunch:jobs") == jobs_before  # nothing created, nothing queued
        for job_id in ids:
            assert requests.delete(f"{w.url}/api/v1/jobs/{job_id}", timeout=30).status_code == 204
        assert int(conn.get(total) or 0) == 0
        again = requests.post(w.url + "/api/v1/sort", json=probe, timeout=30)
        assert again.status_code in (200, 202), again.text
    finally:
        w.stop()
        workers.stop()
        redis.stop()
