"""Hardening II (issue 17), in process: long numbers, duplicate keys, a safe `next`, DELETE's 204,
and Redis error replies; each was a 500, an open redirect or a silent misreading before."""

from __future__ import annotations

import csv
import io
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from redis import Redis

from jobs.context import LocalContext
from jobs.kernels import csv as csv_kernel
from jobs.store.keys import PAUSED_DUE_KEY
from jobs.store.lifecycle import PAUSED_GRACE
from rest import create_app
from rest.input_bounds import TooLong, duplicate_key, parse_uint
from rest.settings import Settings
from tests.conftest import TEST_LIMITS, TEST_RATE_LIMITS

NINES = "9" * 4301


def assert_422(r, field: str) -> None:
    assert r.status_code == 422, (r.status_code, r.get_data()[:300])
    assert r.headers["Content-Type"].startswith("application/problem+json")
    problem = r.get_json()
    assert any(e["loc"][-1] == field for e in problem["errors"]), problem


@pytest.mark.parametrize("path, field", [
    (f"/api/v1/jobs?limit={NINES}", "limit"),
    (f"/api/v1/jobs/{{id}}/result?offset={NINES}", "offset"),
    (f"/api/v1/jobs/{{id}}/result?limit={NINES}", "limit"),
    (f"/api/v1/jobs/{{id}}?wait={NINES}", "wait"),
])
def test_long_numbers_in_api_query_parameters_are_422(client, path: str, field: str) -> None:
    job = client.post("/api/v1/fibonacci", json={"n": 13}).get_json()
    assert_422(client.get(path.replace("{id}", job["id"])), field)


@pytest.mark.parametrize("path, field", [
    (f"/fibonacci?n={NINES}", "n"),
    (f"/primes?start={NINES}&end=10", "start"),
    (f"/primes?start=1&end={NINES}", "end"),
])
def test_long_numbers_in_page_links_are_422_not_500(client, path: str, field: str) -> None:
    r = client.get(path)
    assert r.status_code == 422, r.status_code
    assert b"too long" in r.get_data()


@pytest.mark.parametrize("job_type, form, field", [
    ("fibonacci", {"n": NINES}, "n"),
    ("primes", {"start": "1", "end": NINES}, "end"),
])
def test_long_numbers_in_form_posts_are_422(client, job_type: str, form: dict[str, str], field: str) -> None:
    client.get("/")  # a session with a CSRF token
    with client.session_transaction() as sess:
        token = sess["csrf"]
    r = client.post(f"/submit/{job_type}", data={**form, "csrf_token": token})
    assert r.status_code == 422, (r.status_code, r.get_data()[:300])
    assert b"too long" in r.get_data()


@pytest.mark.parametrize("body, field", [
    ('{"n": ' + NINES + '}', "n"),
    ('{"start": 1, "end": ' + NINES + '}', "end"),
])
def test_long_numbers_in_json_bodies_are_422(client, body: str, field: str) -> None:
    job_type = "fibonacci" if field == "n" else "primes"
    assert_422(client.post(f"/api/v1/{job_type}", data=body, content_type="application/json"), field)


def test_a_long_prefer_wait_is_ignored_as_rfc_7240_says(client) -> None:
    r = client.post("/api/v1/fibonacci", json={"n": 7}, headers={"Prefer": f"wait={NINES}"})
    assert r.status_code in (200, 202), r.get_data()
    assert "Preference-Applied" not in r.headers


def test_parse_uint_bounds_the_length_before_int() -> None:
    assert parse_uint("000123") == 123
    assert parse_uint("18446744073709551615") == 2**64 - 1
    with pytest.raises(TooLong):
        parse_uint(NINES)
    with pytest.raises(ValueError):
        parse_uint("-1")


def test_duplicate_json_keys_are_refused_with_422_at_the_key(client) -> None:
    r = client.post("/api/v1/fibonacci", data='{"n": 5, "n": 100000}', content_type="application/json")
    assert_422(r, "n")
    assert "duplicate key" in r.get_json()["detail"]
    r = client.post("/api/v1/sort", data='{"numbers": [3, 1], "descending": true, "descending": false}',
                    content_type="application/json")
    assert_422(r, "descending")


def test_duplicate_key_scan_reads_strings_and_escapes_correctly() -> None:
    assert duplicate_key(b'{"a": {"b": 1, "c": "x\\":", "b": 2}}') == ["body", "a", "b"]
    assert duplicate_key(b'{"a": 1, "\\u0061": 2}') == ["body", "a"]  # the same key, escaped
    assert duplicate_key(b'[{"a": 1}, {"a": 2}]') is None  # two objects, one key each
    assert duplicate_key(b'{"s": "{\\"s\\": 1}", "t": "}"}') is None  # brackets and keys inside strings
    assert duplicate_key(b'{"numbers": [1, 2, 3], "descending": true}') is None


@pytest.mark.parametrize("target", ["/%09/evil.example", "/%0a/evil.example", "/%0d%0a/evil.example",
                                    "//evil.example", "/\\evil.example", "https://evil.example/",
                                    "%2F%2Fevil.example", "/%20/evil.example", "/%7f/evil.example",
                                    "javascript:alert(1)", "/%c2%85/evil.example"])
def test_login_next_never_leaves_the_site(client, target: str) -> None:
    r = client.get(f"/login?next={target}")
    assert r.status_code == 303
    assert r.headers["Location"] == "/", r.headers["Location"]


def test_login_next_keeps_a_plain_path(client) -> None:
    r = client.get("/login?next=/jobs%3Fstatus%3Dfinished")
    assert r.headers["Location"] == "/jobs?status=finished"


def test_delete_answers_204_with_no_content_type(client) -> None:
    job = client.post("/api/v1/fibonacci", json={"n": 11}).get_json()
    r = client.delete(f"/api/v1/jobs/{job['id']}")
    assert r.status_code == 204 and r.get_data() == b""
    assert "Content-Type" not in r.headers, dict(r.headers)


# -- Redis error replies ---------------------------------------------------------------------------


class RefusingRedis:
    """A real TCP peer on 127.0.0.1 that answers every command with one error reply, as a Redis that
    is loading, a read-only replica, in protected mode or unauthenticated does."""

    def __init__(self, reply: bytes) -> None:
        self.reply = reply
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            buf = b""
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                buf += data
                # One error reply per RESP command (each array starts with '*').
                while buf.startswith(b"*"):
                    end = _resp_command_end(buf)
                    if end is None:
                        break
                    buf = buf[end:]
                    conn.sendall(self.reply)

    def close(self) -> None:
        self.sock.close()


def _resp_command_end(buf: bytes) -> int | None:
    """Where the first complete RESP array of bulk strings in buf ends, or None if incomplete."""
    line_end = buf.find(b"\r\n")
    if line_end < 0:
        return None
    count, pos = int(buf[1:line_end]), line_end + 2
    for _ in range(count):
        line_end = buf.find(b"\r\n", pos)
        if line_end < 0:
            return None
        size = int(buf[pos + 1:line_end])
        pos = line_end + 2 + size + 2
        if pos > len(buf):
            return None
    return pos


@pytest.fixture
def refusing(request) -> Iterator[RefusingRedis]:
    srv = RefusingRedis(request.param)
    yield srv
    srv.close()


REPLIES = [b"-LOADING Redis is loading the dataset in memory\r\n",
           b"-READONLY You can't write against a read only replica.\r\n",
           b"-DENIED Redis is running in protected mode because protected mode is enabled\r\n",
           b"-NOAUTH Authentication required.\r\n",
           b"-OOM command not allowed when used memory > 'maxmemory'.\r\n"]


@pytest.mark.parametrize("refusing", REPLIES, indirect=True, ids=lambda r: r[1:r.index(b" ")].decode())
def test_redis_error_replies_are_503_problems_with_retry_after(refusing: RefusingRedis) -> None:
    app = create_app(settings=Settings(redis_url=f"redis://127.0.0.1:{refusing.port}/0", limits=TEST_LIMITS,
                                       wait_slots=8, **TEST_RATE_LIMITS))
    c = app.test_client()
    for method, path, kw in [("post", "/api/v1/fibonacci", {"json": {"n": 10}}),
                             ("get", "/api/v1/jobs/" + "0" * 32, {}), ("get", "/api/v1/jobs", {})]:
        r = getattr(c, method)(path, **kw)
        assert r.status_code == 503, (path, r.status_code, r.get_data()[:300])
        assert r.headers["Content-Type"].startswith("application/problem+json")
        assert int(r.headers["Retry-After"]) > 0
        assert "nothing was created" in r.get_json()["detail"] or "unreachable" in r.get_json()["detail"]


def test_a_full_store_answers_503_and_writes_no_job(app, client, redis_conn: Redis) -> None:
    """A real valkey at maxmemory (noeviction): the submit is refused whole, no key of a job is left."""
    before = set(redis_conn.keys("crunch:job:*"))
    used = int(redis_conn.info("memory")["used_memory"])
    redis_conn.config_set("maxmemory", str(max(1, used - 1024 * 1024)))
    redis_conn.config_set("maxmemory-policy", "noeviction")
    try:
        r = client.post("/api/v1/fibonacci", json={"n": 77})
        assert r.status_code == 503, (r.status_code, r.get_data()[:300])
        problem = r.get_json()
        assert problem["type"].endswith("store-full") and int(r.headers["Retry-After"]) > 0, problem
    finally:
        redis_conn.config_set("maxmemory", "0")
    assert set(redis_conn.keys("crunch:job:*")) == before
    r = client.post("/api/v1/fibonacci", json={"n": 77})
    assert r.status_code in (200, 202)


# -- CSV output ------------------------------------------------------------------------------------


def run_csv(data: bytes, **params: Any) -> bytes:
    ctx = LocalContext(data)
    csv_kernel.run({"size": len(data), **params}, ctx)
    return bytes(ctx.output.text)


def test_csv_formula_cells_are_neutralised_and_numbers_kept() -> None:
    data = (b'name,amount,note\r\n'
            b'=cmd|\' /C calc\'!A0,-5,+SUM(A1:A2)\r\n'
            b'@x,+1.5e3,"=HYPERLINK(""http://x"",""y"")"\r\n'
            b'"\tTAB",-,-2+3\r\n'
            b'plain,12,"a,=b"\r\n')
    out = run_csv(data, sort_by="name")
    rows = list(csv.reader(io.StringIO(out.decode(), newline="")))
    assert rows == [["name", "amount", "note"],
                    ["'\tTAB", "'-", "'-2+3"],
                    ["'=cmd|' /C calc'!A0", "-5", "'+SUM(A1:A2)"],
                    ["'@x", "+1.5e3", "'=HYPERLINK(\"http://x\",\"y\")"],
                    ["plain", "12", "a,=b"]], rows
    assert b"plain,12,\"a,=b\"\r\n" in out  # a record with nothing to neutralise stays byte for byte


def test_csv_output_keeps_the_input_line_endings() -> None:
    lf = b"id,v\n1,b\n2,a\n"
    assert run_csv(lf, sort_by="v") == b"id,v\n2,a\n1,b\n"
    assert run_csv(lf.replace(b"\n", b"\r\n"), sort_by="v") == b"id,v\r\n2,a\r\n1,b\r\n"


@pytest.mark.parametrize("data", [b'id,v\r\n1,"open\r\n2,x\r\n', b'id,"v\r\n1,2\r\n', b'id,v\n1,a"b\n'])
def test_csv_with_an_unterminated_quote_fails_clearly(data: bytes) -> None:
    with pytest.raises(csv_kernel.CsvInputError, match="never closed"):
        run_csv(data)


# -- cache across owners ---------------------------------------------------------------------------


def test_private_inputs_are_never_answered_from_another_owners_job(redis_url: str) -> None:
    """A sorted list (like a CSV upload) is the client's data: Bob's identical request is not
    `cached: true` from Alice's job, which would reveal she sent it; Alice's own repeat is."""
    from tests.test_auth import ALICE, AS_ALICE, AS_BOB, finish_with, idle_job, make_app, nonce

    app = make_app(redis_url)
    client = app.test_client()
    body = {"numbers": [nonce(), 3, 1]}
    alice = idle_job(app, ALICE, body, job_type="sort")
    finish_with(app, alice, {"sorted": True})
    mine = client.post("/api/v1/sort", json=body, headers=AS_ALICE)
    assert mine.status_code == 200 and mine.get_json()["cached"] is True and mine.get_json()["id"] == alice
    theirs = client.post("/api/v1/sort", json=body, headers=AS_BOB)
    assert theirs.status_code == 202, theirs.get_data(as_text=True)
    assert theirs.get_json()["id"] != alice and theirs.get_json().get("cached") is not True


# -- growth: paused jobs expire, the jobs index is swept --------------------------------------------


def test_a_paused_job_expires_after_paused_ttl_and_a_resumed_one_is_kept(redis_url: str, redis_conn: Redis) -> None:
    app = create_app(settings=Settings(redis_url=redis_url, limits=TEST_LIMITS, wait_slots=8, paused_ttl=123,
                                       **TEST_RATE_LIMITS))
    c = app.test_client()
    job = c.post("/api/v1/primes", json={"start": 10**8, "end": 10**8 + 10**7 + 17, "output": "count"}).get_json()
    assert c.post(f"/api/v1/jobs/{job['id']}/pause").get_json()["status"] == "paused"
    # The reaper ends it as canceled once PAUSED_TTL runs out (its due time); its keys' own expiry is the backstop.
    assert 123 - 5 < redis_conn.zscore(PAUSED_DUE_KEY, job["id"]) - time.time() <= 123
    assert 123 < redis_conn.ttl(f"crunch:job:{job['id']}") <= 123 + PAUSED_GRACE
    assert c.post(f"/api/v1/jobs/{job['id']}/resume").status_code == 202
    assert redis_conn.ttl(f"crunch:job:{job['id']}") == -1
    c.post(f"/api/v1/jobs/{job['id']}/cancel")


def test_a_job_paused_past_paused_ttl_is_canceled_and_a_resumed_one_is_not(redis_url: str) -> None:
    """The reaper's step (Lifecycle.paused_due, expire_paused) in a database of its own (no worker runs these):
    only a job still paused when its PAUSED_TTL ran out ends, as canceled with the reason, and its client's
    live count is released (an expired paused job used to hold its place against MAX_QUEUED_PER_CLIENT)."""
    from jobs.store.admission import CLIENT_LIVE_KEY
    from rest.extensions import service

    url = f"{redis_url.rpartition('/')[0]}/13"
    conn = Redis.from_url(url)
    conn.flushdb()
    app = create_app(settings=Settings(redis_url=url, limits=TEST_LIMITS, wait_slots=8, paused_ttl=100,
                                       **TEST_RATE_LIMITS))
    c = app.test_client()
    ids = [c.post("/api/v1/primes", json={"start": 10**8 + k, "end": 2 * 10**8, "output": "count"}).get_json()["id"]
           for k in range(3)]
    for job_id in ids:
        assert c.post(f"/api/v1/jobs/{job_id}/pause").get_json()["status"] == "paused"
    assert c.post(f"/api/v1/jobs/{ids[1]}/resume").status_code == 202
    assert c.delete(f"/api/v1/jobs/{ids[2]}").status_code == 204
    live = int(conn.get(CLIENT_LIVE_KEY.format(client="127.0.0.1")))
    with app.app_context():
        life = service().life
        assert life.paused_due() == [], "not before PAUSED_TTL"
        due = life.paused_due(now=time.time() + 101)
        assert [r.id for r in due] == [ids[0]]
        assert conn.zrange(PAUSED_DUE_KEY, 0, -1) == [ids[0].encode()], "the resumed and deleted ones' are dropped"
        assert life.expire_paused(due[0]) and not life.expire_paused(due[0])
        assert life.paused_due(now=time.time() + 101) == [] and conn.zcard(PAUSED_DUE_KEY) == 0
    job = c.get(f"/api/v1/jobs/{ids[0]}").get_json()
    assert job["status"] == "canceled" and job["error"]["type"] == "PausedTooLong", job
    assert c.get(f"/api/v1/jobs/{ids[1]}").get_json()["status"] == "queued"
    assert int(conn.get(CLIENT_LIVE_KEY.format(client="127.0.0.1"))) == live - 1
    assert 0 < conn.ttl(f"crunch:job:{ids[0]}") <= 86_400, "kept for RESULT_TTL as a canceled job"


def test_the_index_sweep_drops_entries_of_expired_jobs_only(app, client, redis_conn: Redis) -> None:
    from jobs.store.keys import JOBS_INDEX_KEY
    from rest.extensions import service

    live = client.post("/api/v1/fibonacci", json={"n": 4242}).get_json()["id"]
    ghosts = [f"{i:032x}" for i in range(1, 2501)]
    redis_conn.zadd(JOBS_INDEX_KEY, {g: 1000 + i for i, g in enumerate(ghosts)})  # oldest: swept first
    with app.app_context():
        life = service().life
        removed = 0
        for _ in range(200):  # a sweep resumes where the last stopped: around the index at most once or twice
            removed += life.sweep_index(batch=1000)
            if not any(redis_conn.zmscore(JOBS_INDEX_KEY, ghosts)):
                break
    assert removed >= len(ghosts)
    assert not any(redis_conn.zscore(JOBS_INDEX_KEY, g) for g in ghosts)
    assert redis_conn.zscore(JOBS_INDEX_KEY, live) is not None


# -- storage quota ---------------------------------------------------------------------------------


def test_the_storage_quota_is_reached_refused_and_released(redis_url: str) -> None:
    """Three sorts of 1,000 numbers store 8,000 bytes of input each: a 20,000-byte quota takes two, the
    third gets 429 with nothing queued; a delete and an expiry (the sweep) give the room back.

    In a database of its own: in the session's, the session workers ran these sorts (their inputs
    released, results counted) and swept earlier tests' jobs of 127.0.0.1 while the counts were read."""
    from jobs.store.quota import STORED_TOTAL_KEY, SWEEP_STORED_LUA, sweep_args
    from tests.test_auth import nonce

    url = f"{redis_url.rpartition('/')[0]}/14"
    redis_conn = Redis.from_url(url)
    redis_conn.flushdb()
    app = create_app(settings=Settings(redis_url=url, limits=TEST_LIMITS, wait_slots=8,
                                       max_stored_bytes_per_client=20_000, **TEST_RATE_LIMITS))
    c = app.test_client()  # the client is 127.0.0.1, whose count this test resets first

    def sort(seed: int):
        return c.post("/api/v1/sort", json={"numbers": [seed * 10**6 + i for i in range(1000, 0, -1)]})

    base = nonce()
    total = STORED_TOTAL_KEY.format(client="127.0.0.1")
    redis_conn.delete(total, "crunch:client:127.0.0.1:stored")
    first, second = sort(base), sort(base + 1)
    assert first.status_code == 202 and second.status_code == 202, (first.get_data(), second.get_data())
    per = int(redis_conn.get(total)) // 2  # 8,000 bytes of numbers and the blob's small header
    assert 8000 <= per < 8100 and int(redis_conn.get(total)) == 2 * per
    before = redis_conn.zcard("crunch:jobs")
    third = sort(base + 2)
    assert third.status_code == 429, third.get_data()
    problem = third.get_json()
    assert problem["type"].endswith("storage-quota") and "MAX_STORED_BYTES_PER_CLIENT" in problem["detail"]
    assert int(third.headers["Retry-After"]) > 0
    assert redis_conn.zcard("crunch:jobs") == before  # nothing created or queued
    # A delete releases its bytes at once.
    assert c.delete(f"/api/v1/jobs/{first.get_json()['id']}").status_code == 204
    assert int(redis_conn.get(total)) == per
    again = sort(base + 2)
    assert again.status_code == 202, again.get_data()
    # An expired job (its hash gone) is released by the reaper's sweep.
    redis_conn.delete(f"crunch:job:{second.get_json()['id']}")
    keys, argv = sweep_args()
    for _ in range(100):
        redis_conn.eval(SWEEP_STORED_LUA, 2, *keys, *argv)
        if int(redis_conn.get(total)) == per:
            break
    assert int(redis_conn.get(total)) == per
    c.delete(f"/api/v1/jobs/{again.get_json()['id']}")


def test_a_full_store_keeps_no_part_of_a_refused_upload(redis_url: str, redis_conn: Redis) -> None:
    """A 16 MB sort input that passes maxmemory halfway (its first pipeline of chunks stored, the next
    refused): 503 store-full, and none of its chunks are left behind."""
    from dataclasses import replace

    from tests.test_auth import nonce

    limits = replace(TEST_LIMITS, max_sort_length=2 * 10**6, max_body_bytes=64 << 20)
    app = create_app(settings=Settings(redis_url=redis_url, limits=limits, wait_slots=8, **TEST_RATE_LIMITS))
    body = b'{"numbers": [' + b",".join(b"%d" % (nonce() * 10**7 + i) for i in range(2 * 10**6)) + b"]}"
    before = set(redis_conn.keys("crunch:job:*:input"))
    used = int(redis_conn.info("memory")["used_memory"])
    redis_conn.config_set("maxmemory-policy", "noeviction")
    redis_conn.config_set("maxmemory", str(used + 10 * 1024 * 1024))  # room for about half the input
    try:
        r = app.test_client().post("/api/v1/sort", data=body, content_type="application/json")
    finally:
        redis_conn.config_set("maxmemory", "0")
    assert r.status_code == 503 and r.get_json()["type"].endswith("store-full"), r.get_data()[:300]
    assert set(redis_conn.keys("crunch:job:*:input")) == before
