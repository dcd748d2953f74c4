"""End to end: real gunicorn, real RQ workers, real Redis, checked against independent references."""

from __future__ import annotations

import math
import random
import sys
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from redis import Redis

from infra.processes import Api
from jobs.store.keys import JOBS_INDEX_KEY
from tests.conftest import fib_reference
from tests.ranges import fresh_range

pytestmark = pytest.mark.e2e
rng = random.Random()


# -- independent references -----------------------------------------------------

def fib_mod(n: int, m: int) -> int:
    """F(n) mod m by fast doubling, independent of GMP."""
    def fd(k: int) -> tuple[int, int]:
        if k == 0:
            return 0, 1
        a, b = fd(k >> 1)
        c = a * ((2 * b - a) % m) % m
        d = (a * a + b * b) % m
        return (d, (c + d) % m) if k & 1 else (c, d)
    return fd(n)[0]


def primes_reference(lo: int, hi: int) -> list[int]:
    """Plain sieve of Eratosthenes over [0, hi], sliced."""
    if hi < 2:
        return []
    sieve = bytearray([1]) * (hi + 1)
    sieve[0:2] = b"\x00\x00"
    for p in range(2, math.isqrt(hi) + 1):
        if sieve[p]:
            sieve[p * p :: p] = bytes(len(range(p * p, hi + 1, p)))
    return [i for i in range(max(lo, 2), hi + 1) if sieve[i]]


def fresh_numbers() -> dict:
    """A sort no other test submitted (a random 15-digit head), for a test that needs a new job (queued,
    202, newest): a random Fibonacci n from a few thousand can meet an earlier test's finished job in
    the session Redis and come back cached."""
    return {"numbers": [uuid.uuid4().int % 10**15, 2, 1]}


def submit(api: Api, kind: str, body: dict, wait: int | None = None) -> tuple[int, dict]:
    headers = {"Prefer": f"wait={wait}"} if wait else {}
    r = api.post(f"/api/v1/{kind}", json=body, headers=headers)
    assert r.status_code in (200, 202), r.text
    return r.status_code, r.json()


def result_json(api: Api, job: dict) -> object:
    r = api.get(job["result_url"])
    assert r.status_code == 200, r.text
    return r.json()


# -- results against references -------------------------------------------------

def test_fibonacci_one_round_trip_with_prefer_wait(api: Api) -> None:
    # A fresh n: an n another test of the session computed (the 1,000-item batch alone makes 250 F(n) below
    # 5,000) answers from the cache, 200 with "cached": true and no wait to apply. Seen once in a full run.
    for _ in range(50):
        n = rng.randrange(2000, 5000)
        r = api.post("/api/v1/fibonacci", json={"n": n}, headers={"Prefer": "wait=10"})
        assert r.status_code == 200, r.text
        if not r.json()["cached"]:
            break
    assert r.headers["Preference-Applied"] == "wait=10"
    job = r.json()
    assert job["status"] == "finished"
    assert job["result"] == {"n": n, "digits": len(str(fib_reference(n))), "value": str(fib_reference(n))}
    assert job["duration_ms"] is not None and job["duration_ms"] >= 0
    assert job["created_at"].endswith("Z") and job["started_at"] and job["ended_at"]
    assert job["error"] is None and job["cached"] is False


@pytest.mark.parametrize("n", [0, 1, 2, 93, 94])
def test_fibonacci_small_values(api: Api, n: int) -> None:
    _, job = submit(api, "fibonacci", {"n": n}, wait=10)
    assert job["result"]["value"] == str(fib_reference(n))


def test_fibonacci_large_value_is_served_from_result_url(api: Api) -> None:
    n = 6_000_000 + rng.randrange(1000)
    status, job = submit(api, "fibonacci", {"n": n}, wait=30)
    assert status == 200 and job["status"] == "finished"
    assert job["result"] is None, "results over 1 MiB are not inlined"
    value = result_json(api, job)["value"]
    phi = (1 + math.sqrt(5)) / 2
    assert len(value) == math.floor(n * math.log10(phi) - math.log10(math.sqrt(5))) + 1
    assert int(value[-18:]) == fib_mod(n, 10**18)
    txt = api.get(job["result_url"] + "?format=txt")
    assert txt.text.strip() == value


def test_primes_list_and_count_match_reference(api: Api) -> None:
    for _ in range(3):
        lo = rng.randrange(0, 200_000)
        hi = lo + rng.randrange(0, 50_000)
        expected = primes_reference(lo, hi)
        _, job = submit(api, "primes", {"start": lo, "end": hi}, wait=20)
        assert job["status"] == "finished", job
        assert job["result"] == expected
        _, job = submit(api, "primes", {"start": lo, "end": hi, "output": "count"}, wait=20)
        assert job["result"] == {"count": len(expected)}


def test_primes_edges(api: Api) -> None:
    for lo, hi, expected in [(0, 0, []), (0, 1, []), (2, 2, [2]), (0, 10, [2, 3, 5, 7]), (14, 16, []),
                             (7919, 7919, [7919])]:
        _, job = submit(api, "primes", {"start": lo, "end": hi}, wait=20)
        assert job["result"] == expected, (lo, hi)


def test_sort_matches_sorted_with_exact_types(api: Api) -> None:
    numbers: list[int | float] = [rng.randrange(-10**6, 10**6) for _ in range(300)]
    numbers += [rng.uniform(-1e6, 1e6) for _ in range(300)]
    numbers += [2**70 + 1, -(2**80) - 3, 1.0, 1, 0.5, -0.0]
    rng.shuffle(numbers)
    for descending in (False, True):
        _, job = submit(api, "sort", {"numbers": numbers, "descending": descending}, wait=20)
        assert job["status"] == "finished", job
        got = job["result"]
        expected = sorted(numbers, reverse=descending)
        assert got == expected
        assert [type(x) for x in got] == [type(x) for x in expected] or sorted(map(repr, got)) == sorted(
            map(repr, expected))
        assert 2**70 + 1 in got and any(isinstance(x, float) and x == 1.0 for x in got)


def test_sort_from_file_upload(api: Api) -> None:
    data = "5, 3\n1 4\t2\n\n10,9"
    r = api.post("/api/v1/sort", files={"file": ("numbers.txt", data)}, headers={"Prefer": "wait=10"})
    assert r.status_code in (200, 202), r.text
    job = api.wait_done(r.json()["id"]) if r.status_code == 202 else r.json()
    assert job["result"] == [1, 2, 3, 4, 5, 9, 10]


# -- cache and dedupe -----------------------------------------------------------

def test_identical_finished_request_is_a_cache_hit(api: Api, redis_conn: Redis) -> None:
    n = rng.randrange(10_000, 20_000)
    _, first = submit(api, "fibonacci", {"n": n}, wait=10)
    assert first["status"] == "finished"
    before = redis_conn.zcard(JOBS_INDEX_KEY)
    r = api.post("/api/v1/fibonacci", json={"n": n})
    assert r.status_code == 200
    hit = r.json()
    assert hit["cached"] is True and hit["id"] == first["id"] and hit["result"] == first["result"]
    assert redis_conn.zcard(JOBS_INDEX_KEY) == before, "a cache hit creates no job"


def test_thirty_identical_requests_at_once_create_one_job(api: Api, redis_conn: Redis) -> None:
    lo, hi = fresh_range(3 * 10**8)
    body = {"start": lo, "end": hi, "output": "count"}
    barrier = threading.Barrier(30)
    answers: list[tuple[int, dict]] = []
    lock = threading.Lock()

    def one() -> None:
        local = Api(api.base)
        barrier.wait()
        r = local.post("/api/v1/primes", json=body)
        with lock:
            answers.append((r.status_code, r.json()))

    before = redis_conn.zcard(JOBS_INDEX_KEY)
    threads = [threading.Thread(target=one) for _ in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(answers) == 30
    ids = {job["id"] for _, job in answers}
    assert len(ids) == 1, f"{len(ids)} jobs created for one request"
    assert redis_conn.zcard(JOBS_INDEX_KEY) == before + 1
    created = [job for status, job in answers if status == 202 and not job["deduplicated"]]
    assert len(created) == 1
    assert all(job["deduplicated"] or job["cached"] for status, job in answers if job is not created[0])
    done = api.wait_done(ids.pop())
    assert done["status"] == "finished"


def test_in_flight_identical_request_joins(api: Api) -> None:
    lo, hi = fresh_range(10**9)
    body = {"start": lo, "end": hi, "output": "count"}
    s1, first = submit(api, "primes", body)
    s2, second = submit(api, "primes", body)
    assert s1 == 202 and first["deduplicated"] is False
    assert second["id"] == first["id"]
    assert (s2 == 202 and second["deduplicated"] is True) or (s2 == 200 and second["cached"] is True)
    api.wait_done(first["id"])


# -- long-poll ------------------------------------------------------------------

def test_long_poll_returns_when_the_job_ends(api: Api) -> None:
    lo, hi = fresh_range(2 * 10**9)
    _, job = submit(api, "primes", {"start": lo, "end": hi, "output": "count"})
    t0 = time.monotonic()
    r = api.get(f"/api/v1/jobs/{job['id']}?wait=30")
    elapsed = time.monotonic() - t0
    assert r.status_code == 200
    assert r.json()["status"] == "finished"
    # Functional, not a speed check: it answered on completion, well before the 30 s timeout.
    assert elapsed < 25


def test_long_poll_times_out_with_current_state(api: Api, workers) -> None:
    workers.stop()
    try:
        _, job = submit(api, "sort", fresh_numbers())
        r = api.get(f"/api/v1/jobs/{job['id']}?wait=1")
        assert r.status_code == 200 and r.json()["status"] == "queued"
    finally:
        workers.start()
    assert api.wait_done(job["id"])["status"] == "finished"


def test_many_waiting_clients_do_not_starve_submissions(api: Api, workers) -> None:
    workers.stop()
    try:
        _, held = submit(api, "sort", fresh_numbers())
        stop = threading.Event()
        waiting = []

        def waiter() -> None:
            local = Api(api.base)
            while not stop.is_set():
                r = local.get(f"/api/v1/jobs/{held['id']}?wait=30", timeout=60)
                waiting.append(r.status_code)

        threads = [threading.Thread(target=waiter, daemon=True) for _ in range(100)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        for _ in range(5):
            r = api.post("/api/v1/sort", json=fresh_numbers(), timeout=10)
            assert r.status_code == 202, r.text
            assert api.get("/healthz", timeout=10).status_code == 200
        stop.set()
    finally:
        workers.start()
    assert api.wait_done(held["id"])["status"] == "finished"
    for t in threads:
        t.join(timeout=40)
    assert all(code == 200 for code in waiting)


# -- large results and paging ---------------------------------------------------

def test_large_result_pages_and_formats(api: Api) -> None:
    hi = 2_000_000
    expected = primes_reference(0, hi)
    _, job = submit(api, "primes", {"start": 0, "end": hi}, wait=30)
    assert job["status"] == "finished"
    assert job["result"] is None, "148,933 items are over the inline limit"
    r = api.get(job["result_url"])
    assert r.headers["X-Total-Count"] == str(len(expected))
    assert int(r.headers["Content-Length"]) == len(r.content)
    assert r.json() == expected
    for offset, limit in [(0, 10), (1000, 500), (65_530, 20), (len(expected) - 3, 10), (len(expected), 5)]:
        page = api.get(f"{job['result_url']}?offset={offset}&limit={limit}")
        assert page.status_code == 200
        assert page.json() == expected[offset : offset + limit], (offset, limit)
    csv = api.get(f"{job['result_url']}?format=csv&offset=5&limit=3")
    assert csv.headers["Content-Type"].startswith("text/csv")
    assert csv.text.splitlines() == ["prime"] + [str(p) for p in expected[5:8]]
    txt = api.get(f"{job['result_url']}?format=txt")
    assert txt.text.split() == [str(p) for p in expected]


def test_job_list_newest_first_with_cursor(api: Api) -> None:
    ids = []
    for _ in range(5):
        _, job = submit(api, "sort", fresh_numbers(), wait=10)
        ids.append(job["id"])
    first = api.get("/api/v1/jobs?type=sort&limit=3").json()
    assert [j["id"] for j in first["jobs"]] == ids[::-1][:3]
    assert first["next_cursor"]
    second = api.get(f"/api/v1/jobs?type=sort&limit=2&cursor={first['next_cursor']}").json()
    assert [j["id"] for j in second["jobs"]] == ids[::-1][3:5]
    finished = api.get("/api/v1/jobs?status=finished&limit=50").json()["jobs"]
    assert all(j["status"] == "finished" for j in finished)


def test_queues_and_workers_endpoints(api: Api) -> None:
    queues = api.get("/api/v1/queues").json()
    assert {q["name"] for q in queues} == {"fast", "default"}
    for q in queues:
        assert {"name", "queued", "started", "finished", "failed", "canceled", "workers"} <= q.keys()
        assert q["workers"] >= 1
    workers = api.get("/api/v1/workers").json()
    assert len(workers) >= 2
    assert {"name", "state", "queues", "current_job", "last_heartbeat"} <= workers[0].keys()
    ready = api.get("/readyz").json()
    assert ready["workers"] >= 2


def test_queue_jobs_in_dispatch_order(api: Api, workers) -> None:
    workers.stop()
    try:
        ids = [submit(api, "sort", fresh_numbers())[1]["id"] for _ in range(3)]
        listed = [j["id"] for j in api.get("/api/v1/queues/fast/jobs").json()["jobs"]]
        assert listed[-3:] == ids
        assert api.get("/api/v1/queues/nope/jobs").status_code == 404
    finally:
        workers.start()
    for i in ids:
        assert api.wait_done(i)["status"] == "finished"


# -- surviving restarts -----------------------------------------------------------

def test_jobs_survive_a_web_restart(api: Api, web) -> None:
    _, job = submit(api, "fibonacci", {"n": rng.randrange(80_000, 90_000)}, wait=10)
    web.stop()
    web.start()
    again = Api(web.url).get(f"/api/v1/jobs/{job['id']}").json()
    assert again["status"] == "finished" and again["result"] == job["result"]


def wait_until_started(api: Api, job_id: str, timeout: float = 60) -> None:
    """Until a worker runs the job; fails at once if it already ended (the test needs it mid-run)."""
    deadline = time.monotonic() + timeout
    while (job := api.get(f"/api/v1/jobs/{job_id}").json())["status"] != "started":
        assert job["status"] == "queued", f"the job had to be running here: {job}"
        assert time.monotonic() < deadline, job
        time.sleep(0.05)


def test_running_job_survives_a_worker_restart(api: Api, workers) -> None:
    # Wide enough (seconds of sieving) that the stop lands mid-job even on a slow or busy machine.
    lo, hi = fresh_range(4 * 10**10)
    body = {"start": lo, "end": hi, "output": "count"}
    _, job = submit(api, "primes", body)
    wait_until_started(api, job["id"])
    workers.stop()  # SIGTERM: the running job checkpoints and goes back to the queue
    try:
        state = api.get(f"/api/v1/jobs/{job['id']}").json()
        assert state["status"] == "queued", state
    finally:
        workers.start()  # whatever happened: the tests after this one need the workers
    done = api.wait_done(job["id"], timeout=180)
    assert done["status"] == "finished"
    assert done["runs"] >= 2, "the job ran again after the restart"
    # Same range split differently by two uninterrupted jobs must agree with the resumed one.
    mid = lo + 3 * 10**9 + 12345
    _, a = submit(api, "primes", {"start": lo, "end": mid, "output": "count"}, wait=30)
    _, b = submit(api, "primes", {"start": mid + 1, "end": hi, "output": "count"}, wait=30)
    a, b = api.wait_done(a["id"]), api.wait_done(b["id"])
    assert done["result"]["count"] == a["result"]["count"] + b["result"]["count"]


def test_killed_worker_job_is_recovered(api: Api, workers) -> None:
    lo, hi = fresh_range(4 * 10**10)
    _, job = submit(api, "primes", {"start": lo, "end": hi, "output": "count"})
    wait_until_started(api, job["id"])
    workers.kill()  # SIGKILL to supervisor, workers and horses: no one cleans up
    try:
        assert api.get(f"/api/v1/jobs/{job['id']}").json()["status"] == "started"
    finally:
        workers.start()
    done = api.wait_done(job["id"], timeout=240)
    assert done["status"] == "finished", done
    assert done["attempt"] == 1


def test_queued_jobs_survive_a_redis_restart(api: Api, workers, redis_server) -> None:
    workers.stop()
    try:
        bodies = [fresh_numbers() for _ in range(3)]
        jobs = [submit(api, "sort", body)[1] for body in bodies]
        time.sleep(1.2)  # appendfsync everysec: give the append-only file its second
        redis_server.stop()
        redis_server.start()
    finally:
        workers.start()
    for job, body in zip(jobs, bodies, strict=True):
        done = api.wait_done(job["id"])
        assert done["status"] == "finished"
        assert done["result"] == sorted(body["numbers"])


@pytest.fixture(autouse=True)
def _big_ints() -> Iterator[None]:
    old = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    yield
    sys.set_int_max_str_digits(old)


def test_overlapping_prime_ranges_reuse_sieved_segments(api: Api) -> None:
    from primes import SEGMENT_SPAN

    base = SEGMENT_SPAN * rng.randrange(20_000, 30_000)  # a fresh part of the grid
    a = {"start": base, "end": base + 6 * 10**7, "output": "count"}
    b = {"start": base + 4 * 10**7, "end": base + 10**8, "output": "count"}
    whole = {"start": base, "end": base + 10**8, "output": "count"}
    _, first = submit(api, "primes", a, wait=30)
    _, second = submit(api, "primes", b, wait=30)
    assert first["stats"]["sieved"] > 0 and second["stats"]["reused"] >= 1
    _, third = submit(api, "primes", whole, wait=30)
    assert third["status"] == "finished"
    assert third["stats"]["sieved"] == 0, third["stats"]
    assert third["stats"]["reused"] >= 3
    _, listed = submit(api, "primes", {"start": base + 5 * 10**7, "end": base + 5 * 10**7 + 10**5}, wait=30)
    from primes import count_primes
    assert third["result"]["count"] == count_primes(base, base + 10**8)
    assert len(api.get(listed["result_url"]).json()) == count_primes(base + 5 * 10**7, base + 5 * 10**7 + 10**5)
