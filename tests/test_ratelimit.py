"""Rate limits per client IP (shared by every web process through Redis) and the live-jobs bound."""

from __future__ import annotations

import itertools
import os

import pytest
from redis import Redis

from rest import create_app
from rest.settings import Settings
from tests.conftest import TEST_LIMITS, TEST_RATE_LIMITS

PROBLEM = "application/problem+json"
_clients = itertools.count(1)


def _db(url: str, db: int) -> str:
    return f"{url.rpartition('/')[0]}/{db}"


@pytest.fixture
def url(redis_url: str) -> str:
    url = _db(redis_url, 10)
    Redis.from_url(url).flushdb()
    return url


def make_app(url: str, **settings):
    return create_app(settings=Settings(redis_url=url, limits=TEST_LIMITS, wait_slots=2,
                                        **{**TEST_RATE_LIMITS, **settings}))


def new_ip() -> str:
    """A client address no other test used (buckets are per IP and live in Redis for a minute)."""
    return f"10.{os.getpid() % 250}.{next(_clients) % 250}.{int.from_bytes(os.urandom(1), 'big')}"


def client_for(app, ip: str):
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = ip
    return client


def assert_429(resp) -> dict:
    assert resp.status_code == 429, resp.get_data(as_text=True)
    assert resp.mimetype == PROBLEM
    retry = resp.headers["Retry-After"]
    assert retry.isdigit() and 1 <= int(retry) <= 121, retry  # sliding window: at most two windows
    body = resp.get_json(force=True)
    assert body["status"] == 429 and body["detail"]
    return body


def test_submissions_over_the_limit_get_429_with_retry_after(url: str) -> None:
    client = client_for(make_app(url, rate_limit_submit="3/minute"), new_ip())
    # Every submit route shares the one budget, whatever the answer.
    assert client.post("/api/v1/fibonacci", json={"n": 5}).status_code == 202
    assert client.post("/api/v1/primes", json={"start": 0, "end": 10}).status_code == 202
    assert client.post("/api/v1/fibonacci", json={"n": -1}).status_code == 422
    body = assert_429(client.post("/api/v1/sort", json={"numbers": [1]}))
    assert "3 per 1 minute" in body["detail"]
    # Reading is not limited.
    assert client.get("/api/v1/jobs").status_code == 200
    assert client.get("/api/v1/queues").status_code == 200


def test_control_actions_share_their_own_budget(url: str) -> None:
    client = client_for(make_app(url, rate_limit_submit="100/minute", rate_limit_control="2/minute"), new_ip())
    job = client.post("/api/v1/primes", json={"start": 0, "end": 10**6}).get_json()["id"]
    assert client.post(f"/api/v1/jobs/{job}/pause").status_code == 200
    assert client.post(f"/api/v1/jobs/{job}/resume").status_code == 202
    assert_429(client.post(f"/api/v1/jobs/{job}/cancel"))
    assert_429(client.delete(f"/api/v1/jobs/{job}"))
    # Submissions still have their own budget.
    assert client.post("/api/v1/fibonacci", json={"n": 6}).status_code == 202


def test_budgets_are_per_client_and_shared_across_processes(url: str) -> None:
    ip = new_ip()
    a = client_for(make_app(url, rate_limit_submit="2/minute"), ip)
    b = client_for(make_app(url, rate_limit_submit="2/minute"), ip)  # another web process, same Redis
    assert a.post("/api/v1/fibonacci", json={"n": 7}).status_code == 202
    assert b.post("/api/v1/fibonacci", json={"n": 8}).status_code == 202
    assert_429(a.post("/api/v1/fibonacci", json={"n": 9}))
    assert_429(b.post("/api/v1/fibonacci", json={"n": 9}))
    other = client_for(make_app(url, rate_limit_submit="2/minute"), new_ip())
    assert other.post("/api/v1/fibonacci", json={"n": 9}).status_code == 202


def test_limits_can_be_switched_off(url: str) -> None:
    client = client_for(make_app(url, rate_limit_submit="1/minute", rate_limit_enabled=False), new_ip())
    for n in range(3):
        assert client.post("/api/v1/fibonacci", json={"n": 100 + n}).status_code == 202


def test_live_jobs_per_client_are_bounded(url: str) -> None:
    app = make_app(url, max_queued_per_client=2)
    ip = new_ip()
    client = client_for(app, ip)
    first = client.post("/api/v1/primes", json={"start": 0, "end": 1000}).get_json()["id"]
    second = client.post("/api/v1/primes", json={"start": 0, "end": 2000}).get_json()["id"]
    body = assert_429(client.post("/api/v1/primes", json={"start": 0, "end": 3000}))
    assert "MAX_QUEUED_PER_CLIENT" in body["detail"]
    # Another client is not affected.
    assert client_for(app, new_ip()).post("/api/v1/primes", json={"start": 0, "end": 9999}).status_code == 202
    # A job that ends (canceled here) or is deleted frees its place; paused jobs still count.
    assert client.post(f"/api/v1/jobs/{first}/cancel").status_code == 200
    third = client.post("/api/v1/primes", json={"start": 0, "end": 3000})
    assert third.status_code == 202
    assert_429(client.post("/api/v1/primes", json={"start": 0, "end": 4000}))
    assert client.post(f"/api/v1/jobs/{second}/pause").status_code == 200
    assert_429(client.post("/api/v1/primes", json={"start": 0, "end": 4000}))
    assert client.delete(f"/api/v1/jobs/{second}").status_code == 204
    assert client.post("/api/v1/primes", json={"start": 0, "end": 4000}).status_code == 202
    # A retried job is live again.
    assert client.post(f"/api/v1/jobs/{third.get_json()['id']}/cancel").status_code == 200
    assert client.post(f"/api/v1/jobs/{first}/retry").status_code == 202
    assert_429(client.post("/api/v1/primes", json={"start": 0, "end": 5000}))
    live = Redis.from_url(url).get(f"crunch:client:{ip}:live")
    assert int(live) == 2
