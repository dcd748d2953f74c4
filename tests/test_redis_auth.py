"""Redis with a password: every component (web, workers, RQ, the request cache, the rate limiter,
event pub/sub) takes it from REDIS_URL, and a URL without it fails clearly at /readyz, not with a crash."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from redis import Redis
from redis.exceptions import AuthenticationError

from infra.embedded_redis import EmbeddedRedis, redact_url
from infra.processes import Api, Web, Workers

pytestmark = pytest.mark.e2e

#: Characters that must be percent-encoded in a URL, so every client's URL parsing is exercised.
PASSWORD = "s3cret:/@ %\"\\x"


@pytest.fixture(scope="module")
def auth_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    srv = EmbeddedRedis(tmp_path_factory.mktemp("auth-redis"), password=PASSWORD).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def auth_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("auth-logs")


@pytest.fixture(scope="module")
def auth_stack(auth_redis: EmbeddedRedis, auth_logs: Path) -> Iterator[tuple[Workers, Web]]:
    workers = Workers(auth_redis.url, auth_logs, count=1, name="auth-workers", HEARTBEAT_TIMEOUT=5).start()
    web = Web(auth_redis.url, auth_logs, WEB_PROCESSES=1).start()
    yield workers, web
    web.stop()
    workers.stop()


def test_the_url_carries_the_password_and_the_server_requires_it(auth_redis: EmbeddedRedis) -> None:
    assert Redis.from_url(auth_redis.url).ping()
    bare = Redis(host=auth_redis.host, port=auth_redis.port)
    with pytest.raises(AuthenticationError):
        bare.ping()
    assert PASSWORD not in redact_url(auth_redis.url) and "***" in redact_url(auth_redis.url)


def test_a_job_runs_end_to_end_with_a_password(auth_stack: tuple[Workers, Web], auth_redis: EmbeddedRedis) -> None:
    workers, web = auth_stack
    api = Api(web.url)
    ready = api.get("/readyz")
    assert ready.status_code == 200 and ready.json()["redis"] == "ok", ready.text
    # Prefer: wait rides on the event hub's pub/sub connection; a cached answer on the request cache.
    r = api.post("/api/v1/primes", json={"start": 0, "end": 100}, headers={"Prefer": "wait=20"})
    assert r.status_code in (200, 202), r.text
    job = r.json() if r.status_code == 200 else api.wait_done(r.json()["id"])
    assert job["status"] == "finished" and job["result"][:5] == [2, 3, 5, 7, 11], job
    again = api.post("/api/v1/primes", json={"start": 0, "end": 100})
    assert again.status_code == 200 and again.json()["cached"] is True, again.text
    conn = Redis.from_url(auth_redis.url)
    assert conn.keys("*crunch:ratelimit*"), "the rate limiter did not count in the password-protected Redis"
    assert conn.keys("crunch:request:*"), "the request cache is not in the password-protected Redis"
    workers_seen = api.get("/api/v1/workers").json()
    assert workers_seen and all(w["name"] for w in workers_seen)
    assert workers.alive and web.alive
    for proc in (workers, web):
        assert PASSWORD not in proc.log_path.read_text(errors="replace"), f"{proc.name} logged the password"


@pytest.mark.parametrize("how", ["no password", "wrong password"])
def test_a_url_without_the_password_fails_clearly_at_readyz(auth_redis: EmbeddedRedis, auth_logs: Path,
                                                            how: str) -> None:
    url = (f"redis://{auth_redis.host}:{auth_redis.port}/0" if how == "no password"
           else f"redis://:wrong@{auth_redis.host}:{auth_redis.port}/0")
    logs = auth_logs / how.replace(" ", "-")
    logs.mkdir(exist_ok=True)
    web = Web(url, logs, WEB_PROCESSES=1).start()
    try:
        assert requests.get(web.url + "/healthz", timeout=30).status_code == 200
        r = requests.get(web.url + "/readyz", timeout=30)
        assert r.status_code == 503, r.text
        assert r.headers["Content-Type"].startswith("application/problem+json")
        problem = r.json()
        assert problem["status"] == 503 and problem["redis"] == "unauthorized" and problem["workers"] == 0
        assert "REDIS_URL" in problem["detail"] and "password" in problem["detail"]
        # The API answers 503 problem+json too, and the process keeps serving.
        r = requests.post(web.url + "/api/v1/fibonacci", json={"n": 5}, timeout=30)
        assert r.status_code == 503 and r.headers["Content-Type"].startswith("application/problem+json"), r.text
        assert r.json()["status"] == 503
        assert requests.get(web.url + "/healthz", timeout=30).status_code == 200
        assert web.alive
    finally:
        web.stop()
