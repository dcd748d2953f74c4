"""The merged round trips of the job hot path keep the semantics of the steps they replaced."""

from __future__ import annotations

import os
import threading
import time
import uuid
from typing import Any

import orjson
import pytest
from redis import ConnectionPool, Redis
from redis.connection import Connection
from rq.callbacks import Callback
from rq.serializers import JSONSerializer

from jobs.compat.redis import pipeline_commands
from jobs.compat.rq import enqueue_recorded
from jobs.service import JobService
from jobs.settings import Settings
from jobs.store.admission import CLIENT_LIVE_KEY, Admission, RateLimit, Rejected
from jobs.store.commands import Commands, packed, recorded
from jobs.store.connection import redis_from_url
from jobs.store.keys import EVENTS_CHANNEL, JOB_KEY, JOBS_INDEX_KEY, RESULT_CHUNKS_KEY
from jobs.store.queues import ON_FAILURE, RUNNER, JsonJob, JsonQueue
from jobs.store.record import JobRecord
from jobs.store.request_cache import request_cache_for
from jobs.store.status import JobStatus
from jobs.types.registry import JOB_TYPES
from jobs.types.spec import Submission, canonical_json
from jobs.worker.rq_worker import CrunchWorker, InlineRun


def service(conn: Redis, queue: str) -> JobService:
    """A service whose RQ queues are private to the test, so the suite's workers never take its jobs."""
    return JobService(conn, request_cache_for(conn), Settings(),
                      queue_factory=lambda name: JsonQueue(f"{queue}-{name}", connection=conn))


def submission(n: int) -> Submission:
    params = {"n": n}
    return Submission("fibonacci", params, canonical_json({"n": n, "test": uuid.uuid4().hex}), "fast")


def test_transition_runs_its_then_commands_only_when_the_status_matched(redis_conn: Redis) -> None:
    svc = service(redis_conn, uuid.uuid4().hex)
    job_id = uuid.uuid4().hex
    redis_conn.hset(JOB_KEY.format(id=job_id), mapping={"status": "queued"})
    marker = f"test:{job_id}:marker"
    then = packed([("SET", marker, "1"), ("INCRBY", marker, 4)])
    assert svc.life.transition(job_id, (JobStatus.STARTED,), JobStatus.FINISHED, {"x": "1"}, then=then) is None
    assert redis_conn.get(marker) is None and redis_conn.hget(JOB_KEY.format(id=job_id), "x") is None
    prev = svc.life.transition(job_id, (JobStatus.QUEUED,), JobStatus.STARTED, {"x": "1", "y": "2"}, then=then)
    assert prev is JobStatus.QUEUED
    assert redis_conn.get(marker) == b"5"
    assert redis_conn.hmget(JOB_KEY.format(id=job_id), "status", "x", "y") == [b"started", b"1", b"2"]


def test_a_lost_claim_writes_no_record_and_queues_nothing(redis_conn: Redis) -> None:
    queue = uuid.uuid4().hex
    svc = service(redis_conn, queue)
    sub = submission(10)
    first, _ = svc.submit(sub)
    loser = svc._create(sub)
    assert not svc.life.claim(svc.cache.full_key(sub.cache_key), loser)
    assert not redis_conn.exists(JOB_KEY.format(id=loser.id))
    assert redis_conn.zscore(JOBS_INDEX_KEY, loser.id) is None
    rq_queue = JsonQueue(f"{queue}-fast", connection=redis_conn)
    assert rq_queue.get_job_ids() == [first.rq_id]
    rec = JobRecord.from_hash(redis_conn.hgetall(JOB_KEY.format(id=first.id)))
    assert rec.status is JobStatus.QUEUED and rec.rq_id == first.rq_id


def test_terminal_bookkeeping_in_one_script_refreshes_only_its_own_cache_entry(redis_conn: Redis) -> None:
    svc = service(redis_conn, uuid.uuid4().hex)
    rec, _ = svc.submit(submission(11))
    entry = svc.cache.full_key(rec.cache_key)
    assert redis_conn.ttl(entry) == -1  # claimed without expiry while the job is live
    assert svc.life.transition(rec.id, (JobStatus.QUEUED,), JobStatus.FINISHED,
                              then=svc.life.terminal_commands(rec, JobStatus.FINISHED))
    assert 0 < redis_conn.ttl(entry) <= svc.settings.result_ttl
    other, _ = svc.submit(submission(12))
    redis_conn.set(svc.cache.full_key(other.cache_key), b'"someone-else"')
    svc.life.cancel(other, (JobStatus.QUEUED,))  # release: the entry is not this job's any more
    assert redis_conn.get(svc.cache.full_key(other.cache_key)) == b'"someone-else"'


def test_a_skipped_worker_heartbeat_never_leaves_the_worker_key_expiring_sooner(redis_conn: Redis) -> None:
    queue = JsonQueue(f"hb-{uuid.uuid4().hex}", connection=redis_conn)
    worker = CrunchWorker([queue], connection=redis_conn, serializer=JSONSerializer, name=uuid.uuid4().hex)
    worker.register_birth()
    try:
        with redis_conn.pipeline() as pipe:  # a short heartbeat, as a horse's job monitoring sends
            worker.heartbeat(90, pipeline=pipe)
            pipe.execute()
        worker.heartbeat()  # soon after, but the default TTL reaches further: not skipped
        assert redis_conn.ttl(worker.key) > 90
        worker.heartbeat()  # soon after one that reaches as far: skipped, the key keeps its expiry
        assert redis_conn.ttl(worker.key) > 90
    finally:
        worker.register_death()


def _subscribed(conn: Redis) -> Any:
    pubsub = conn.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(EVENTS_CHANNEL)
    pubsub.get_message(timeout=1.0)  # the subscribe confirmation
    return pubsub


def _events_of(pubsub: Any, job_id: str) -> list[dict[str, Any]]:
    out = []
    while (msg := pubsub.get_message(timeout=0.5)) is not None:
        event = orjson.loads(msg["data"])
        if event["id"] == job_id:
            out.append(event)
    return out


class CountingConnection(Connection):
    """Counts requests sent (a pipeline is one), i.e. round trips."""

    sent = 0

    def send_packed_command(self, *args: Any, **kwargs: Any) -> None:
        type(self).sent += 1
        super().send_packed_command(*args, **kwargs)


def test_an_inline_run_starts_and_finishes_in_one_round_trip_each_and_drops_rqs_job_hash(
        redis_conn: Redis, redis_url: str) -> None:
    svc = service(redis_conn, uuid.uuid4().hex)
    conn = Redis(connection_pool=ConnectionPool.from_url(redis_url, connection_class=CountingConnection))
    worker = CrunchWorker([JsonQueue(f"w-{uuid.uuid4().hex}", connection=conn)], connection=conn,
                          serializer=JSONSerializer, name=uuid.uuid4().hex)
    warm, _ = svc.submit(submission(89))
    worker._run_inline(InlineRun(warm.rq_id, warm.id))  # loads the scripts into this server
    rec, _ = svc.submit(submission(90))
    assert redis_conn.exists(JsonJob.key_for(rec.rq_id))
    pubsub = _subscribed(redis_conn)
    before = CountingConnection.sent
    worker._run_inline(InlineRun(rec.rq_id, rec.id))
    assert CountingConnection.sent - before == 2  # begin (read + take STARTED) and finish, nothing else
    done = JobRecord.from_hash(redis_conn.hgetall(JOB_KEY.format(id=rec.id)))
    assert done.status is JobStatus.FINISHED and done.worker == worker.name and done.started_at is not None
    assert not redis_conn.exists(JsonJob.key_for(rec.rq_id))  # dropped in the finish's own step
    assert int(redis_conn.hget(worker.key, "successful_job_count")) == 2
    assert redis_conn.hget(worker.key, "current_job") is None  # set by the start, dropped by the finish
    assert [e["status"] for e in _events_of(pubsub, rec.id)] == ["started", "finished"]


def test_the_finish_event_carries_exactly_what_the_job_hash_and_result_hold(redis_conn: Redis) -> None:
    from jobs.worker.runner import run

    svc = service(redis_conn, uuid.uuid4().hex)
    rec, _ = svc.submit(submission(1000))
    pubsub = _subscribed(redis_conn)
    assert run(redis_conn, rec.id, rec.rq_id, "w1") == {"job": rec.id, "status": "finished"}
    finished = [e for e in _events_of(pubsub, rec.id) if e["status"] == "finished"]
    assert len(finished) == 1
    stored = {k.decode(): v.decode() for k, v in redis_conn.hgetall(JOB_KEY.format(id=rec.id)).items()}
    assert finished[0]["job"] == stored
    chunks = redis_conn.lrange(RESULT_CHUNKS_KEY.format(id=rec.id), 0, -1)
    assert [c.encode() for c in finished[0]["chunks"]] == chunks and chunks


def test_the_submit_budget_is_a_sliding_window_counter(redis_conn: Redis) -> None:
    svc = service(redis_conn, uuid.uuid4().hex)
    client = uuid.uuid4().hex
    limit = RateLimit(10, 60, "10 per 1 minute")
    t0 = (time.time() // 60) * 60 + 30  # half way through a window

    def admit(now: float) -> bool:
        try:
            svc.admit(Admission(client, (limit,), now=now))
            return True
        except Rejected as r:
            assert r.kind == "rate" and 1 <= r.retry_after <= 60 and "10 per 1 minute" in r.detail
            return False

    assert [admit(t0) for _ in range(11)] == [True] * 10 + [False]
    # Half way through the next window half of the previous window's 10 still count: 5 more fit.
    assert [admit(t0 + 60) for _ in range(6)] == [True] * 5 + [False]
    # Two windows on, the first no longer counts and the second's 5 count half: 7 fit.
    assert [admit(t0 + 120) for _ in range(8)] == [True] * 7 + [False]


def test_the_live_bound_is_checked_in_the_lookup_and_counts_nothing_when_it_refuses(redis_conn: Redis) -> None:
    svc = service(redis_conn, uuid.uuid4().hex)
    client = uuid.uuid4().hex
    redis_conn.set(CLIENT_LIVE_KEY.format(client=client), 2)
    with pytest.raises(Rejected) as info:
        svc.submit(submission(91), Admission(client, live_bound=2))
    assert info.value.kind == "live" and "MAX_QUEUED_PER_CLIENT=2" in info.value.detail
    rec, outcome = svc.submit(submission(91), Admission(client, live_bound=3))
    assert outcome.value == "created" and redis_conn.exists(JOB_KEY.format(id=rec.id))


def test_the_command_recorder_records_what_a_redis_py_pipeline_records(redis_conn: Redis) -> None:
    ours, theirs = Commands(), redis_conn.pipeline(transaction=False)
    for rec in (ours, theirs):
        rec.delete("a", "b")
        rec.expire("a", 60)
        rec.zadd("z", {"m1": 1.5, "m2": 2})
        rec.zrem("z", "m1")
        rec.hincrby("h", "f", 3)
        rec.hincrbyfloat("h", "g", 0.25)
        rec.incrby("n", -1)
        rec.ltrim("l", 0, 4)
        rec.publish("ch", b"msg")
    assert recorded(ours) == pipeline_commands(theirs)


def test_rqs_enqueue_records_the_same_commands_into_the_recorder(redis_conn: Redis) -> None:
    def enqueue(pipe: Any) -> list[list[Any]]:
        kwargs = {"args": ("abc",), "job_id": "abc-1", "timeout": 600, "result_ttl": 600, "failure_ttl": 86400,
                  "on_failure": Callback(ON_FAILURE), "description": "fibonacci abc"}
        queue = JsonQueue("fast", connection=redis_conn)
        if isinstance(pipe, Commands):
            enqueue_recorded(queue, pipe, RUNNER, **kwargs)
        else:
            queue.enqueue_call(RUNNER, pipeline=pipe, **kwargs)
        out: list[list[Any]] = []
        for args in (recorded(pipe) if isinstance(pipe, Commands) else pipeline_commands(pipe)):
            args = list(args)
            if args[0] == "HSET" and out and out[-1][:2] == args[:2]:  # rq's two HSETs of the new job
                out[-1] += args[2:]
            else:
                out.append(args)
        for args in out:
            if args[0] == "HSET":  # the job hash, minus its two timestamps
                fields = {k: v for k, v in zip(args[2::2], args[3::2], strict=True)
                          if k not in ("created_at", "enqueued_at")}
                args[2:] = sorted(fields.items())
        return out

    # The same writes; the recorder sends rq's two HSETs of the new job hash as one command.
    ours = enqueue(Commands())
    assert ours == enqueue(redis_conn.pipeline(transaction=False))
    assert [a[0] for a in ours].count("HSET") == 1


def test_the_recorder_merges_consecutive_hsets_of_one_key_only() -> None:
    pipe = Commands()
    pipe.hset("h", "status", "queued")
    pipe.hset("h", mapping={"a": 1, "status": "started"})
    pipe.hset("g", "x", 2)
    pipe.expire("g", 5)
    pipe.hset("g", "y", 3)
    assert recorded(pipe) == [("HSET", "h", "status", "queued", "a", 1, "status", "started"),
                              ("HSET", "g", "x", 2), ("EXPIRE", "g", 5), ("HSET", "g", "y", 3)]


def test_the_lean_pool_still_starts_afresh_in_a_forked_child(redis_url: str) -> None:
    conn = redis_from_url(redis_url)
    assert conn.ping()
    parent_sockets = {id(c) for c in conn.connection_pool._available_connections}
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a used pool from the parent must not hand out the parent's sockets
        ok = False
        try:
            ok = conn.ping() and conn.connection_pool.pid == os.getpid() and not (
                {id(c) for c in conn.connection_pool._available_connections} & parent_sockets)
        finally:
            os.write(write, b"1" if ok else b"0")
            os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 1) == b"1"
    assert conn.ping() and conn.connection_pool.pid == os.getpid()


def _inline_worker(conn: Redis) -> CrunchWorker:
    return CrunchWorker([JsonQueue(f"w-{uuid.uuid4().hex}", connection=conn)], connection=conn,
                        serializer=JSONSerializer, name=uuid.uuid4().hex)


def test_an_inline_run_that_fails_is_recorded_and_leaves_the_worker_idle(redis_conn: Redis) -> None:
    svc = service(redis_conn, uuid.uuid4().hex)
    # Past validation (n >= 0 is checked at the API), so the kernel itself raises.
    rec, _ = svc.submit(Submission("fibonacci", {"n": -5}, canonical_json({"n": -5, "t": uuid.uuid4().hex}), "fast"))
    worker = _inline_worker(redis_conn)
    worker._run_inline(InlineRun(rec.rq_id, rec.id))
    failed = svc.get(rec.id)
    assert failed is not None and failed.status is JobStatus.FAILED
    assert failed.error is not None and failed.error["type"] == "OverflowError"
    assert not redis_conn.exists(JsonJob.key_for(rec.rq_id))
    assert int(redis_conn.hget(worker.key, "failed_job_count")) == 1
    assert redis_conn.hget(worker.key, "current_job") is None
    assert svc.cache.get(rec.cache_key) is None  # a failure is never served from the cache


class _TimesOutAtOnce:
    """A death penalty whose time is up as soon as the kernel starts."""

    def __init__(self, timeout: int, exception: type[Exception], **kwargs: Any) -> None:
        self.seconds, self.exception = timeout, exception

    def __enter__(self) -> None:
        raise self.exception(f"Task exceeded maximum timeout value ({self.seconds} seconds)")

    def __exit__(self, *exc: Any) -> bool:
        return False


def test_an_inline_run_is_held_to_its_types_timeout(redis_conn: Redis) -> None:
    svc = service(redis_conn, uuid.uuid4().hex)
    rec, _ = svc.submit(submission(92))
    worker = _inline_worker(redis_conn)
    worker.death_penalty_class = _TimesOutAtOnce  # type: ignore[assignment]
    worker._run_inline(InlineRun(rec.rq_id, rec.id))
    failed = svc.get(rec.id)
    assert failed is not None and failed.status is JobStatus.FAILED
    assert failed.error == {"type": "JobTimeoutException",
                            "message": "Task exceeded maximum timeout value "
                                       f"({JOB_TYPES['fibonacci'].timeout} seconds)"}


def test_a_client_serves_more_concurrent_callers_than_redis_pys_default_pool_of_100(redis_url: str) -> None:
    conn = redis_from_url(redis_url)
    errors: list[Exception] = []
    start = threading.Barrier(150)

    def hold() -> None:
        try:
            start.wait()
            conn.blpop([f"test:nothing:{uuid.uuid4().hex}"], timeout=1)  # holds its connection for 1 s
        except Exception as exc:  # noqa: BLE001 - collected
            errors.append(exc)

    threads = [threading.Thread(target=hold) for _ in range(150)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
