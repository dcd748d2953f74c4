"""The merged round trips of the job hot path keep the semantics of the steps they replaced."""

from __future__ import annotations

import uuid

from redis import Redis
from rq.serializers import JSONSerializer

from jobs.keys import JOB_KEY, JOBS_INDEX_KEY
from jobs.queueing import JsonQueue
from jobs.record import JobRecord
from jobs.request_cache import request_cache_for
from jobs.service import JobService, ServiceConfig, packed
from jobs.spec import Submission, canonical_json
from jobs.status import JobStatus
from worker import CrunchWorker


def service(conn: Redis, queue: str) -> JobService:
    """A service whose RQ queues are private to the test, so the suite's workers never take its jobs."""
    return JobService(conn, request_cache_for(conn), ServiceConfig(),
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
    assert svc.transition(job_id, (JobStatus.STARTED,), JobStatus.FINISHED, {"x": "1"}, then=then) is None
    assert redis_conn.get(marker) is None and redis_conn.hget(JOB_KEY.format(id=job_id), "x") is None
    prev = svc.transition(job_id, (JobStatus.QUEUED,), JobStatus.STARTED, {"x": "1", "y": "2"}, then=then)
    assert prev is JobStatus.QUEUED
    assert redis_conn.get(marker) == b"5"
    assert redis_conn.hmget(JOB_KEY.format(id=job_id), "status", "x", "y") == [b"started", b"1", b"2"]


def test_a_lost_claim_writes_no_record_and_queues_nothing(redis_conn: Redis) -> None:
    queue = uuid.uuid4().hex
    svc = service(redis_conn, queue)
    sub = submission(10)
    first, _ = svc.submit(sub)
    loser = svc._create(sub)
    assert not svc._claim(sub.cache_key, loser)
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
    svc.finish_terminal(rec, JobStatus.FINISHED)
    assert 0 < redis_conn.ttl(entry) <= svc.config.result_ttl
    other, _ = svc.submit(submission(12))
    redis_conn.set(svc.cache.full_key(other.cache_key), b'"someone-else"')
    svc.finish_terminal(other, JobStatus.CANCELED)  # release: the entry is not this job's any more
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
