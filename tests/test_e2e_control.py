"""Steering jobs end to end: cancel, pause/resume, retry, delete and live events, with real workers."""

from __future__ import annotations

import json
import random
import time

import pytest
import requests
from redis import Redis

from infra.processes import Api
from tests.ranges import fresh_range

pytestmark = pytest.mark.e2e
rng = random.Random()


def long_count_body(width: int = 30 * 10**9) -> dict:
    """A count of `width` numbers no earlier job counted (tests/ranges.py), so it runs for as long as its width."""
    lo, hi = fresh_range(width)
    return {"start": lo, "end": hi, "output": "count"}


def submit(api: Api, kind: str, body: dict) -> dict:
    r = api.post(f"/api/v1/{kind}", json=body)
    assert r.status_code in (200, 202), r.text
    return r.json()


def wait_for(api: Api, job_id: str, pred, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = api.get(f"/api/v1/jobs/{job_id}").json()
        if pred(job):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.05)


def test_cancel_a_queued_job_at_once_and_start_fresh_after(api: Api, workers) -> None:
    workers.stop()
    try:
        body = {"n": rng.randrange(100_000, 110_000)}
        job = submit(api, "fibonacci", body)
        r = api.post(f"/api/v1/jobs/{job['id']}/cancel")
        assert r.status_code == 200 and r.json()["status"] == "canceled"
        again = submit(api, "fibonacci", body)
        assert again["id"] != job["id"] and again["deduplicated"] is False
    finally:
        workers.start()
    assert api.wait_done(again["id"])["status"] == "finished"
    assert api.get(f"/api/v1/jobs/{job['id']}").json()["status"] == "canceled"


def test_cancel_a_running_job_frees_the_worker(api: Api) -> None:
    job = submit(api, "primes", long_count_body())
    wait_for(api, job["id"], lambda j: j["status"] == "started")
    queues = {q["name"]: q for q in api.get("/api/v1/queues").json()}
    assert queues["default"]["started"] >= 1
    assert job["id"] in [w["current_job"] for w in api.get("/api/v1/workers").json()]
    r = api.post(f"/api/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 200
    assert r.json()["status"] == "canceled", "a running job stops within the 2 s the contract allows"
    assert api.post(f"/api/v1/jobs/{job['id']}/cancel").status_code == 409
    assert api.get(f"{job['result_url']}").status_code == 409
    nxt = api.post("/api/v1/fibonacci", json={"n": rng.randrange(110_000, 120_000)},
                   headers={"Prefer": "wait=10"})
    assert nxt.status_code == 200 and nxt.json()["status"] == "finished"


def test_pause_keeps_progress_and_resume_continues_to_the_same_count(api: Api) -> None:
    body = long_count_body(12 * 10**9)
    job = submit(api, "primes", body)
    wait_for(api, job["id"], lambda j: (j["progress"] or {}).get("percent", 0) > 5, timeout=120)
    r = api.post(f"/api/v1/jobs/{job['id']}/pause")
    assert r.status_code == 200
    paused = r.json()
    assert paused["status"] == "paused"
    assert api.get(f"/api/v1/jobs/{job['id']}?wait=5").json()["status"] == "paused"
    time.sleep(1.0)
    still = api.get(f"/api/v1/jobs/{job['id']}").json()
    assert still["progress"] == paused["progress"], "a paused job does not move"
    workers = api.get("/api/v1/workers").json()
    assert all(w["current_job"] != job["id"] for w in workers), "a paused job holds no worker"
    r = api.post(f"/api/v1/jobs/{job['id']}/resume")
    assert r.status_code == 202 and r.json()["status"] in ("queued", "started")
    done = api.wait_done(job["id"], timeout=240)
    assert done["status"] == "finished"
    assert done["progress"]["percent"] == 100.0
    from primes import count_primes  # the uninterrupted run, in-process
    assert done["result"]["count"] == count_primes(body["start"], body["end"])


def test_pause_conflicts(api: Api) -> None:
    fib = submit(api, "fibonacci", {"n": rng.randrange(120_000, 130_000)})
    assert api.post(f"/api/v1/jobs/{fib['id']}/pause").status_code == 409
    done = api.wait_done(fib["id"])
    assert api.post(f"/api/v1/jobs/{done['id']}/resume").status_code == 409
    assert api.post(f"/api/v1/jobs/{done['id']}/retry").status_code == 409


def test_pause_a_queued_job_then_resume(api: Api, workers) -> None:
    workers.stop()
    try:
        lo = rng.randrange(10**6, 10**7)
        job = submit(api, "primes", {"start": lo, "end": lo + 1000})
        r = api.post(f"/api/v1/jobs/{job['id']}/pause")
        assert r.status_code == 200 and r.json()["status"] == "paused"
        joined = submit(api, "primes", {"start": lo, "end": lo + 1000})
        assert joined["id"] == job["id"] and joined["deduplicated"] is True, "a paused job is joined"
    finally:
        workers.start()
    time.sleep(0.5)
    assert api.get(f"/api/v1/jobs/{job['id']}").json()["status"] == "paused", "held back from dispatch"
    assert api.post(f"/api/v1/jobs/{job['id']}/resume").status_code == 202
    assert api.wait_done(job["id"])["status"] == "finished"


def test_retry_a_canceled_job(api: Api, workers) -> None:
    workers.stop()
    try:
        job = submit(api, "fibonacci", {"n": rng.randrange(130_000, 140_000)})
        assert api.post(f"/api/v1/jobs/{job['id']}/cancel").json()["status"] == "canceled"
        r = api.post(f"/api/v1/jobs/{job['id']}/retry")
        assert r.status_code == 202 and r.json()["status"] == "queued"
    finally:
        workers.start()
    done = api.wait_done(job["id"])
    assert done["status"] == "finished" and done["error"] is None


def test_delete_forgets_job_result_and_cache(api: Api) -> None:
    body = {"n": rng.randrange(140_000, 150_000)}
    r = api.post("/api/v1/fibonacci", json=body, headers={"Prefer": "wait=10"})
    job = r.json()
    assert api.delete(f"/api/v1/jobs/{job['id']}").status_code == 204
    assert api.get(f"/api/v1/jobs/{job['id']}").status_code == 404
    assert api.get(job["result_url"]).status_code == 404
    again = submit(api, "fibonacci", body)
    assert again["id"] != job["id"] and again["cached"] is False


def test_delete_a_running_job(api: Api) -> None:
    job = submit(api, "primes", long_count_body())
    wait_for(api, job["id"], lambda j: j["status"] == "started")
    assert api.delete(f"/api/v1/jobs/{job['id']}").status_code == 204
    assert api.get(f"/api/v1/jobs/{job['id']}").status_code == 404
    time.sleep(0.5)
    workers = api.get("/api/v1/workers").json()
    assert all(w["current_job"] != job["id"] for w in workers)


def test_events_stream_until_terminal(api: Api) -> None:
    job = submit(api, "primes", long_count_body(3 * 10**9))
    events = []
    with requests.get(api.base + f"/api/v1/jobs/{job['id']}/events", stream=True, timeout=120) as r:
        assert r.status_code == 200
        assert r.headers["Content-Type"].startswith("text/event-stream")
        kind = None
        for line in r.iter_lines(decode_unicode=True):
            if line.startswith("event:"):
                kind = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                events.append((kind, json.loads(line[5:])))
    statuses = [data["status"] for _, data in events]
    assert statuses[-1] == "finished"
    assert events[-1][1]["result"] is not None
    assert len(events) >= 2
    percents = [d["progress"]["percent"] for _, d in events if d["progress"]]
    assert percents == sorted(percents), "progress never goes backwards"


def test_two_hundred_open_streams_do_not_starve_submissions(api: Api, workers) -> None:
    workers.stop()
    streams: list[requests.Response] = []
    try:
        held = submit(api, "fibonacci", {"n": rng.randrange(150_000, 160_000)})
        for _ in range(200):
            r = requests.get(api.base + f"/api/v1/jobs/{held['id']}/events", stream=True, timeout=30)
            streams.append(r)
        assert [r.status_code for r in streams] == [200] * 200
        for _ in range(5):
            r = api.post("/api/v1/fibonacci", json={"n": rng.randrange(160_000, 170_000)}, timeout=10)
            assert r.status_code == 202, r.text
    finally:
        workers.start()
    for r in streams:
        r.close()
    assert api.wait_done(held["id"])["status"] == "finished"


def test_a_job_over_its_type_timeout_fails_clearly_and_is_never_served_from_cache(
        redis_url: str, tmp_path) -> None:
    """JOB_TIMEOUTS caps a type's run; the failure names the cause, and the cache forgets the request."""
    from infra.processes import Web, Workers

    url = f"{redis_url.rpartition('/')[0]}/10"
    Redis.from_url(url).flushdb()
    workers = Workers(url, tmp_path, count=1, JOB_TIMEOUTS="primes=1").start()
    web = Web(url, tmp_path, WEB_PROCESSES=1, WEB_THREADS=16, JOB_TIMEOUTS="primes=1").start()
    try:
        api = Api(web.url)
        body = {"start": 0, "end": 10**12, "output": "count"}   # minutes of sieving, far over 1 s
        job = submit(api, "primes", body)
        done = api.wait_done(job["id"], timeout=120)
        assert done["status"] == "failed", done
        assert done["error"]["type"] == "JobTimeoutException", done["error"]
        assert "timeout" in done["error"]["message"].lower(), done["error"]
        assert done["result"] is None and done["duration_ms"] is not None

        again = submit(api, "primes", body)
        assert again["id"] != job["id"] and again["cached"] is False and again["deduplicated"] is False
        assert api.post(f"/api/v1/jobs/{again['id']}/cancel").status_code == 200

        # The failed job can be retried (and fails the same way: the limit still holds).
        assert api.post(f"/api/v1/jobs/{job['id']}/retry").status_code == 202
        assert api.wait_done(job["id"], timeout=120)["status"] == "failed"
        # The workers survived all of it.
        assert workers.alive
        assert api.post("/api/v1/fibonacci", json={"n": 10}, headers={"Prefer": "wait=10"}).json()["status"] \
            == "finished"
    finally:
        web.stop()
        workers.stop()


def test_job_timeouts_setting_is_checked() -> None:
    from jobs.types.registry import parse_timeouts

    assert parse_timeouts("primes=7200, sort=300") == {"primes": 7200, "sort": 300}
    assert parse_timeouts("") == {}
    for bad in ("primes", "prime=5", "primes=0", "primes=-1", "primes=1.5"):
        with pytest.raises(ValueError, match="JOB_TIMEOUTS"):
            parse_timeouts(bad)


def test_a_requeued_run_whose_queue_entry_was_lost_still_runs(api: Api, workers, redis_conn: Redis) -> None:
    """`docker compose stop` SIGTERMs every worker process at once: the one mid-job re-queues its job from
    the checkpoint, and an idle neighbour's BLPOP can pop that new entry just as its own SIGTERM lands, so
    it stops before its DISPATCH. The run still waits in its client's line, but rq's list has no entry
    for it, and no worker ever pops for it (test_compose once saw such a job queued for 300 s). Here the
    lost pop is made by hand, after a real SIGTERM mid-job; the reaper of the new workers puts it back."""
    from jobs.store.dispatch import rq_list
    from jobs.store.keys import JOB_KEY
    from primes import count_primes

    # About 12 s split over both workers, so the SIGTERM lands mid-run: a 4e10 range (2-3 s since the
    # kernel work, less when it overlaps another test's stored segments) was once finished first.
    body = long_count_body(15 * 10**10)
    job = submit(api, "primes", body)
    wait_for(api, job["id"], lambda j: j["status"] == "started", timeout=120)
    workers.stop()  # SIGTERM: the horse stops at its next checkpoint and re-queues the job on a new run
    try:
        wait_for(api, job["id"], lambda j: j["status"] == "queued", timeout=30)
        # The job's own run, or for a split job (jobs.store.fanout) the run of a part the SIGTERM re-queued.
        parts = redis_conn.hget(JOB_KEY.format(id=job["id"]), "parts")
        ids = parts.decode().split(",") if parts else [job["id"]]
        runs = [(i, *(v.decode() for v in redis_conn.hmget(JOB_KEY.format(id=i), "rq_id", "queue", "status")))
                for i in ids]
        # Prefer a run the SIGTERM re-queued; a split job stopped between two parts may have none, and
        # any waiting part's run whose entry goes missing takes the same way back.
        waiting = sorted(((r != f"{i}-1"), r, q) for i, r, q, st in runs if st == "queued")
        lost = next((r for _, r, q in reversed(waiting) if redis_conn.lrem(rq_list(q), 1, r) == 1), None)
        assert lost, f"no waiting run with a queue entry to lose: {runs}"  # the neighbour's pop, lost with it
    finally:
        workers.start()
    done = api.wait_done(job["id"], timeout=200)
    assert done["status"] == "finished", done
    assert done["result"]["count"] == count_primes(body["start"], body["end"])


def test_a_run_from_before_a_retry_never_moves_the_retried_job(redis_url: str) -> None:
    """The run fence (jobs.store.lifecycle): a run the web canceled before it reached a checkpoint (a run held
    in a long step), then retried and started again on a new run, still ends as the runner would end it. None
    of its endings may move the job, which stays the new run's, and its next look at the job stops it
    ("superseded"). Before the fence, its late cancel ended the retried job. In-process, on a database and a
    queue no worker serves."""
    import uuid

    from jobs.context import Stop
    from jobs.settings import Settings
    from jobs.store.commands import Commands
    from jobs.store.keys import JOB_CONTROL_KEY, JOB_KEY
    from jobs.store.lifecycle import Lifecycle
    from jobs.store.queues import JsonQueue
    from jobs.store.record import JobRecord
    from jobs.store.request_cache import request_cache_for
    from jobs.store.status import JobStatus
    from jobs.worker.runner import RedisContext, _stopped

    conn = Redis.from_url(f"{redis_url.rpartition('/')[0]}/8")
    conn.flushdb()
    life = Lifecycle(conn, request_cache_for(conn), Settings(),
                     queue_factory=lambda name: JsonQueue(f"fence-{name}", connection=conn))
    job_id = uuid.uuid4().hex
    rec = JobRecord(id=job_id, type="primes", params={"start": 0, "end": 10**6, "output": "count"}, queue="fence",
                    cache_key=f"fence:{job_id}", pausable=True, created_at=time.time(), runs=1, rq_id=f"{job_id}-1")

    def begin(run: str) -> JobRecord:
        got = life.start(job_id, run, f"worker-of-{run}", time.time(), Commands())
        assert got.took, got
        return JobRecord.from_fields(got.fields)

    def stored() -> JobRecord:
        return JobRecord.from_hash(conn.hgetall(JOB_KEY.format(id=job_id)))

    try:
        assert life.claim(life.cache.full_key(rec.cache_key), rec)
        old = begin(rec.rq_id)
        conn.set(JOB_CONTROL_KEY.format(id=job_id), "cancel")  # read by the old run, which is slow to act on it
        assert life.cancel(old, (JobStatus.STARTED,))  # the web's own cancel of a run that did not stop in time
        assert life.retry(stored())
        new = begin(f"{job_id}-2")
        ctx = RedisContext(life, old)
        for reason in ("cancel", "pause"):  # it stops on what it read before the retry: a cancel (or a pause)
            ctx.stop_reason = reason
            _stopped(life, old, ctx, "5.0")
            assert stored().status is JobStatus.STARTED, reason
        assert not life.fail(old, {"type": "Boom", "message": "late"}, "5.0", runs=old.runs)
        assert not life.finish(old, {"ended_at": repr(time.time())}, 0.005, {}, runs=old.runs)
        now = stored()
        assert (now.status, now.rq_id, now.error) == (JobStatus.STARTED, new.rq_id, None)
        assert now.worker == f"worker-of-{new.rq_id}"
        ctx.stop_reason, ctx._last_control = None, 0.0  # had it read nothing, its next checkpoint looks
        with pytest.raises(Stop):
            ctx.checkpoint()
        assert ctx.stop_reason == "superseded"
        assert _stopped(life, old, ctx, "5.0")["status"] == "superseded" and stored().status is JobStatus.STARTED
        assert life.finish(new, {"ended_at": repr(time.time())}, 0.005, {}, runs=new.runs)  # its own run ends it
        assert stored().status is JobStatus.FINISHED
    finally:
        conn.flushdb()


def test_a_take_started_in_one_step_runs_each_run_as_its_own_start_would(redis_url: str) -> None:
    """A worker starts its take of fast runs in one round trip (jobs.worker.runner.begin_take) and runs each
    with what its start read: a fresh run is taken and finished, a run whose job has a cancel waiting is
    canceled without running, a deleted job's run is skipped; the finishes, held back, go out together
    with the take's counters. In-process, on a database and a queue no worker serves."""
    import uuid

    from jobs.settings import Settings
    from jobs.store.commands import Tally
    from jobs.store.keys import JOB_CONTROL_KEY, JOB_KEY, TYPE_STATS_KEY
    from jobs.store.lifecycle import Lifecycle
    from jobs.store.queues import JsonQueue
    from jobs.store.record import JobRecord
    from jobs.store.request_cache import request_cache_for
    from jobs.worker.runner import _lifecycle, begin_take, run

    conn = Redis.from_url(f"{redis_url.rpartition('/')[0]}/8")
    conn.flushdb()
    life = Lifecycle(conn, request_cache_for(conn), Settings(),
                     queue_factory=lambda name: JsonQueue(f"take-{name}", connection=conn))
    recs = []
    for n in (10, 11, 12):
        job_id = uuid.uuid4().hex
        recs.append(JobRecord(id=job_id, type="fibonacci", params={"n": n}, queue="fast", cache_key=f"take:{job_id}",
                              pausable=False, created_at=time.time(), runs=1, rq_id=f"{job_id}-1"))
        assert life.claim(life.cache.full_key(recs[-1].cache_key), recs[-1])
    conn.set(JOB_CONTROL_KEY.format(id=recs[1].id), "cancel")
    conn.delete(JOB_KEY.format(id=recs[2].id))
    try:
        begun = begin_take(conn, [(r.id, r.rq_id, []) for r in recs], "w")
        assert [b.took for b in begun] == [True, False, False] and begun[2].fields == {}
        status = lambda r: JobRecord.from_hash(conn.hgetall(JOB_KEY.format(id=r.id))).status.value  # noqa: E731
        assert status(recs[0]) == "started" and status(recs[1]) == "queued"
        chain, tally = [], Tally()
        outs = [run(conn, r.id, r.rq_id, "w", chain=chain, tally=tally, begun=b)
                for r, b in zip(recs, begun, strict=True)]
        assert outs == [{"job": recs[0].id, "status": "finished"}, None, None]
        assert status(recs[0]) == "started" and len(chain) == 1  # the finish is held back...
        _lifecycle(conn).flush(chain, tally)  # ...and sent with the counters
        assert status(recs[0]) == "finished" and status(recs[1]) == "canceled"
        assert conn.hget(TYPE_STATS_KEY.format(type="fibonacci"), "finished") == b"1"
        started_at = float(conn.hget(JOB_KEY.format(id=recs[0].id), "started_at"))
        assert started_at == begun[0].started
    finally:
        conn.flushdb()
