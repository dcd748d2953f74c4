"""Scheduling end to end: the fast lane beside long jobs, fair share between clients, preemption, queue position.

A real gunicorn with API_TOKENS (two owners, two clients) and a real `worker.py` with two workers, on
their own Redis database (no other test's workers take these jobs). PREEMPT_QUANTUM is 1 s here so a
preemption happens within a test's time. Long jobs are prime counts high up (about 0.25 s per 10^9
numbers per core), each on its own range so no job reuses another's stored segments.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import requests

from infra.processes import Api, Web, Workers
from rest.auth import hash_token
from tests.conftest import TEST_LIMITS
from tests.ranges import WEB_ENV, fresh_range

ROOT = Path(__file__).resolve().parent.parent
RUN = os.urandom(3).hex()
ALICE, BOB = f"alice-{RUN}", f"bob-{RUN}"
ALICE_TOKEN, BOB_TOKEN = "a-" + os.urandom(24).hex(), "b-" + os.urandom(24).hex()
API_TOKENS = f"{ALICE}:{hash_token(ALICE_TOKEN)},{BOB}:{hash_token(BOB_TOKEN)}"
AS_ALICE = {"Authorization": f"Bearer {ALICE_TOKEN}"}
AS_BOB = {"Authorization": f"Bearer {BOB_TOKEN}"}
WORKERS = 2
#: pi(10^11) and pi(10^10): known values (OEIS A006880), independent of the sieve under test.
PI_1E11, PI_1E10 = 4_118_054_813, 455_052_511


@pytest.fixture(scope="module")
def url(redis_url: str) -> str:
    return f"{redis_url.rpartition('/')[0]}/9"


@pytest.fixture(scope="module")
def stack(url: str, log_dir: Path) -> Iterator[tuple[Web, Workers]]:
    workers = Workers(url, log_dir, count=WORKERS, name="workers-scheduling", HEARTBEAT_TIMEOUT=5,
                      PREEMPT_QUANTUM=1).start()
    # Whole jobs here (FANOUT_MIN_SECONDS=0): these tests are about dispatching runs; split jobs are
    # tests/test_fanout.py's.
    web = Web(url, log_dir, API_TOKENS=API_TOKENS, FANOUT_MIN_SECONDS=0, **WEB_ENV).start()
    try:
        deadline = time.monotonic() + 60
        while len(requests.get(web.url + "/api/v1/workers", headers=AS_ALICE, timeout=10).json()) < WORKERS:
            assert time.monotonic() < deadline, workers.tail()
            time.sleep(0.2)
        yield web, workers
    finally:
        web.stop()
        workers.stop()


@pytest.fixture
def api(stack: tuple[Web, Workers]) -> Iterator[Api]:
    a = Api(stack[0].url)
    yield a
    # Leave the workers idle for the next test: cancel whatever this test left running or queued.
    for headers in (AS_ALICE, AS_BOB):
        for status in ("started", "queued"):
            for job in a.get(f"/api/v1/jobs?status={status}&limit=100", headers=headers).json()["jobs"]:
                a.post(f"/api/v1/jobs/{job['id']}/cancel", headers=headers)


def submit(api: Api, headers: dict[str, str], path: str, body: dict[str, Any], wait: int = 0) -> requests.Response:
    h = {**headers, "Content-Type": "application/json"}
    if wait:
        h["Prefer"] = f"wait={wait}"
    r = api.post(path, json=body, headers=h)
    assert r.status_code in (200, 202), r.text
    return r


def count_job(api: Api, headers: dict[str, str], start: int, end: int) -> str:
    return submit(api, headers, "/api/v1/primes", {"start": start, "end": end, "output": "count"}).json()["id"]


def job(api: Api, headers: dict[str, str], job_id: str) -> dict[str, Any]:
    r = api.get(f"/api/v1/jobs/{job_id}", headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


def wait_for(what: str, pred: Any, timeout: float = 90, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every)


def started(api: Api, headers: dict[str, str], ids: list[str]) -> bool:
    return all(job(api, headers, i)["status"] == "started" for i in ids)


def test_cheap_jobs_finish_within_prefer_wait_while_every_worker_runs_a_long_sieve(api: Api) -> None:
    longs = [count_job(api, AS_ALICE, *fresh_range(60 * 10**9)) for _ in range(WORKERS)]
    wait_for("both long sieves to start", lambda: started(api, AS_ALICE, longs))
    took = []
    for i in range(10):
        t0 = time.perf_counter()
        n = 10_000 + (int(RUN, 16) + i) % 90_000  # F(n) with n <= 10^5, not computed before in this run
        r = submit(api, AS_BOB, "/api/v1/fibonacci", {"n": n}, wait=10)
        took.append((time.perf_counter() - t0) * 1000)
        assert r.status_code == 200, f"trivial job {i} answered {r.status_code} behind the long sieves: {r.text}"
        assert r.json()["status"] == "finished"
        numbers = [(i * 7919 + k * 104729 + int(RUN, 16)) % 100_003 for k in range(1000)]
        sort = submit(api, AS_BOB, "/api/v1/sort", {"numbers": numbers}, wait=10)
        assert sort.status_code == 200 and sort.json()["status"] == "finished", sort.text
    # The long sieves ran the whole time: the cheap jobs did not wait for a worker to come free.
    assert started(api, AS_ALICE, longs)
    took.sort()
    print(f"\nfib beside {WORKERS} long sieves: POST with Prefer: wait=10 -> 200 in "
          f"p50 {took[len(took) // 2]:.0f} ms, max {took[-1]:.0f} ms")


def test_a_second_client_starts_before_the_first_clients_backlog_is_half_done(api: Api) -> None:
    backlog = [count_job(api, AS_ALICE, *fresh_range(6 * 10**9)) for _ in range(8)]
    bob = count_job(api, AS_BOB, *fresh_range(2 * 10**9))
    b = wait_for("Bob's job to end", lambda: (j := job(api, AS_BOB, bob))["status"] == "finished" and j, 120)
    alice = [wait_for("Alice's job to end", lambda i=i: (j := job(api, AS_ALICE, i))["status"] == "finished" and j,
                      180) for i in backlog]
    done_before = [a for a in alice if a["ended_at"] < b["started_at"]]
    assert len(done_before) < len(backlog) // 2, (
        f"Bob's job started after {len(done_before)} of Alice's {len(backlog)} jobs had ended")
    print(f"\nBob's job started after {len(done_before)} of Alice's {len(backlog)} queued jobs had ended "
          f"(FIFO: after {len(backlog) - WORKERS + 1})")


def test_a_preempted_sieve_counts_exactly_what_an_uninterrupted_one_does(api: Api) -> None:
    # Both workers on Alice's counts with known answers; Bob's jobs then wait, and Alice runs more than
    # Bob, so after PREEMPT_QUANTUM one of hers goes back to the queue at a checkpoint.
    pis = {count_job(api, AS_ALICE, 0, 10**11): PI_1E11,
           count_job(api, AS_ALICE, 10**10 + 1, 10**11): PI_1E11 - PI_1E10}
    wait_for("Alice's counts to start", lambda: started(api, AS_ALICE, list(pis)))
    bobs = [count_job(api, AS_BOB, *fresh_range(2 * 10**9)) for _ in range(2)]
    ends = {i: wait_for("Alice's count to end", lambda i=i: (j := job(api, AS_ALICE, i))["status"] == "finished" and j,
                        300) for i in pis}
    for i in bobs:
        wait_for("Bob's job to end", lambda i=i: job(api, AS_BOB, i)["status"] == "finished", 120)
    assert sum(e["preemptions"] for e in ends.values()) >= 1, "no preemption happened"
    for i, expected in pis.items():
        assert ends[i]["result"] == {"count": expected}, ends[i]
    print("\npreemptions:", {i[:8]: e["preemptions"] for i, e in ends.items()})


def test_position_counts_down_to_zero_in_the_order_the_queue_lists(api: Api) -> None:
    longs = [count_job(api, AS_ALICE, *fresh_range(12 * 10**9)) for _ in range(WORKERS)]
    wait_for("the workers to be busy", lambda: started(api, AS_ALICE, longs))
    backlog = [count_job(api, AS_ALICE, *fresh_range(4 * 10**9)) for _ in range(5)]

    def snapshot() -> tuple[list[str], dict[str, Any]] | None:
        listed = [j["id"] for j in api.get("/api/v1/queues/default/jobs", headers=AS_ALICE).json()["jobs"]]
        positions = {i: job(api, AS_ALICE, i)["position"] for i in backlog}
        again = [j["id"] for j in api.get("/api/v1/queues/default/jobs", headers=AS_ALICE).json()["jobs"]]
        return (listed, positions) if listed == again else None

    listed, positions = wait_for("a stable snapshot", snapshot)
    queued = [i for i in listed if i in positions]
    assert queued == [i for i in backlog if positions[i] is not None]
    for i in queued:
        assert positions[i] == listed.index(i), (positions, listed)
    # The CLI says the same, with Alice's token from $CRUNCH_TOKEN (both workers are on her long counts).
    out = subprocess.run([sys.executable, "-m", "client", "--url", api.base, "status", backlog[-1]], cwd=ROOT,
                         text=True, capture_output=True, timeout=60, env={**os.environ, "CRUNCH_TOKEN": ALICE_TOKEN})
    assert out.returncode == 0, out.stderr
    line = re.search(r"waiting: (\d+) ahead, all (\d+) workers busy", out.stdout)
    assert line and int(line.group(2)) == WORKERS and int(line.group(1)) <= len(backlog) - 1, out.stdout
    out = subprocess.run([sys.executable, "-m", "client", "--url", api.base, "status", backlog[-1]], cwd=ROOT,
                         text=True, capture_output=True, timeout=60, env={**os.environ, "CRUNCH_TOKEN": ""})
    assert out.returncode != 0 and "401" in out.stderr, (out.stdout, out.stderr)
    last = backlog[-1]
    seen = []
    while (j := job(api, AS_ALICE, last))["status"] == "queued":
        if not seen or seen[-1] != j["position"]:
            seen.append(j["position"])
        time.sleep(0.05)
    assert j["position"] is None
    assert seen == sorted(seen, reverse=True) and seen[-1] == 0 and seen[0] >= 4, seen
    print("\nposition of the last job over time:", seen)


class Unserved(NamedTuple):
    """A JobService on a database no worker serves (nothing but the test dispatches there)."""

    svc: Any
    conn: Any
    app: Any


@pytest.fixture
def unserved(redis_url: str) -> Iterator[Unserved]:
    """In-process, on database 10 (flushed before and after), inside the app's context."""
    from redis import Redis

    from rest import create_app
    from rest.extensions import service
    from rest.settings import Settings
    from tests.conftest import TEST_RATE_LIMITS

    url = f"{redis_url.rpartition('/')[0]}/10"
    conn = Redis.from_url(url)
    conn.flushdb()
    app = create_app(settings=Settings(redis_url=url, limits=TEST_LIMITS, wait_slots=4, **TEST_RATE_LIMITS))
    with app.app_context():
        yield Unserved(service(), conn, app)
    conn.flushdb()


def test_dispatch_takes_runs_in_the_listed_order_and_positions_count_it(unserved: Unserved) -> None:
    """The claim behind `position` and /queues/{name}/jobs: DISPATCH's choices, one after another, follow
    the static order (client's running count + index, join time, client). In-process, on a database no
    worker serves, so nothing but this test dispatches."""
    from jobs.store.dispatch import client_of, job_ids, rq_list
    from jobs.store.keys import CLIENT_RUNNING_KEY
    from jobs.types.registry import JOB_TYPES

    svc, conn, app = unserved.svc, unserved.conn, unserved.app
    # c1 already runs two runs, c2 one, c3 none; each queues a few jobs, interleaved in time.
    conn.zadd(CLIENT_RUNNING_KEY.format(client="c1"), {"x-1": 1, "x-2": 1})
    conn.zadd(CLIENT_RUNNING_KEY.format(client="c2"), {"y-1": 1})
    ids = []
    for k, client in enumerate(["c1", "c2", "c1", "c3", "c2", "c1", "c3", "c2", "c1"]):
        sub = JOB_TYPES["primes"].parse_json({"start": k * 10**7, "end": (k + 1) * 10**7, "output": "count"},
                                             TEST_LIMITS)
        sub.extra["client"] = client
        ids.append(svc.submit(sub).rec.id)
        time.sleep(0.002)  # distinct join times
    listed = svc.overview.queue_job_ids("default")
    assert sorted(listed) == sorted(ids)
    for i, job_id in enumerate(listed):
        assert svc.resource(svc.get(job_id))["position"] == i
    page = app.test_client().get(f"/jobs/{listed[3]}")
    assert page.status_code == 200 and "Waiting: 3 ahead, no worker running." in page.text, page.text
    taken = []
    while (popped := conn.lpop(rq_list("default"))) is not None:
        [run] = svc.life.dispatch("default", popped.decode())
        taken.append(run)
        rec = svc.get(job_ids([run])[0])
        assert rec.status.value == "queued" and svc.resource(rec)["position"] == 0  # dispatched, not started
        assert conn.zscore(CLIENT_RUNNING_KEY.format(client=client_of(rec)), run) is not None
    assert job_ids(taken) == listed
    assert svc.overview.queue_job_ids("default") == [] and conn.llen(rq_list("default")) == 0


def test_a_take_of_several_runs_keeps_the_order_and_rq_list_holds_only_waiting_runs(unserved: Unserved) -> None:
    """The fast lane's take of several runs per dispatch (FAST_TAKE): the runs follow the same order as
    one dispatch at a time; two workers whose pops cross (each pops the entry of the run the other gets)
    leave rq's list holding exactly the waiting runs' ids, so no entry for a finished run circulates;
    and runs given back by a worker that stops go back to the head of their lines, in order."""
    from jobs.store.dispatch import DISPATCH_SHARE, job_ids, rq_list
    from jobs.store.keys import LANE_CLIENT_KEY, LANE_SINCE_KEY
    from jobs.types.registry import JOB_TYPES

    svc, conn = unserved.svc, unserved.conn

    def consistent() -> None:
        listed = sorted(e.decode() for e in conn.lrange(rq_list("fast"), 0, -1))
        assert listed == sorted(k.decode() for k in conn.hkeys(LANE_SINCE_KEY.format(lane="fast")))

    for k in range(40):
        sub = JOB_TYPES["fibonacci"].parse_json({"n": 10 + k}, TEST_LIMITS)
        sub.extra["client"] = ("c1", "c2", "c3")[k % 3] if k < 30 else "c1"
        svc.submit(sub)
        time.sleep(0.002)  # distinct join times
    order = svc.overview.queue_job_ids("fast")
    assert len(order) == 40
    consistent()
    # Two workers' pops cross: each gets the run whose entry the other popped.
    a, b = conn.lpop(rq_list("fast")).decode(), conn.lpop(rq_list("fast")).decode()
    taken = svc.life.dispatch("fast", b) + svc.life.dispatch("fast", a)
    consistent()
    assert job_ids(taken) == order[:2]
    # One take of several: at most one per DISPATCH_SHARE waiting runs, in the listed order.
    waiting = conn.hlen(LANE_SINCE_KEY.format(lane="fast"))
    many = svc.life.dispatch("fast", conn.lpop(rq_list("fast")).decode(), most=16)
    assert len(many) == min(16, waiting // DISPATCH_SHARE) == 9
    consistent()
    assert job_ids(many) == order[2:11]
    def lines() -> dict[str, list[str]]:
        return {c: job_ids([r.decode() for r in conn.lrange(LANE_CLIENT_KEY.format(lane="fast", client=c), 0, -1)])
                for c in ("c1", "c2", "c3")}

    before = lines()
    # The worker stops after starting none of the last four: each goes back to the head of its
    # client's line, in the order they were taken, on a new run id.
    returned = many[5:]
    assert svc.life.undispatch(returned) == 4
    consistent()
    after = lines()
    for c in ("c1", "c2", "c3"):
        mine = [j for j in job_ids(returned) if svc.get(j).extra["client"] == c]
        assert after[c] == mine + before[c], c
    assert all(svc.get(j).rq_id not in returned for j in job_ids(returned))
    waiting = [*job_ids(returned), *(j for line in before.values() for j in line)]
    assert sorted(svc.overview.queue_job_ids("fast")) == sorted(waiting)


def test_the_waiting_line_reads_the_same_in_the_cli_and_on_the_page() -> None:
    from client.cli import waiting
    from jobs.overview import waiting_phrase

    busy = [{"state": "busy", "queues": ["fast", "default"]}] * 3
    assert waiting(4, "default", busy) == waiting_phrase(4, 3, 3) == "waiting: 4 ahead, all 3 workers busy"
    some = [*busy[:1], {"state": "idle", "queues": ["fast", "default"]}]
    assert waiting(0, "default", some) == waiting_phrase(0, 2, 1) == "waiting: 0 ahead, 1 of 2 workers busy"
    assert waiting(2, "default", []) == waiting_phrase(2, 0, 0) == "waiting: 2 ahead, no worker running"


def test_the_reaper_puts_back_a_run_whose_worker_died_between_dispatch_and_start(unserved: Unserved) -> None:
    """Lifecycle.heal_dispatch, as every supervisor's reaper calls it: a run taken off the lane but never
    started goes back to the head of its client's line on a new run id; a deleted job's entry just goes."""
    from jobs.store.dispatch import rq_list
    from jobs.store.keys import CLIENT_RUNNING_KEY
    from jobs.types.registry import JOB_TYPES

    svc, conn = unserved.svc, unserved.conn
    recs = []
    for k in range(2):
        sub = JOB_TYPES["primes"].parse_json({"start": 0, "end": 10**7 + k, "output": "count"}, TEST_LIMITS)
        sub.extra["client"] = "c1"
        recs.append(svc.submit(sub).rec)
    runs = [svc.life.dispatch("default", conn.lpop(rq_list("default")).decode())[0] for _ in recs]
    assert runs == [r.rq_id for r in recs]
    svc.delete(recs[1].id)  # gone before its worker started it
    running = CLIENT_RUNNING_KEY.format(client="c1")
    assert conn.zcard(running) == 2
    assert svc.life.heal_dispatch() == 0  # dispatched just now: its worker may still start it
    assert svc.life.heal_dispatch(now=time.time() + svc.settings.heartbeat_timeout + 1) == 2
    again = svc.get(recs[0].id)
    assert again.status.value == "queued" and again.rq_id != runs[0]
    assert svc.resource(again)["position"] == 0 and svc.overview.queue_job_ids("default") == [recs[0].id]
    assert conn.zcard(running) == 0 and conn.llen(rq_list("default")) == 1


def test_a_recovered_or_requeued_job_waits_at_the_head_of_its_clients_line(unserved: Unserved) -> None:
    """A running job that loses its worker (the reaper's recover) or is re-queued by a worker's shutdown
    goes back before its client's jobs that were submitted after it, not behind them."""
    from jobs.store.commands import Commands
    from jobs.store.dispatch import rq_list
    from jobs.types.registry import JOB_TYPES

    svc, conn = unserved.svc, unserved.conn
    ids = []
    for k in range(3):
        sub = JOB_TYPES["primes"].parse_json({"start": 0, "end": 10**7 + k, "output": "count"}, TEST_LIMITS)
        sub.extra["client"] = "c1"
        ids.append(svc.submit(sub).rec.id)
        time.sleep(0.002)

    def start_first() -> None:
        [run] = svc.life.dispatch("default", conn.lpop(rq_list("default")).decode())
        job_id = run.rsplit("-", 1)[0]
        assert svc.life.start(job_id, run, "w1", time.time(), Commands()).took
        assert svc.get(job_id).status.value == "started"

    start_first()
    assert svc.overview.queue_job_ids("default") == ids[1:]
    assert svc.life.recover(now=time.time() + svc.settings.heartbeat_timeout + 5) == [ids[0]]
    assert svc.overview.queue_job_ids("default") == ids
    assert [svc.resource(svc.get(j))["position"] for j in ids] == [0, 1, 2]
    start_first()
    assert svc.life.requeue(svc.get(ids[0]), "1.0")
    assert svc.overview.queue_job_ids("default") == ids


def test_a_preempted_csv_sort_gives_the_same_file(api: Api, tmp_path: Path) -> None:
    """CSV checkpoints too: with both workers on Alice's jobs (a CSV sort and a count) and Bob's jobs
    waiting, her runs are preempted in turn; the CSV result is then compared, byte for byte, with the
    same sort run without preemption (a date filter that keeps every row makes it a distinct request)."""
    import hashlib

    from tests.test_csv_job import write_big_csv

    path = tmp_path / "big.csv"
    write_big_csv(path, 40 << 20, int(RUN, 16))

    def csv_job(headers: dict[str, str], **fields: str) -> str:
        with open(path, "rb") as fh:
            r = api.post("/api/v1/csv", files={"file": ("big.csv", fh, "text/csv")}, data=fields, headers=headers,
                         timeout=300)
        assert r.status_code in (200, 202), r.text
        return r.json()["id"]

    def finished(headers: dict[str, str], i: str, timeout: float = 300) -> dict[str, Any]:
        return wait_for("a job to finish", lambda: (j := job(api, headers, i))["status"] == "finished" and j, timeout)

    sort = csv_job(AS_ALICE, sort_by="amount")
    count = count_job(api, AS_ALICE, *fresh_range(40 * 10**9))
    wait_for("Alice's jobs to start", lambda: started(api, AS_ALICE, [sort, count]))
    bobs = [count_job(api, AS_BOB, *fresh_range(2 * 10**9)) for _ in range(4)]
    preempted = finished(AS_ALICE, sort)
    for i in bobs:
        finished(AS_BOB, i)
    api.post(f"/api/v1/jobs/{count}/cancel", headers=AS_ALICE)
    plain = finished(AS_ALICE, csv_job(AS_ALICE, sort_by="amount", date_column="day", **{"from": "1900-01-01",
                                                                                        "till": "2999-12-31"}))
    assert plain["preemptions"] == 0 and plain["result"]["skipped"] == 0

    def digest(j: dict[str, Any]) -> str:
        r = api.get(j["result_url"], headers=AS_ALICE, timeout=300)
        assert r.status_code == 200
        return hashlib.sha256(r.content).hexdigest()

    assert preempted["result"]["rows"] == plain["result"]["rows"]
    assert digest(preempted) == digest(plain)
    counted = job(api, AS_ALICE, count)
    print(f"\nCSV sort preempted {preempted['preemptions']} time(s), the count {counted['preemptions']}; "
          "the sorted file is identical to the unpreempted one")
    assert preempted["preemptions"] + counted["preemptions"] >= 1
