"""X-Request-ID on every response, stored on the job it creates, and JSON log lines that carry it."""

from __future__ import annotations

import io
import logging
import os
import re
import time

import orjson
import pytest
from redis import Redis

from jobs.store.keys import JOB_KEY
from rest.logging import JsonFormatter

HEX32 = re.compile(r"^[0-9a-f]{32}$")


@pytest.fixture
def log_lines():
    """JSON lines the web process logs (request lines and app errors) during the test."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    loggers = [logging.getLogger("crunch.web"), logging.getLogger("rest")]
    for lg in loggers:
        lg.addHandler(handler)
    yield lambda: [orjson.loads(line) for line in stream.getvalue().splitlines() if line.strip()]
    for lg in loggers:
        lg.removeHandler(handler)


def test_a_sane_client_id_is_echoed(client) -> None:
    resp = client.get("/healthz", headers={"X-Request-ID": "trace-42.a:b_c"})
    assert resp.headers["X-Request-ID"] == "trace-42.a:b_c"


# (A newline cannot arrive in a header value: HTTP servers and werkzeug's client refuse it first.)
@pytest.mark.parametrize("sent", ["", "has spaces", "x" * 129, "ünïcode", "a;b", "tab\there"])
def test_an_insane_or_missing_id_is_replaced(client, sent: str) -> None:
    headers = {"X-Request-ID": sent} if sent else {}
    resp = client.get("/healthz", headers=headers)
    assert HEX32.match(resp.headers["X-Request-ID"]), resp.headers["X-Request-ID"]


@pytest.mark.parametrize("method, path, kwargs", [
    ("get", "/api/v1/jobs/nope", {}),
    ("post", "/api/v1/fibonacci", {"json": {"n": "x"}}),
    ("post", "/api/v1/fibonacci", {"data": b"{", "content_type": "application/json"}),
    ("get", "/no/such/page", {}),
    ("get", "/metrics", {}),
])
def test_every_response_has_an_id(client, method: str, path: str, kwargs: dict) -> None:
    resp = getattr(client, method)(path, **kwargs)
    assert HEX32.match(resp.headers["X-Request-ID"])


def test_the_job_keeps_the_request_id_and_the_log_line_names_both(client, redis_conn: Redis, log_lines) -> None:
    n = 30_000 + int.from_bytes(os.urandom(2), "big") % 60_000  # a new job, not one an earlier test created
    resp = client.post("/api/v1/fibonacci", json={"n": n}, headers={"X-Request-ID": "req-test-1"})
    assert resp.status_code == 202 and not resp.get_json()["deduplicated"]
    job_id = resp.get_json()["id"]
    assert redis_conn.hget(JOB_KEY.format(id=job_id), "request_id") == b"req-test-1"
    assert redis_conn.hget(JOB_KEY.format(id=job_id), "client") == b"127.0.0.1"
    lines = [line for line in log_lines() if line["msg"] == "request"]
    assert lines, "no request line logged"
    line = lines[-1]
    assert line["request_id"] == "req-test-1"
    assert line["method"] == "POST" and line["path"] == "/api/v1/fibonacci"
    assert line["status"] == resp.status_code and line["job_id"] == job_id
    assert line["level"] == "info" and line["ts"].endswith("Z") and line["duration_ms"] >= 0


def test_errors_are_logged_as_json_with_the_request_id(app, log_lines) -> None:
    @app.get("/__fail")
    def fail():
        raise RuntimeError("kaboom")

    resp = app.test_client().get("/__fail", headers={"X-Request-ID": "req-err-1"})
    assert resp.status_code == 500
    errors = [line for line in log_lines() if line["level"] == "error"]
    assert errors and errors[-1]["request_id"] == "req-err-1"
    assert "kaboom" in errors[-1]["exc"]


@pytest.mark.e2e
def test_the_worker_logs_the_request_id_of_each_job(api, workers) -> None:
    """A job's start and finish lines in the worker log carry the X-Request-ID of the request that made it."""
    rid = f"req-worker-{os.urandom(4).hex()}"
    n = 200_000 + int.from_bytes(os.urandom(3), "big") % 500_000  # a new job, so this request creates it
    resp = api.post("/api/v1/fibonacci", json={"n": n}, headers={"X-Request-ID": rid})
    assert resp.status_code == 202 and not resp.json()["deduplicated"], resp.text
    job_id = resp.json()["id"]
    assert api.wait_done(job_id)["status"] == "finished"
    lines: list[str] = []
    for _ in range(50):  # the finish line may trail the status change by a moment
        lines = [line for line in workers.log_path.read_text(errors="replace").splitlines() if job_id in line]
        if any("finished" in line and f"request_id={rid}" in line for line in lines):
            break
        time.sleep(0.1)
    assert any("started" in line and f"request_id={rid}" in line for line in lines), lines
    assert any("finished" in line and f"request_id={rid}" in line for line in lines), lines
