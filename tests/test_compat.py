"""Each override of a library's internals (jobs.compat) runs only on the version it was written for.

Every check runs in a fresh interpreter whose jobs.compat.installed() reports a version nobody wrote
an override for ("9.9.9") for one library, as an upgrade of that library alone would: the override
falls back to the library's public API and Crunch still works, or (no fallback) the process refuses
to start with a message naming the override and both versions.
"""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNKNOWN = "9.9.9"


def run_with(dist: str, code: str, redis_url: str = "") -> subprocess.CompletedProcess[str]:
    """Run `code` in a new interpreter that sees `dist` at version UNKNOWN."""
    prelude = textwrap.dedent(f"""
        import jobs.compat as compat
        _real = compat.installed
        compat.installed = lambda d: {UNKNOWN!r} if d == {dist!r} else _real(d)
        REDIS_URL = {redis_url!r}
    """)
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("OK"), proc.stdout + proc.stderr
    return proc.stderr


def test_the_overrides_are_written_for_the_pinned_versions() -> None:
    from jobs.compat import cachelib, redis, rq

    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", (ROOT / "requirements.txt").read_text(), re.M))
    assert pins["rq"] == rq.VERSION and pins["redis"] == redis.VERSION
    assert rq.ACTIVE and redis.ACTIVE and cachelib.ACTIVE
    assert importlib.metadata.version("cachelib") == cachelib.VERSION
    from jobs.compat import gunicorn, rq_dashboard

    assert pins["rq-dashboard"] == rq_dashboard.VERSION and pins["gunicorn"] == gunicorn.VERSION


def test_another_redis_py_uses_its_own_pool_and_pubsub(redis_url: str) -> None:
    err = ok(run_with("redis", """
        import redis
        from jobs.compat.redis import ACTIVE, pubsub_reader
        from jobs.store.connection import redis_from_url
        assert not ACTIVE
        conn = redis_from_url(REDIS_URL)
        assert type(conn.connection_pool) is redis.ConnectionPool and conn.ping()
        pubsub = conn.pubsub(ignore_subscribe_messages=False)
        pubsub.subscribe("test:compat")
        read = pubsub_reader(pubsub)
        assert read(5.0)[0] == b"subscribe"
        conn.publish("test:compat", b"hello")
        reply = read(5.0)
        assert reply[0] == b"message" and reply[2] == b"hello", reply
        print("OK")
    """, redis_url))
    assert "written for redis==8.1.0, but redis==9.9.9 is installed" in err


def test_another_rq_runs_jobs_through_its_public_api(redis_url: str) -> None:
    err = ok(run_with("rq", """
        import uuid
        import rq.job, rq.serializers
        from redis import Redis
        from jobs.compat.rq import ACTIVE, InlineDequeue
        from jobs.service import JobService
        from jobs.settings import Settings
        from jobs.store.queues import JsonQueue
        from jobs.store.request_cache import request_cache_for
        from jobs.types.spec import Submission, canonical_json
        from jobs.worker.runner import run
        assert not ACTIVE
        assert rq.job.resolve_serializer is rq.serializers.resolve_serializer
        assert "_fetch_dequeued_job" not in InlineDequeue.__dict__
        conn = Redis.from_url(REDIS_URL)
        q = uuid.uuid4().hex
        svc = JobService(conn, request_cache_for(conn), Settings(),
                         queue_factory=lambda name: JsonQueue(f"{q}-{name}", connection=conn))
        sub = Submission("fibonacci", {"n": 90}, canonical_json({"n": 90, "t": q}), "fast")
        rec, outcome = svc.submit(sub)
        assert JsonQueue(f"{q}-fast", connection=conn).get_job_ids() == [rec.rq_id]
        # rq pops the run itself (no fair dispatch): its start takes it off its client's line.
        from jobs.store.dispatch import client_of
        from jobs.store.keys import LANE_CLIENT_KEY, LANE_SINCE_KEY
        line = LANE_CLIENT_KEY.format(lane="fast", client=client_of(rec))
        assert rec.rq_id.encode() in conn.lrange(line, 0, -1)
        assert run(conn, rec.id, rec.rq_id, "w", dispatched=False) == {"job": rec.id, "status": "finished"}
        assert rec.rq_id.encode() not in conn.lrange(line, 0, -1)
        assert not conn.hexists(LANE_SINCE_KEY.format(lane="fast"), rec.rq_id)
        done = svc.get(rec.id)
        assert svc.reader(done).value()["value"] == "2880067194370816120"
        print("OK")
    """, redis_url))
    assert "written for rq==3.0.0, but rq==9.9.9 is installed" in err


def test_another_cachelib_keeps_the_same_keys(redis_url: str) -> None:
    ok(run_with("cachelib", """
        from redis import Redis
        from jobs.compat.cachelib import ACTIVE, key_prefix
        from jobs.store.request_cache import request_cache_for
        assert not ACTIVE
        cache = request_cache_for(Redis.from_url(REDIS_URL))
        assert key_prefix(cache) == cache._get_prefix() == "crunch:request:"
        assert cache.add("test:compat", "abc", timeout=0) and cache.get("test:compat") == "abc"
        assert cache.release("test:compat", "abc") and cache.get("test:compat") is None
        print("OK")
    """, redis_url))


def test_another_rq_dashboard_refuses_to_start_unless_it_is_turned_off(redis_url: str) -> None:
    proc = run_with("rq-dashboard", """
        from rest import create_app
        from rest.settings import Settings
        create_app(settings=Settings(redis_url=REDIS_URL, rq_dashboard=False))
        print("off: started")
        create_app(settings=Settings(redis_url=REDIS_URL))
        print("OK")
    """, redis_url)
    assert proc.returncode != 0 and "off: started" in proc.stdout
    assert "IncompatibleVersion" in proc.stderr
    assert "rq-dashboard==0.9.0" in proc.stderr and "rq-dashboard==9.9.9" in proc.stderr
    assert "RQ_DASHBOARD=0" in proc.stderr


@pytest.mark.parametrize("dist", ["gunicorn"])
def test_another_gunicorn_refuses_to_start_naming_the_override(dist: str) -> None:
    proc = run_with(dist, """
        import rest.gunicorn_worker
        print("OK")
    """)
    assert proc.returncode != 0 and "IncompatibleVersion" in proc.stderr
    assert "gunicorn==27.0.1" in proc.stderr and "gunicorn==9.9.9" in proc.stderr
