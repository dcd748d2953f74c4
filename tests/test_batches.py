"""Batches end to end (real gunicorn, real workers, real Redis), plus the bounds checked in-process."""

from __future__ import annotations

import json
import math
import random
import time
import uuid
from pathlib import Path

import pytest
from redis import Redis

from infra.processes import Api, Workers
from jobs.settings import Settings
from jobs.store.admission import CLIENT_LIVE_KEY
from jobs.store.keys import (
    BATCH_JOBS_KEY,
    FINISHED_MINUTE_KEY,
    JOB_DURATION_KEY,
    JOB_KEY,
    JOBS_INDEX_KEY,
    LANE_CLIENT_KEY,
    LANE_CLIENTS_KEY,
    QUEUE_STATS_KEY,
    TYPE_STATS_KEY,
)
from rest import create_app
from tests.conftest import TEST_LIMITS, TEST_RATE_LIMITS, fib_reference
from tests.ranges import fresh_range

pytestmark = pytest.mark.e2e
PROBLEM = "application/problem+json"
COUNTS = ("queued", "started", "paused", "finished", "failed", "canceled")


def wait_batch(api: Api, batch_id: str, timeout: float = 180) -> dict:
    """Long-poll the batch until it is finished."""
    deadline = time.monotonic() + timeout
    while True:
        r = api.get(f"/api/v1/batches/{batch_id}?wait=10")
        assert r.status_code == 200, r.text
        batch = r.json()
        assert sum(batch["counts"].values()) == batch["total"], batch
        if batch["status"] == "finished":
            return batch
        assert time.monotonic() < deadline, f"batch {batch_id} still running: {batch['counts']}"


def all_items(api: Api, batch_id: str, limit: int = 100) -> list[dict]:
    jobs: list[dict] = []
    cursor = None
    while True:
        params = {"limit": limit, **({"cursor": cursor} if cursor else {})}
        r = api.get(f"/api/v1/batches/{batch_id}/jobs", params=params)
        assert r.status_code == 200, r.text
        page = r.json()
        assert len(page["jobs"]) <= limit
        jobs += page["jobs"]
        cursor = page["next_cursor"]
        if cursor is None:
            return jobs


_SMALL_PRIMES = [p for p in range(2, 10_000) if all(p % q for q in range(2, math.isqrt(p) + 1))]


def primes_between(lo: int, hi: int) -> list[int]:
    """The primes in [lo, hi] by a segmented sieve over small primes: an independent reference, fast for
    narrow ranges far from 0."""
    small = [p for p in _SMALL_PRIMES if p * p <= hi]
    seg = bytearray([1]) * (hi - lo + 1)
    for p in small:
        for m in range(max(p * p, (lo + p - 1) // p * p), hi + 1, p):
            seg[m - lo] = 0
    return [lo + i for i, flag in enumerate(seg) if flag and lo + i >= 2]


def mixed_items(count: int, seed: int) -> tuple[list[dict], list[object]]:
    """`count` items of every JSON type, distinct from other runs, with each one's expected result."""
    rng = random.Random(seed)
    salt = rng.randrange(10**5, 10**6)
    items: list[dict] = []
    expected: list[object] = []
    for i in range(count):
        kind = i % 4
        if kind == 0:
            n = salt + i
            items.append({"type": "fibonacci", "params": {"n": n % 5000}})
            v = fib_reference(n % 5000)
            expected.append({"n": n % 5000, "digits": len(str(v)), "value": str(v)})
        elif kind == 1:
            lo = salt * 10 + i * 7
            items.append({"type": "primes", "params": {"start": lo, "end": lo + 300}})
            expected.append(primes_between(lo, lo + 300))
        elif kind == 2:
            lo = salt * 10 + i * 11
            items.append({"type": "primes", "params": {"start": lo, "end": lo + 5000, "output": "count"}})
            expected.append({"count": len(primes_between(lo, lo + 5000))})
        else:
            nums = [rng.randrange(-10**6, 10**6) for _ in range(20)] + [salt + i, 2.5]
            desc = bool(i % 8 == 3)
            items.append({"type": "sort", "params": {"numbers": nums, "descending": desc}})
            expected.append(sorted(nums, reverse=desc))
    return items, expected


def test_a_batch_of_1000_mixed_items_every_result_in_order(api: Api) -> None:
    items, expected = mixed_items(1000, seed=uuid.uuid4().int)
    t0 = time.monotonic()
    r = api.post("/api/v1/batches", json={"jobs": items})
    assert r.status_code == 202, r.text
    body = r.json()
    assert r.headers["Location"] == f"/api/v1/batches/{body['id']}"
    assert body["total"] == 1000 and body["status"] in ("running", "finished")
    assert set(body["counts"]) == set(COUNTS)
    assert body["links"] == {"self": f"/api/v1/batches/{body['id']}", "jobs": f"/api/v1/batches/{body['id']}/jobs",
                             "events": f"/api/v1/batches/{body['id']}/events",
                             "cancel": f"/api/v1/batches/{body['id']}/cancel"}
    batch = wait_batch(api, body["id"])
    elapsed = time.monotonic() - t0
    assert batch["counts"]["finished"] == 1000, batch
    assert batch["ended_at"] is not None
    jobs = all_items(api, body["id"], limit=100)
    assert len(jobs) == 1000
    for i, (job, item, want) in enumerate(zip(jobs, items, expected, strict=True)):
        assert job["type"] == item["type"], i
        assert job["status"] == "finished", (i, job)
        assert job["result"] == want, (i, item, job["result"])
    print(f"\n1000 mixed items: submitted and finished in {elapsed:.2f} s")


def test_one_invalid_item_queues_nothing(api: Api, redis_conn: Redis) -> None:
    # Sort items around a fresh 15-digit number: no other test in the session Redis can have submitted
    # them (a random Fibonacci n from a few hundred could, and then "nothing queued" saw that job).
    u = uuid.uuid4().int % 10**15
    items = [{"type": "sort", "params": {"numbers": [u, i, -i]}} for i in range(5)]
    items[3] = {"type": "fibonacci", "params": {"n": -1}}
    items.append({"type": "nope", "params": {}})
    before = redis_conn.zcard(JOBS_INDEX_KEY)
    r = api.post("/api/v1/batches", json={"jobs": items})
    assert r.status_code == 422, r.text
    assert r.headers["Content-Type"].startswith(PROBLEM)
    locs = [e["loc"] for e in r.json()["errors"]]
    assert sorted({loc[1] for loc in locs}) == [3, 5]
    assert all(loc[0] == "jobs" for loc in locs)
    assert ["jobs", 3, "params", "n"] in locs and ["jobs", 5, "type"] in locs
    assert redis_conn.zcard(JOBS_INDEX_KEY) == before
    # The valid items were not queued: each one alone is a new job now.
    r = api.post("/api/v1/sort", json=items[0]["params"])
    assert r.status_code in (200, 202) and not r.json()["deduplicated"] and not r.json()["cached"], r.text


def test_the_same_batch_again_answers_200_all_cached(api: Api) -> None:
    items, expected = mixed_items(40, seed=uuid.uuid4().int)
    r = api.post("/api/v1/batches", json={"jobs": items}, headers={"Prefer": "wait=30"})
    assert r.status_code in (200, 202), r.text
    first = wait_batch(api, r.json()["id"])
    r = api.post("/api/v1/batches", json={"jobs": items})
    assert r.status_code == 200, r.text
    again = r.json()
    assert again["id"] != first["id"]
    assert again["status"] == "finished" and again["counts"]["finished"] == 40
    assert again["submitted"] == {"created": 0, "deduplicated": 0, "cached": 40}
    assert r.headers["Location"] == f"/api/v1/batches/{again['id']}"
    first_ids = [j["id"] for j in all_items(api, first["id"])]
    jobs = all_items(api, again["id"])
    assert [j["id"] for j in jobs] == first_ids  # the very jobs that ran, answered from cache
    assert [j["result"] for j in jobs] == expected


def test_prefer_wait_answers_200_with_the_finished_batch(api: Api) -> None:
    salt = random.randrange(10**6)
    items = [{"type": "fibonacci", "params": {"n": 20_000 + salt % 1000 + i}} for i in range(10)]
    r = api.post("/api/v1/batches", json={"jobs": items}, headers={"Prefer": "wait=30"})
    assert r.status_code == 200, r.text
    assert r.headers["Preference-Applied"] == "wait=30"
    assert r.json()["status"] == "finished" and r.json()["counts"]["finished"] == 10


def test_duplicate_items_count_once_each(api: Api) -> None:
    # A fresh number, so "created == 1" cannot meet a job another test already made for the same input.
    items = [{"type": "sort", "params": {"numbers": [uuid.uuid4().int % 10**15, 3, 1]}}] * 3
    r = api.post("/api/v1/batches", json={"jobs": items})
    assert r.status_code == 202, r.text
    assert r.json()["submitted"]["created"] == 1 and r.json()["submitted"]["deduplicated"] == 2
    batch = wait_batch(api, r.json()["id"])
    assert batch["counts"]["finished"] == 3 and batch["total"] == 3
    ids = {j["id"] for j in all_items(api, batch["id"])}
    assert len(ids) == 1


def test_canceling_a_batch_cancels_every_live_item(api: Api) -> None:
    base, _ = fresh_range(8 * 10**10)
    # Wide prime counts: seconds each, so most are still queued or running when the cancel comes.
    items = [{"type": "primes", "params": {"start": base + k * 10**10, "end": base + (k + 1) * 10**10,
                                           "output": "count"}} for k in range(8)]
    r = api.post("/api/v1/batches", json={"jobs": items})
    assert r.status_code == 202, r.text
    batch_id = r.json()["id"]
    t0 = time.monotonic()
    r = api.post(f"/api/v1/batches/{batch_id}/cancel")
    assert r.status_code == 200, r.text
    batch = wait_batch(api, batch_id, timeout=30)
    assert time.monotonic() - t0 < 10
    assert batch["counts"]["canceled"] + batch["counts"]["finished"] == 8
    assert batch["counts"]["canceled"] >= 6, batch
    statuses = [j["status"] for j in all_items(api, batch_id)]
    assert set(statuses) <= {"canceled", "finished"}
    assert statuses.count("canceled") == batch["counts"]["canceled"]
    r = api.post(f"/api/v1/batches/{batch_id}/cancel")
    assert r.status_code == 409


def test_batch_events_stream_ends_with_the_finished_batch(api: Api) -> None:
    salt = random.randrange(10**6)
    items = [{"type": "fibonacci", "params": {"n": 40_000 + salt % 1000 + i}} for i in range(30)]
    batch_id = api.post("/api/v1/batches", json={"jobs": items}).json()["id"]
    r = api.get(f"/api/v1/batches/{batch_id}/events", stream=True, timeout=60)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/event-stream")
    events = [line for line in r.iter_lines(decode_unicode=True) if line.startswith("data: ")]
    import json

    last = json.loads(events[-1][len("data: "):])
    assert last["id"] == batch_id and last["status"] == "finished" and last["counts"]["finished"] == 30


def test_unknown_batch_is_404(api: Api) -> None:
    for path in ("", "/jobs", "/events"):
        r = api.get(f"/api/v1/batches/{'0' * 32}{path}")
        assert r.status_code == 404 and r.headers["Content-Type"].startswith(PROBLEM), path


def test_batch_page_shows_counts_progress_and_items(api: Api) -> None:
    salt = random.randrange(10**6)
    items = [{"type": "fibonacci", "params": {"n": 50_000 + salt % 1000 + i}} for i in range(60)]
    batch_id = api.post("/api/v1/batches", json={"jobs": items}, headers={"Prefer": "wait=30"}).json()["id"]
    wait_batch(api, batch_id)
    r = api.get(f"/batches/{batch_id}", headers={"Accept": "text/html"})
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
    assert "<progress" in r.text and "Page 1 of 2" in r.text and batch_id in r.text
    r = api.get(f"/batches/{batch_id}?page=2")
    assert r.status_code == 200 and "Jobs 51\u201360 of 60" in r.text


# -- bounds, in-process against the same Redis (another database) ------------------------------------


@pytest.fixture
def url(redis_url: str) -> str:
    url = f"{redis_url.rpartition('/')[0]}/11"
    Redis.from_url(url).flushdb()
    return url


def make_app(url: str, **settings):
    return create_app(settings=Settings(redis_url=url, limits=TEST_LIMITS, wait_slots=2,
                                        **{**TEST_RATE_LIMITS, **settings}))


def test_a_batch_over_the_live_bound_is_refused_whole(url: str) -> None:
    app = make_app(url, max_queued_per_client=10)
    c = app.test_client()
    items = [{"type": "fibonacci", "params": {"n": i}} for i in range(11)]
    r = c.post("/api/v1/batches", json={"jobs": items})
    assert r.status_code == 429 and r.headers["Retry-After"], r.text
    assert Redis.from_url(url).zcard(JOBS_INDEX_KEY) == 0
    r = c.post("/api/v1/batches", json={"jobs": items[:6]})
    assert r.status_code == 202, r.text
    r = c.post("/api/v1/batches", json={"jobs": items[6:]})  # 6 live + 5 > 10
    assert r.status_code == 429, r.text
    assert Redis.from_url(url).zcard(JOBS_INDEX_KEY) == 6


def test_a_batch_of_several_chunks_writes_what_one_submit_per_item_would(url: str) -> None:
    """ITEMS_LUA applies some writes once per chunk (the client's live count summed, rq's queue set and the
    lane's waiting client once, the batch's list in one push): the state must be what 600 single submits
    would leave, duplicates joined, order kept, across three chunks (CHUNK = 250)."""
    conn = Redis.from_url(url)
    c = make_app(url).test_client()
    seed = uuid.uuid4().int % 80_000  # db 11 starts empty (url); fresh numbers all the same
    items = [{"type": "fibonacci", "params": {"n": 10_000 + seed + i % 550}} for i in range(600)]  # 50 twice
    r = c.post("/api/v1/batches", json={"jobs": items})
    assert r.status_code == 202, r.get_data(as_text=True)
    assert r.json["submitted"]["created"] == 550 and r.json["submitted"]["deduplicated"] == 50
    ids = [j.decode() for j in conn.lrange(BATCH_JOBS_KEY.format(id=r.json["id"]), 0, -1)]
    assert len(ids) == 600 and ids[550:] == ids[:50] and len(set(ids)) == 550
    assert [json.loads(conn.hget(JOB_KEY.format(id=i), "params")) for i in ids[:2]] == [
        {"n": 10_000 + seed}, {"n": 10_001 + seed}]
    live = CLIENT_LIVE_KEY.format(client="127.0.0.1")
    assert int(conn.get(live)) == 550 and 0 < conn.ttl(live) <= 7 * 86_400
    line = [r.decode() for r in conn.lrange(LANE_CLIENT_KEY.format(lane="fast", client="127.0.0.1"), 0, -1)]
    assert line == [f"{i}-1" for i in ids[:550]]
    assert conn.zscore(LANE_CLIENTS_KEY.format(lane="fast"), "127.0.0.1") is not None
    assert conn.llen("rq:queue:fast") == 550 and conn.sismember("rq:queues", "rq:queue:fast")
    bid = r.json["id"]  # a job that is two items of the batch names it twice (it counts twice there)
    assert [conn.hget(JOB_KEY.format(id=i), "batches").decode() for i in ids[:550]] == (
        [f"{bid} {bid}"] * 50 + [bid] * 500)
    batch = c.get(f"/api/v1/batches/{r.json['id']}").json
    assert batch["counts"]["queued"] == 600 and batch["status"] == "running"


def test_counters_of_runs_taken_several_at_a_time_add_up(url: str, log_dir: Path) -> None:
    """A worker takes fast runs several at a time and writes their counters once per take (Tally): after a
    batch of 300 trivial jobs on two real workers, every counter a finish keeps has grown by exactly 300,
    rq's per-worker counts too, and both workers read idle with no current job."""
    conn = Redis.from_url(url)
    c = make_app(url).test_client()
    keys = (QUEUE_STATS_KEY.format(name="fast"), TYPE_STATS_KEY.format(type="fibonacci"))
    workers = Workers(url, log_dir, count=2, name="tally-workers").start()
    try:
        r = c.post("/api/v1/batches", json={"jobs": [{"type": "fibonacci", "params": {"n": n}} for n in range(300)]})
        assert r.status_code == 202, r.get_data(as_text=True)
        deadline = time.monotonic() + 120
        while c.get(f"/api/v1/batches/{r.json['id']}?wait=5").json["status"] != "finished":
            assert time.monotonic() < deadline, "the batch did not finish"
        worker_keys = list(conn.smembers("rq:workers"))

        def settled() -> bool:  # the last take's counters are written with its last finish, or just before
            return (sum(int(conn.hget(k, "successful_job_count") or 0) for k in worker_keys) == 300
                    and all(conn.hget(k, "state") == b"idle" and not conn.hexists(k, "current_job")
                            for k in worker_keys))
        while not settled():
            assert time.monotonic() < deadline, [conn.hgetall(k) for k in worker_keys]
            time.sleep(0.05)
        assert [int(conn.hget(k, "finished")) for k in keys] == [300, 300]
        duration = {k.decode(): float(v) for k, v in conn.hgetall(JOB_DURATION_KEY.format(type="fibonacci")).items()}
        assert duration["count"] == 300 and 0 < duration["sum"] < 300
        assert sum(v for k, v in duration.items() if k not in ("count", "sum")) == 300
        minutes = [int(conn.get(k)) for k in conn.scan_iter(FINISHED_MINUTE_KEY.format(minute="*"))]
        assert sum(minutes) == 300
        assert all(conn.ttl(k) > 0 for k in conn.scan_iter(FINISHED_MINUTE_KEY.format(minute="*")))
        assert int(conn.get(CLIENT_LIVE_KEY.format(client="127.0.0.1"))) == 0
    finally:
        workers.stop()


def test_a_batch_spends_one_unit_of_the_submit_budget(url: str) -> None:
    app = make_app(url, rate_limit_submit="3/minute")
    c = app.test_client()
    for k in range(3):
        items = [{"type": "fibonacci", "params": {"n": 100 * k + i}} for i in range(50)]
        assert c.post("/api/v1/batches", json={"jobs": items}).status_code == 202
    r = c.post("/api/v1/batches", json={"jobs": [{"type": "fibonacci", "params": {"n": 1}}]})
    assert r.status_code == 429 and r.headers["Retry-After"]


def test_batch_shape_errors(url: str) -> None:
    app = make_app(url, max_batch_jobs=5)
    c = app.test_client()
    cases = [
        ({"jobs": []}, ["jobs"]),
        ({"jobs": [{"type": "fibonacci", "params": {"n": 1}}] * 6}, ["jobs"]),
        ({"jobs": "x"}, ["jobs"]),
        ({"jobs": [{"type": "csv", "params": {}}]}, ["jobs", 0, "type"]),
        ({"jobs": [{"type": "fibonacci", "params": {"n": True}}]}, ["jobs", 0, "params", "n"]),
        ({"jobs": [{"type": "fibonacci", "params": {"n": 1}, "extra": 1}]}, ["jobs", 0, "extra"]),
        ({"jobs": [{"type": "fibonacci", "params": {"n": 1}}], "other": 1}, ["other"]),
    ]
    for body, loc in cases:
        r = c.post("/api/v1/batches", json=body)
        assert r.status_code == 422, (body, r.text)
        assert loc in [e["loc"] for e in r.get_json()["errors"]], (body, r.get_json())
    assert c.post("/api/v1/batches", data=b"{", content_type="application/json").status_code == 400
    assert c.post("/api/v1/batches", data=b"{}", content_type="text/plain").status_code == 415
    assert Redis.from_url(url).zcard(JOBS_INDEX_KEY) == 0


def test_deleting_a_live_item_counts_it_canceled(api: Api) -> None:
    base, _ = fresh_range(3 * 10**10)
    items = [{"type": "primes", "params": {"start": base, "end": base + 3 * 10**10, "output": "count"}},
             {"type": "fibonacci", "params": {"n": 60_000 + random.randrange(10**5)}}]
    batch_id = api.post("/api/v1/batches", json={"jobs": items}).json()["id"]
    slow = all_items(api, batch_id)[0]
    assert api.delete(f"/api/v1/jobs/{slow['id']}").status_code == 204
    batch = wait_batch(api, batch_id, timeout=60)
    assert batch["counts"]["canceled"] == 1 and batch["counts"]["finished"] == 1, batch
    jobs = all_items(api, batch_id)
    assert jobs[0] == {"id": slow["id"], "status": None, "expired": True}


def test_the_cli_sends_a_fib_range_and_a_jsonl_file_as_batches(api: Api, tmp_path) -> None:
    import subprocess
    import sys

    lo = 1000 + random.randrange(10**4)
    out = subprocess.run([sys.executable, "-m", "client", "--url", api.base, "-q", "fib", f"{lo}..{lo + 20}"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(fib_reference(n)) for n in range(lo, lo + 21)]
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"type": "sort", "params": {"numbers": [3, 1, 2]}}\n\n# a comment\n'
                    f'{{"type": "primes", "params": {{"start": {lo}, "end": {lo + 100}, "output": "count"}}}}\n')
    out = subprocess.run([sys.executable, "-m", "client", "--url", api.base, "-q", "batch", str(jobs)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["1 2 3", str(len(primes_between(lo, lo + 100)))]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"type": "fibonacci", "params": {"n": -1}}\n')
    out = subprocess.run([sys.executable, "-m", "client", "--url", api.base, "batch", str(bad)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "jobs[0].params.n" in out.stderr, out.stderr


def test_with_tokens_a_batch_is_its_owners_alone(url: str) -> None:
    from rest.auth import hash_token

    tokens = {"alice": "alice-token-" + "a" * 20, "bob": "bob-token-" + "b" * 20}
    app = make_app(url, api_tokens=",".join(f"{o}:{hash_token(t)}" for o, t in tokens.items()))
    c = app.test_client()
    alice = {"Authorization": f"Bearer {tokens['alice']}"}
    bob = {"Authorization": f"Bearer {tokens['bob']}"}
    r = c.post("/api/v1/batches", json={"jobs": [{"type": "fibonacci", "params": {"n": 77}}]}, headers=alice)
    assert r.status_code == 202, r.text
    batch_id = r.get_json()["id"]
    assert c.get(f"/api/v1/batches/{batch_id}", headers=alice).status_code == 200
    for path in ("", "/jobs"):
        assert c.get(f"/api/v1/batches/{batch_id}{path}", headers=bob).status_code == 404
    assert c.post(f"/api/v1/batches/{batch_id}/cancel", headers=bob).status_code == 404
    assert c.get(f"/api/v1/batches/{batch_id}").status_code == 401
    job = c.get(f"/api/v1/batches/{batch_id}/jobs", headers=alice).get_json()["jobs"][0]
    assert c.get(f"/api/v1/jobs/{job['id']}", headers=alice).status_code == 200
    assert c.get(f"/api/v1/jobs/{job['id']}", headers=bob).status_code == 404


def test_concurrent_batches_sharing_items_make_one_job_each_and_exact_counts(api: Api) -> None:
    import threading

    base = 80_000 + random.randrange(10**5)
    # Four batches over overlapping ranges of n, sent at the same moment: shared items are one job.
    ranges = [range(base + 50 * k, base + 50 * k + 200) for k in range(4)]
    ids: list[str] = [""] * 4
    barrier = threading.Barrier(4)

    def send(k: int) -> None:
        barrier.wait()
        r = Api(api.base).post("/api/v1/batches",
                               json={"jobs": [{"type": "fibonacci", "params": {"n": n % 90_000}} for n in ranges[k]]})
        assert r.status_code in (200, 202), r.text
        ids[k] = r.json()["id"]

    threads = [threading.Thread(target=send, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    by_n: dict[int, set[str]] = {}
    for k, batch_id in enumerate(ids):
        batch = wait_batch(api, batch_id)
        assert batch["total"] == 200 and batch["counts"]["finished"] == 200, batch
        for n, job in zip(ranges[k], all_items(api, batch_id), strict=True):
            assert job["result"]["n"] == n % 90_000
            by_n.setdefault(n % 90_000, set()).add(job["id"])
    assert all(len(jobs) == 1 for jobs in by_n.values()), "an n ran as more than one job"


# -- owners (API_TOKENS on, a real gunicorn): batch items share finished results across owners as single POSTs do --


OWNER_TOKENS = {"dora": "dora-token-" + "d" * 24, "emil": "emil-token-" + "e" * 24}


@pytest.fixture(scope="module")
def owners_web(redis_url: str, log_dir, workers):
    from infra.processes import Web
    from rest.auth import hash_token

    w = Web(redis_url, log_dir, WEB_PROCESSES=1,
            API_TOKENS=",".join(f"{o}:{hash_token(t)}" for o, t in OWNER_TOKENS.items()))
    w.log_path = log_dir / "web-batch-owners.log"
    w.start()
    yield w
    w.stop()


def as_owner(web, owner: str) -> Api:
    api = Api(web.url)
    api.s.headers["Authorization"] = f"Bearer {OWNER_TOKENS[owner]}"
    return api


def finished(api: Api, job_id: str) -> dict:
    job = api.wait_done(job_id)
    assert job["status"] == "finished", job
    return job


def test_batch_items_get_another_owners_finished_result_as_a_copy_as_single_posts_do(owners_web) -> None:
    dora, emil = as_owner(owners_web, "dora"), as_owner(owners_web, "emil")
    salt = uuid.uuid4().int
    fib = {"n": 10_000 + salt % 50_000}
    lo = 10**8 + salt % 10**8
    count = {"start": lo, "end": lo + 100_000, "output": "count"}
    numbers = {"numbers": [salt % 10**15, 5, -3]}
    # Dora's own single POSTs, finished: fibonacci and a primes count (public inputs), a sort (her own data).
    mine = {name: finished(dora, dora.post(f"/api/v1/{name}", json=body).json()["id"])
            for name, body in (("fibonacci", fib), ("primes", count), ("sort", numbers))}
    fresh = {"n": 60_000 + salt % 30_000}
    items = [{"type": "fibonacci", "params": fib}, {"type": "primes", "params": count},
             {"type": "sort", "params": numbers}, {"type": "fibonacci", "params": fresh}]
    r = emil.post("/api/v1/batches", json={"jobs": items})
    assert r.status_code == 202, r.text
    # Shared as Emil's own POSTs would be: the two public results are copies (cached, ids of his own); the
    # sort carries Dora's data and is never answered from her job; the fresh item is a new job.
    assert r.json()["submitted"] == {"created": 2, "deduplicated": 0, "cached": 2}, r.json()
    batch = wait_batch(emil, r.json()["id"])
    assert batch["counts"]["finished"] == 4, batch
    jobs = all_items(emil, batch["id"])
    assert [j["result"] for j in jobs[:3]] == [mine["fibonacci"]["result"], mine["primes"]["result"],
                                              [-3, 5, salt % 10**15]]
    assert not {j["id"] for j in jobs} & {m["id"] for m in mine.values()}, "Emil never sees Dora's ids"
    assert all(dora.get(f"/api/v1/jobs/{j['id']}").status_code == 404 for j in jobs), "and she never sees his"
    assert all(emil.get(f"/api/v1/jobs/{j['id']}").status_code == 200 for j in jobs)
    # The other way: the job Emil's batch created is offered to Dora once finished, as a single POST's is.
    r = dora.post("/api/v1/fibonacci", json=fresh)
    assert r.status_code == 200 and r.json()["cached"] is True, r.text
    assert r.json()["id"] != jobs[3]["id"] and r.json()["result"] == jobs[3]["result"]
    # A batch of public items all finished by another owner answers 200 at once, all cached.
    r = dora.post("/api/v1/batches", json={"jobs": [items[3], items[0]]})
    assert r.status_code == 200, r.text
    assert r.json()["submitted"] == {"created": 0, "deduplicated": 0, "cached": 2}
    assert r.json()["status"] == "finished"
    again = all_items(dora, r.json()["id"])
    assert [j["result"] for j in again] == [jobs[3]["result"], mine["fibonacci"]["result"]]
    assert again[1]["id"] == mine["fibonacci"]["id"], "her own finished job answers her own item, not a copy"
