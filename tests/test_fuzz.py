"""Hypothesis fuzzing of the request parsers: any body, content type or query gets a 2xx or a
problem+json 4xx, never a 5xx; and edge-case jobs never crash, hang or kill a real worker."""

from __future__ import annotations

import csv
import io
import json
import os
import string
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from werkzeug.datastructures import MultiDict

from infra.processes import Api, Web, Workers
from jobs.types.spec import Limits
from rest import create_app
from rest.settings import Settings
from tests.conftest import TEST_RATE_LIMITS

PROBLEM = "application/problem+json"
SUBMIT = ["/api/v1/fibonacci", "/api/v1/primes", "/api/v1/sort", "/api/v1/csv"]
#: Tiny limits: whatever valid job the fuzzer creates stays cheap for the workers that run later tests.
FUZZ_LIMITS = Limits(max_fib_n=2000, max_primes_end=100_000, max_primes_list_width=10_000,
                     max_sort_length=50, max_body_bytes=64 * 1024)
#: Together the fuzz tests stay well under a minute on a shared 2-core machine; FUZZ_EXAMPLES=5000 hunts harder.
FUZZ = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "300")), deadline=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def fuzz_client(redis_url: str) -> FlaskClient:
    """A module-wide in-process client (hypothesis runs many examples per test function)."""
    app = create_app(settings=Settings(redis_url=redis_url, limits=FUZZ_LIMITS, wait_slots=4, **TEST_RATE_LIMITS))
    return app.test_client()


def check(resp: Any) -> None:
    """The invariant: no 5xx, and every 4xx is problem+json whose status matches the response."""
    body = resp.get_data()
    assert resp.status_code < 500, body[:2000]
    if resp.status_code >= 400:
        assert resp.mimetype == PROBLEM, (resp.status_code, resp.mimetype, body[:500])
        problem = json.loads(body)
        assert problem["status"] == resp.status_code, problem
        assert {"type", "title", "status", "detail"} <= problem.keys(), problem
        if "errors" in problem:
            assert all({"loc", "msg"} <= e.keys() for e in problem["errors"]), problem
    elif resp.mimetype == "application/json":
        json.loads(body)


# -- strategies ---------------------------------------------------------------------------------

#: Number literals as raw text, including ones JSON parsers disagree about.
RAW_NUMBERS = st.one_of(
    st.sampled_from(["1e400", "-1e400", "1E+400", "1e-400", "NaN", "Infinity", "-Infinity", "-0", "-0.0",
                     "0e0", "1.7976931348623157e308", "5e-324", "9" * 30, "-" + "9" * 30, "1" + "0" * 400,
                     "9" * 5000, "18446744073709551616", "-9223372036854775809", "01", "1.", ".5", "+1", "0x10"]),
    st.integers().map(str),
    st.integers(min_value=-(10**60), max_value=10**60).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
)
KEYS = st.one_of(st.sampled_from(["n", "start", "end", "output", "numbers", "descending", "file", ""]),
                 st.text(max_size=8))


def _raw_json(depth: int = 3) -> st.SearchStrategy[str]:
    """JSON-ish text: valid structure with raw (possibly out-of-range or invalid) number literals
    and possibly duplicate keys."""
    leaf = st.one_of(RAW_NUMBERS, st.sampled_from(["true", "false", "null", '"x"', '"\\ud800"', '"é"', '"10"']),
                     st.text(max_size=10).map(json.dumps))
    if depth == 0:
        return leaf
    inner = _raw_json(depth - 1)
    arrays = st.lists(inner, max_size=6).map(lambda xs: "[" + ",".join(xs) + "]")
    objects = st.lists(st.tuples(KEYS.map(json.dumps), inner), max_size=5).map(
        lambda kv: "{" + ",".join(f"{k}:{v}" for k, v in kv) + "}")
    return st.one_of(leaf, arrays, objects)


RAW_JSON = _raw_json()
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(min_value=-(10**80), max_value=10**80)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=6) | st.dictionaries(KEYS, children, max_size=5),
    max_leaves=20,
)
#: Objects shaped like real requests, with each field possibly of the wrong type.
SHAPED = st.fixed_dictionaries({}, optional={
    "n": JSON_VALUES, "start": JSON_VALUES, "end": JSON_VALUES,
    "output": st.sampled_from(["list", "count", "sum", ""]) | JSON_VALUES,
    "numbers": st.lists(st.integers() | st.floats(allow_nan=False, allow_infinity=False), max_size=60) | JSON_VALUES,
    "descending": st.booleans() | JSON_VALUES,
})
BIG_INTS = st.integers(min_value=-(10**40), max_value=10**40)
#: Bodies that are valid or one step off, so the fuzzer gets past the first checks and into job creation.
NEAR_VALID = st.one_of(
    st.tuples(st.just("/api/v1/fibonacci"), st.fixed_dictionaries({"n": st.integers(-3, 2100)})),
    st.tuples(st.just("/api/v1/primes"), st.fixed_dictionaries(
        {"start": st.integers(-3, 100_010), "end": st.integers(-3, 100_010)},
        optional={"output": st.sampled_from(["list", "count", "List", None])})),
    st.tuples(st.just("/api/v1/sort"), st.fixed_dictionaries(
        {"numbers": st.lists(st.integers(-5, 5) | BIG_INTS | st.floats(allow_nan=False, allow_infinity=False),
                             max_size=55)},
        optional={"descending": st.booleans()})),
)
CONTENT_TYPES = st.one_of(
    st.sampled_from(["application/json", "application/json; charset=utf-8", "application/problem+json",
                     "application/vnd.x+json", "text/plain", "text/csv", "application/x-www-form-urlencoded",
                     "multipart/form-data", "multipart/form-data; boundary=", "multipart/form-data; boundary=xyz",
                     "application/octet-stream", "", "*/*", "application/json; charset=latin-1",
                     "application/json;;;", "application/ json"]),
    st.text(string.printable, max_size=30),
)
FIELD_NAMES = st.one_of(st.sampled_from(["file", "descending", "date_column", "from", "till", "sort_by", "numbers"]),
                        st.text(max_size=10))
FIELD_VALUES = st.one_of(
    st.sampled_from(["", "true", "false", "1", "0", "on", "off", "yes", "2024-01-01", "2024-02-30", "date",
                     "amount", "9999-12-31", "0001-01-01", "  ", "\x00"]),
    st.text(max_size=20),
)
FILE_BODIES = st.one_of(
    st.binary(max_size=300),
    st.lists(RAW_NUMBERS, max_size=30).map(lambda xs: " ,\n\t".join(xs).encode()),
    st.sampled_from([b"", b"\xef\xbb\xbf", b"date,amount\n", b"date,amount\n2024-01-01,5\n", b"a,a\n1,2\n",
                     b"\xff\xfe,\n", b'"unterminated\n1,2\n', b"date\r\n2024-01-01\r\n", b"\n\n\n"]),
    st.lists(st.lists(st.text(max_size=6), min_size=1, max_size=4), min_size=1, max_size=6).map(
        lambda rows: "\n".join(",".join(r) for r in rows).encode("utf-8", "surrogatepass")),
)
QUERY_VALUES = st.one_of(
    st.sampled_from(["", "0", "1", "30", "31", "-1", "1.5", "1e3", "abc", "9" * 30, "٣", "0x1", " 1", "+1", "%",
                     "queued", "finished", "primes", "json", "csv", "txt", "xml"]),
    st.text(max_size=12),
)


# -- in-process fuzzing ----------------------------------------------------------------------------

@FUZZ
@given(path=st.sampled_from(SUBMIT), raw=RAW_JSON)
@example(path="/api/v1/fibonacci", raw='{"n": 1e400}')
@example(path="/api/v1/primes", raw='{"start": 0, "end": 1e400}')
@example(path="/api/v1/sort", raw='{"numbers": [1, 1e400]}')
@example(path="/api/v1/sort", raw='{"numbers": [1e400, "\\ud800"], "\\ud800": 1}')
@example(path="/api/v1/fibonacci", raw='{"\\ud800": 1e400}')
@example(path="/api/v1/fibonacci", raw='{"n": 1, "n": 2}')
def test_raw_json_text_never_5xx(fuzz_client: FlaskClient, path: str, raw: str) -> None:
    check(fuzz_client.post(path, data=raw.encode("utf-8", "surrogatepass"), content_type="application/json"))


@FUZZ
@given(path=st.sampled_from(SUBMIT), body=JSON_VALUES | SHAPED)
def test_json_values_never_5xx(fuzz_client: FlaskClient, path: str, body: Any) -> None:
    check(fuzz_client.post(path, data=json.dumps(body), content_type="application/json"))


@FUZZ
@given(case=NEAR_VALID)
def test_near_valid_bodies_never_5xx(fuzz_client: FlaskClient, case: tuple[str, dict[str, Any]]) -> None:
    path, body = case
    resp = fuzz_client.post(path, data=json.dumps(body), content_type="application/json")
    check(resp)
    assert resp.status_code in (200, 202, 422), resp.get_data(as_text=True)


CSV_DATES = st.sampled_from(["2024-01-01", "2024-02-29", "2023-02-29", "", "x", "2024-01-01T10:00:00Z"])
CSV_ROWS = st.lists(st.tuples(CSV_DATES, st.sampled_from(["1", "-2.5", "", "abc", "1e3"]), st.text(max_size=5)),
                    max_size=8)


@FUZZ
@given(rows=CSV_ROWS, options=st.fixed_dictionaries({}, optional={
    "date_column": st.sampled_from(["date", "amount", "nope", ""]), "from": FIELD_VALUES, "till": FIELD_VALUES,
    "sort_by": st.sampled_from(["date", "amount", "name", "", "DATE"]), "descending": FIELD_VALUES}))
def test_near_valid_csv_uploads_never_5xx(fuzz_client: FlaskClient, rows: list[tuple[str, str, str]],
                                          options: dict[str, str]) -> None:
    buf = io.StringIO()
    csv.writer(buf).writerows([("date", "amount", "name"), *rows])
    data = MultiDict([*options.items(), ("file", (io.BytesIO(buf.getvalue().encode("utf-8", "surrogatepass")),
                                                  "t.csv"))])
    resp = fuzz_client.post("/api/v1/csv", data=data, content_type="multipart/form-data")
    check(resp)
    assert resp.status_code in (200, 202, 422), resp.get_data(as_text=True)


@pytest.mark.parametrize("path, raw, loc", [
    ("/api/v1/fibonacci", '{"n": 1e400}', ["body", "n"]),
    ("/api/v1/fibonacci", '{"n": -1e400}', ["body", "n"]),
    ("/api/v1/fibonacci", '{"n": 1' + "0" * 400 + "}", ["body", "n"]),
    ("/api/v1/primes", '{"start": 0, "end": 1E+400}', ["body", "end"]),
    ("/api/v1/sort", '{"numbers": [1, 1e400]}', ["body", "numbers", 1]),
    ("/api/v1/sort", '{"numbers": [-1e400, ' + "9" * 30 + "]}", ["body", "numbers", 0]),
])
def test_numbers_beyond_a_double_are_422_not_400(fuzz_client: FlaskClient, path: str, raw: str, loc: list) -> None:
    """RFC 8259 allows any number literal, so 1e400 is well-formed JSON that fails validation (422)."""
    resp = fuzz_client.post(path, data=raw, content_type="application/json")
    check(resp)
    assert resp.status_code == 422, resp.get_data(as_text=True)
    assert any(e["loc"] == loc for e in resp.get_json(force=True)["errors"]), resp.get_json(force=True)


@pytest.mark.parametrize("raw", ['{"n": NaN}', '{"n": Infinity}', '{"n": -Infinity}', '{"n": 1e400, "m": NaN}',
                                 '{"n": 1e400', '{"n": 1e400}}', "[" * 2000 + "1e400" + "]" * 2000])
def test_non_json_numbers_stay_400(fuzz_client: FlaskClient, raw: str) -> None:
    """NaN and Infinity are not JSON, and an out-of-range number does not excuse broken syntax."""
    for path in ("/api/v1/fibonacci", "/api/v1/sort"):
        resp = fuzz_client.post(path, data=raw, content_type="application/json")
        check(resp)
        assert resp.status_code == 400, resp.get_data(as_text=True)


@FUZZ
@given(path=st.sampled_from(SUBMIT), data=st.binary(max_size=500), ctype=CONTENT_TYPES)
def test_arbitrary_bytes_and_content_types_never_5xx(fuzz_client: FlaskClient, path: str, data: bytes,
                                                     ctype: str) -> None:
    try:
        resp = fuzz_client.post(path, data=data, headers={"Content-Type": ctype})
    except ValueError:  # werkzeug's client refuses some header values itself
        return
    check(resp)


@FUZZ
@given(path=st.sampled_from(["/api/v1/sort", "/api/v1/csv"]),
       fields=st.lists(st.tuples(FIELD_NAMES, FIELD_VALUES), max_size=5),
       files=st.lists(st.tuples(FIELD_NAMES, st.one_of(st.none(), st.text(max_size=10)), FILE_BODIES), max_size=3))
@example(path="/api/v1/csv", fields=[("date_column", "date"), ("from", "2024-01-01"), ("till", "2023-01-01")],
         files=[("file", "a.csv", b"date,amount\n2024-01-01,5\n")])
@example(path="/api/v1/sort", fields=[("descending", "on")], files=[("file", "n.txt", b"1e400 2 3")])
def test_multipart_forms_never_5xx(fuzz_client: FlaskClient, path: str, fields: list[tuple[str, str]],
                                   files: list[tuple[str, str | None, bytes]]) -> None:
    data: list[tuple[str, Any]] = list(fields)
    data += [(name, (io.BytesIO(body), filename or "")) for name, filename, body in files]
    try:
        resp = fuzz_client.post(path, data=MultiDict(data), content_type="multipart/form-data")
    except (ValueError, TypeError):  # werkzeug's client refuses some names itself
        return
    check(resp)


@FUZZ
@given(boundary=st.text(string.ascii_letters + string.digits + "-_'()+", min_size=1, max_size=20),
       parts=st.lists(st.tuples(st.binary(max_size=40), st.binary(max_size=200)), max_size=4),
       tail=st.sampled_from([b"--\r\n", b"", b"\r\n", b"--", b"garbage"]),
       path=st.sampled_from(["/api/v1/sort", "/api/v1/csv"]))
def test_raw_multipart_never_5xx(fuzz_client: FlaskClient, boundary: str, parts: list[tuple[bytes, bytes]],
                                 tail: bytes, path: str) -> None:
    b = boundary.encode()
    body = b"".join(b"--" + b + b"\r\n" + head + b"\r\n\r\n" + content + b"\r\n" for head, content in parts)
    body += b"--" + b + tail
    check(fuzz_client.post(path, data=body, content_type=f"multipart/form-data; boundary={boundary}"))


@FUZZ
@given(route=st.sampled_from(["/api/v1/jobs/{id}", "/api/v1/jobs/{id}/result", "/api/v1/jobs"]),
       params=st.lists(st.tuples(st.sampled_from(["wait", "offset", "limit", "status", "type", "cursor", "format"])
                                 | st.text(max_size=5), QUERY_VALUES), max_size=4),
       job_id=st.sampled_from([uuid.uuid4().hex, "nope", "..", "%00", "a" * 300]))
def test_query_strings_never_5xx(fuzz_client: FlaskClient, route: str, params: list[tuple[str, str]],
                                 job_id: str) -> None:
    # wait= on an unknown job answers at once; on /jobs it is ignored.
    check(fuzz_client.get(route.format(id=job_id), query_string=params))


@FUZZ
@given(params=st.lists(st.tuples(st.sampled_from(["offset", "limit", "format"]), QUERY_VALUES), max_size=3))
def test_result_paging_of_a_finished_job_never_5xx(fuzz_client: FlaskClient, finished_job: str,
                                                   params: list[tuple[str, str]]) -> None:
    check(fuzz_client.get(f"/api/v1/jobs/{finished_job}/result", query_string=params))


@FUZZ
@given(params=st.lists(st.tuples(st.just("wait"), QUERY_VALUES), max_size=2))
def test_wait_on_a_finished_job_never_5xx(fuzz_client: FlaskClient, finished_job: str,
                                          params: list[tuple[str, str]]) -> None:
    check(fuzz_client.get(f"/api/v1/jobs/{finished_job}", query_string=params))


@pytest.fixture(scope="module")
def finished_job(fuzz_client: FlaskClient, redis_url: str) -> str:
    """A finished sort job made in-process (no workers): submit it, then run it in a burst worker."""
    resp = fuzz_client.post("/api/v1/sort", json={"numbers": [5, 3, 1, 4, 2, 6, 7, 9, 8]})
    job = resp.get_json()
    if job["status"] != "finished":
        from redis import Redis
        from rq.serializers import JSONSerializer

        from jobs.store.queues import JsonJob, JsonQueue
        from jobs.worker.rq_worker import CrunchWorker

        conn = Redis.from_url(redis_url)
        queue = JsonQueue(job["queue"], connection=conn)
        CrunchWorker([queue], connection=conn, serializer=JSONSerializer, job_class=JsonJob,
                     queue_class=JsonQueue, name=f"fuzz-{uuid.uuid4().hex[:8]}").work(burst=True)
    job = fuzz_client.get(f"/api/v1/jobs/{job['id']}").get_json()
    assert job["status"] == "finished", job
    return job["id"]


# -- end to end: edge-case jobs on real workers -------------------------------------------------------

def _edge_json() -> Iterator[tuple[str, Any]]:
    yield from [("fibonacci", {"n": 0}), ("fibonacci", {"n": 1}), ("fibonacci", {"n": 2}), ("fibonacci", {"n": 93}),
                ("fibonacci", {"n": 94}), ("fibonacci", {"n": 100_000})]
    yield from [("primes", {"start": 0, "end": 0}), ("primes", {"start": 0, "end": 1}),
                ("primes", {"start": 2, "end": 2}), ("primes", {"start": 1, "end": 2, "output": "count"}),
                ("primes", {"start": 999_999_937, "end": 999_999_937}),
                ("primes", {"start": 10**12 - 100, "end": 10**12}),
                ("primes", {"start": 10**12, "end": 10**12, "output": "count"}),
                ("primes", {"start": 29, "end": 31}), ("primes", {"start": 0, "end": 2**32 + 20, "output": "count"})]
    yield from [("sort", {"numbers": []}), ("sort", {"numbers": [0]}), ("sort", {"numbers": [-0.0, 0, 0.0]}),
                ("sort", {"numbers": [5e-324, -5e-324, 1.7976931348623157e308, -1.7976931348623157e308]}),
                ("sort", {"numbers": [2**63, -(2**63), 2**64, -(2**64) - 1, 2**63 - 1], "descending": True}),
                ("sort", {"numbers": [10**200, 1e200, -(10**300), 1.5, 2, 2.0]}),
                ("sort", {"numbers": [1] * 300 + [0]})]


def _edge_files() -> Iterator[tuple[str, bytes, dict[str, str]]]:
    yield ("sort", b"\xef\xbb\xbf3 2\t1\r\n0,,,-1 ", {})
    yield ("sort", b"1e308 -1e308 5e-324 " + b"9" * 400 + b" -" + b"9" * 400, {"descending": "on"})
    yield ("csv", b"date,amount\n", {})
    yield ("csv", b"date,amount\r\n2024-01-01,5\r\n2024-13-01,x\r\n,\r\n", {"date_column": "date",
                                                                            "from": "2024-01-01", "sort_by": "amount"})
    yield ("csv", "ünï,çødé\n\"a\nb\",1\nc,\n".encode(), {"sort_by": "çødé", "descending": "true"})
    yield ("csv", b"date,n\n2024-01-01,1\n", {"date_column": "date", "from": "2030-01-01", "till": "2030-01-01"})
    yield ("csv", b"a,b\n1,2,3\n4\n\"x\",\"y\"\n", {"sort_by": "b"})


@pytest.mark.e2e
def test_edge_case_jobs_end_cleanly_and_workers_survive(api: Api, web: Web, workers: Workers) -> None:
    restarts = workers.tail(100_000).count("exited with")
    ids = []
    for kind, body in _edge_json():
        r = api.post(f"/api/v1/{kind}", json=body)
        assert r.status_code in (200, 202), (kind, body, r.text)
        ids.append((kind, body, r.json()["id"]))
    for kind, data, fields in _edge_files():
        r = api.post(f"/api/v1/{kind}", files={"file": ("edge.txt", data)}, data=fields)
        assert r.status_code in (200, 202), (kind, data[:60], r.text)
        ids.append((kind, fields, r.json()["id"]))
    for kind, what, job_id in ids:
        job = api.wait_done(job_id, timeout=120)
        assert job["status"] in ("finished", "failed"), (kind, what, job)
        if job["status"] == "failed":
            assert job["error"]["type"] and job["error"]["message"], job
        else:
            assert job["error"] is None
            r = api.get(f"/api/v1/jobs/{job_id}/result")
            assert r.status_code == 200, r.text
    assert workers.alive and web.alive
    assert workers.tail(100_000).count("exited with") == restarts, workers.tail()
    assert len(api.get("/api/v1/workers").json()) >= 2
    # A sample of the results, against what the contract says.
    results = {(k, json.dumps(w, sort_keys=True)): api.get(f"/api/v1/jobs/{i}").json()["result"] for k, w, i in ids}
    assert results[("fibonacci", json.dumps({"n": 0}))]["value"] == "0"
    assert results[("primes", json.dumps({"end": 0, "start": 0}, sort_keys=True))] == []
    assert results[("primes", json.dumps({"end": 2, "start": 2}, sort_keys=True))] == [2]
    assert results[("primes", json.dumps({"end": 31, "start": 29}, sort_keys=True))] == [29, 31]
    assert results[("sort", json.dumps({"numbers": []}))] == []
