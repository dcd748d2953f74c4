"""GET /metrics: submissions by outcome, HTTP latency, and Redis-backed queue, worker and job families;
summed over every gunicorn process in multiprocess mode."""

from __future__ import annotations

import os
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis

from infra.processes import Web
from rest import create_app
from rest.settings import Settings
from tests.conftest import TEST_LIMITS, TEST_RATE_LIMITS, run_fast_queue


def _db(url: str, db: int) -> str:
    return f"{url.rpartition('/')[0]}/{db}"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, tuple(sorted(labels.items()))), 0.0)



def test_metrics_after_a_few_jobs(redis_url: str) -> None:
    url = _db(redis_url, 8)
    Redis.from_url(url).flushdb()
    app = create_app(settings=Settings(redis_url=url, limits=TEST_LIMITS, wait_slots=4, **TEST_RATE_LIMITS))
    client = app.test_client()
    before = client.get("/metrics").get_data(as_text=True)

    assert client.post("/api/v1/fibonacci", json={"n": 77}).status_code == 202
    assert client.post("/api/v1/fibonacci", json={"n": 77}).status_code == 202      # deduplicated
    assert client.post("/api/v1/sort", json={"numbers": [2, 1]}).status_code == 202
    assert client.post("/api/v1/primes", json={"start": 0, "end": 10**8, "output": "count"}).status_code == 202
    depth = client.get("/metrics").get_data(as_text=True)
    assert value(depth, "crunch_queue_depth", queue="fast") == 2
    assert value(depth, "crunch_queue_depth", queue="default") == 1

    run_fast_queue(url)
    assert client.post("/api/v1/fibonacci", json={"n": 77}).status_code == 200      # cached
    primes = client.get("/api/v1/jobs?type=primes").get_json()["jobs"][0]["id"]
    assert client.post(f"/api/v1/jobs/{primes}/cancel").status_code == 200

    resp = client.get("/metrics")
    assert resp.status_code == 200
    assert resp.mimetype == "text/plain"
    text = resp.get_data(as_text=True)

    def delta(name: str, **labels: str) -> float:
        return value(text, name, **labels) - value(before, name, **labels)

    assert delta("crunch_jobs_submitted_total", type="fibonacci", outcome="created") == 1
    assert delta("crunch_jobs_submitted_total", type="fibonacci", outcome="deduplicated") == 1
    assert delta("crunch_jobs_submitted_total", type="fibonacci", outcome="cached") == 1
    assert delta("crunch_jobs_submitted_total", type="sort", outcome="created") == 1
    assert delta("crunch_http_request_duration_seconds_count",
                 endpoint="/api/v1/fibonacci", method="POST", status="202") == 2
    assert delta("crunch_http_request_duration_seconds_count",
                 endpoint="/api/v1/jobs/<job_id>/cancel", method="POST", status="200") == 1
    # Read from Redis (a fresh database), so absolute values.
    assert value(text, "crunch_redis_up") == 1
    assert value(text, "crunch_jobs_ended_total", type="fibonacci", status="finished") == 1
    assert value(text, "crunch_jobs_ended_total", type="sort", status="finished") == 1
    assert value(text, "crunch_jobs_ended_total", type="primes", status="canceled") == 1
    assert value(text, "crunch_jobs_ended_total", type="primes", status="finished") == 0
    assert value(text, "crunch_queue_jobs_ended_total", queue="fast", status="finished") == 2
    assert value(text, "crunch_queue_depth", queue="fast") == 0
    assert value(text, "crunch_queue_depth", queue="default") == 0
    assert value(text, "crunch_workers_busy") == 0
    # Run times of the two jobs that ran (canceled-while-queued never ran): one histogram per type.
    assert value(text, "crunch_job_duration_seconds_count", type="fibonacci") == 1
    assert value(text, "crunch_job_duration_seconds_bucket", type="fibonacci", le="+Inf") == 1
    assert value(text, "crunch_job_duration_seconds_bucket", type="sort", le="60.0") == 1
    assert value(text, "crunch_job_duration_seconds_count", type="primes") == 0
    assert value(text, "crunch_job_duration_seconds_sum", type="fibonacci") > 0
    for family in ("crunch_queue_started", "crunch_workers"):
        assert any(name == family for name, _ in samples(text)), family


def test_metrics_answer_while_redis_is_down() -> None:
    app = create_app(settings=Settings(redis_url="redis://127.0.0.1:1/0"))
    resp = app.test_client().get("/metrics")
    assert resp.status_code == 200
    assert value(resp.get_data(as_text=True), "crunch_redis_up") == 0


def test_multiprocess_metrics_sum_every_gunicorn_process(redis_url: str, tmp_path: Path) -> None:
    url = _db(redis_url, 9)
    Redis.from_url(url).flushdb()
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    web = Web(url, tmp_path, WEB_PROCESSES=2, WEB_THREADS=8, PROMETHEUS_MULTIPROC_DIR=metrics_dir).start()
    try:
        n = 12
        for i in range(n):
            # A new connection each time, so requests spread over both processes.
            r = requests.post(web.url + "/api/v1/fibonacci", json={"n": 1000 + i}, timeout=10,
                              headers={"Connection": "close"})
            assert r.status_code == 202, r.text
        writers = {f.rsplit("_", 1)[-1] for f in os.listdir(metrics_dir) if f.startswith("counter_")}
        print("processes that counted:", len(writers))
        text = requests.get(web.url + "/metrics", timeout=10).text
        assert value(text, "crunch_jobs_submitted_total", type="fibonacci", outcome="created") == n
        assert value(text, "crunch_http_request_duration_seconds_count",
                     endpoint="/api/v1/fibonacci", method="POST", status="202") == n
        assert value(text, "crunch_queue_depth", queue="fast") == n
    finally:
        web.stop()
