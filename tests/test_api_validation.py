"""Every class of bad input gets the right problem+json status, and nothing is queued for it."""

from __future__ import annotations

import pytest
from redis import Redis

from jobs.store.keys import JOBS_INDEX_KEY

PROBLEM = "application/problem+json"


def assert_problem(resp, status: int) -> dict:
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.mimetype == PROBLEM
    body = resp.get_json(force=True)
    assert {"type", "title", "status", "detail"} <= body.keys()
    assert body["status"] == status
    return body


def test_malformed_json_is_400(client, redis_conn: Redis) -> None:
    before = redis_conn.zcard(JOBS_INDEX_KEY)
    body = assert_problem(client.post("/api/v1/fibonacci", data=b'{"n": 1', content_type="application/json"), 400)
    assert "JSON" in body["detail"]
    assert redis_conn.zcard(JOBS_INDEX_KEY) == before


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded", ""])
def test_wrong_content_type_is_415(client, ctype: str) -> None:
    assert_problem(client.post("/api/v1/fibonacci", data=b'{"n": 1}', content_type=ctype or None), 415)


def test_fibonacci_rejects_multipart_with_415(client) -> None:
    assert_problem(client.post("/api/v1/fibonacci", data={"n": "1"}, content_type="multipart/form-data"), 415)


@pytest.mark.parametrize("body, loc", [
    ({"n": True}, ["body", "n"]),
    ({"n": False}, ["body", "n"]),
    ({"n": 1.0}, ["body", "n"]),
    ({"n": 1.5}, ["body", "n"]),
    ({"n": "10"}, ["body", "n"]),
    ({"n": None}, ["body", "n"]),
    ({"n": -1}, ["body", "n"]),
    ({"n": 100_001}, ["body", "n"]),
    ({}, ["body", "n"]),
    ({"n": 5, "extra": 1}, ["body", "extra"]),
    ([5], ["body"]),
    (5, ["body"]),
])
def test_fibonacci_validation_is_422(client, body, loc, redis_conn: Redis) -> None:
    before = redis_conn.zcard(JOBS_INDEX_KEY)
    problem = assert_problem(client.post("/api/v1/fibonacci", json=body), 422)
    assert problem["errors"], problem
    assert any(e["loc"][: len(loc)] == loc for e in problem["errors"]), problem["errors"]
    assert all(isinstance(e["msg"], str) and e["msg"] for e in problem["errors"])
    assert redis_conn.zcard(JOBS_INDEX_KEY) == before, "a rejected request must queue nothing"


def test_limit_message_names_the_setting(client) -> None:
    problem = assert_problem(client.post("/api/v1/fibonacci", json={"n": 100_001}), 422)
    assert "MAX_FIB_N" in problem["detail"]


@pytest.mark.parametrize("body, field", [
    ({"start": 10, "end": 5}, "end"),
    ({"start": -1, "end": 5}, "start"),
    ({"start": 0, "end": 10**9 + 1, "output": "count"}, "end"),
    ({"start": 0, "end": 10**7 + 1}, "end"),
    ({"start": 0, "end": 10, "output": "sum"}, "output"),
    ({"start": True, "end": 10}, "start"),
    ({"start": 0, "end": 10.0}, "end"),
])
def test_primes_validation_is_422(client, body, field) -> None:
    problem = assert_problem(client.post("/api/v1/primes", json=body), 422)
    assert any(field in e["loc"] for e in problem["errors"]), problem["errors"]


def test_primes_list_width_limit_does_not_apply_to_count(client) -> None:
    resp = client.post("/api/v1/primes", json={"start": 0, "end": 10**7 + 1, "output": "count"})
    assert resp.status_code in (200, 202), resp.get_data(as_text=True)


@pytest.mark.parametrize("body", [
    {"numbers": [1, True]},
    {"numbers": [1, "2"]},
    {"numbers": [1, None]},
    {"numbers": "1,2"},
    {"numbers": [1, 2], "descending": "yes"},
    {"numbers": list(range(1001))},
    {"numbers": [1], "extra": 0},
])
def test_sort_validation_is_422(client, body) -> None:
    problem = assert_problem(client.post("/api/v1/sort", json=body), 422)
    assert problem["errors"]


def test_sort_validation_names_the_index(client) -> None:
    problem = assert_problem(client.post("/api/v1/sort", json={"numbers": [3, 2, False, 1]}), 422)
    assert any(e["loc"][-1] == 2 for e in problem["errors"]), problem["errors"]


def test_body_over_max_is_413(client) -> None:
    body = b'{"n": 1, "pad": "' + b"x" * (1 << 20) + b'"}'
    problem = assert_problem(client.post("/api/v1/fibonacci", data=body, content_type="application/json"), 413)
    assert "MAX_BODY_BYTES" in problem["detail"]


def test_unknown_job_is_404_problem(client) -> None:
    for path in ("/api/v1/jobs/0123456789abcdef0123456789abcdef", "/api/v1/jobs/not-an-id",
                 "/api/v1/jobs/0123456789abcdef0123456789abcdef/result",
                 "/api/v1/jobs/0123456789abcdef0123456789abcdef/events"):
        assert_problem(client.get(path), 404)
    for action in ("cancel", "pause", "resume", "retry"):
        assert_problem(client.post(f"/api/v1/jobs/0123456789abcdef0123456789abcdef/{action}"), 404)
    assert_problem(client.delete("/api/v1/jobs/0123456789abcdef0123456789abcdef"), 404)


def test_unknown_route_and_method_are_problems(client) -> None:
    assert_problem(client.get("/api/v1/nope"), 404)
    resp = client.get("/api/v1/fibonacci")
    assert_problem(resp, 405)


@pytest.mark.parametrize("query", ["wait=-1", "wait=31", "wait=abc", "wait=1.5"])
def test_bad_wait_is_422(client, query) -> None:
    job = client.post("/api/v1/fibonacci", json={"n": 7}).get_json()
    assert_problem(client.get(f"/api/v1/jobs/{job['id']}?{query}"), 422)


@pytest.mark.parametrize("query", ["status=done", "type=matrix", "limit=0", "limit=x", "cursor=%%%"])
def test_bad_list_query_is_422(client, query) -> None:
    assert_problem(client.get(f"/api/v1/jobs?{query}"), 422)


def test_result_of_unfinished_job_is_409(client) -> None:
    job = client.post("/api/v1/fibonacci", json={"n": 99_991}).get_json()
    resp = client.get(f"/api/v1/jobs/{job['id']}/result")
    if job["status"] != "finished":
        assert_problem(resp, 409)


def test_redis_unreachable_is_503() -> None:
    from rest import create_app
    from rest.settings import Settings

    app = create_app(settings=Settings(redis_url="redis://127.0.0.1:1/0"))
    c = app.test_client()
    problem = assert_problem(c.post("/api/v1/fibonacci", json={"n": 5}), 503)
    assert "Redis" in problem["detail"]
    assert c.get("/readyz").status_code == 503
    assert c.get("/healthz").status_code == 200
