"""Primes params up to 2^64 - 1, exact: validation, canonical keys, the resource, forms, limits and their messages.

With MAX_PRIMES_END = 2^64 - 1, a request near the top of the range must validate and dedupe by
exact integers (no float anywhere: 2^64 - 1 and 2^64 - 2 are one float apart of nothing), and
the count width is bounded by MAX_PRIMES_COUNT_WIDTH the way the list width is, with both limits
named in the 422 and stated in /openapi.json. (The sieve's exactness near 2^64 is the kernel's,
tested with it.) Jobs go to a queue no worker serves: only the web side is under test here.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from flask import Flask
from flask.testing import FlaskClient

from infra.processes import ROOT
from jobs.types.registry import JOB_TYPES
from jobs.types.spec import MAX_UINT64, Limits
from rest import create_app
from rest.settings import Settings
from tests.conftest import TEST_RATE_LIMITS
from tests.test_web_pages import CSRF, FormClient, field_error, html, job_id_of

TOP = MAX_UINT64
WIDE = Limits(max_primes_end=TOP, max_primes_list_width=10**6, max_primes_count_width=10**12)


@pytest.fixture
def wide_app(redis_url: str) -> Flask:
    url = redis_url.rpartition("/")[0] + "/10"  # no worker serves this database: jobs stay queued
    return create_app(settings=Settings(redis_url=url, limits=WIDE, wait_slots=0, **TEST_RATE_LIMITS))


@pytest.fixture
def api(wide_app: Flask) -> FlaskClient:
    return wide_app.test_client()


def errors_of(resp) -> list[dict]:
    assert resp.status_code == 422, resp.get_data(as_text=True)
    return resp.get_json()["errors"]


def test_params_up_to_2_64_minus_1_validate_and_dedupe_exactly(api: FlaskClient) -> None:
    lo = TOP - 1_000 - int.from_bytes(os.urandom(3), "big")
    body = {"start": lo, "end": TOP, "output": "count"}
    first = api.post("/api/v1/primes", json=body)
    assert first.status_code == 202, first.get_data(as_text=True)
    job = first.get_json()
    assert job["params"] == body and job["params"]["end"] == 18446744073709551615
    assert f"{TOP:,}" in job["summary"]
    assert api.post("/api/v1/primes", json=body).get_json()["id"] == job["id"], "same params, same job"
    # One less at the top is another request: as floats, 2^64 - 1 and 2^64 - 2 are the same number.
    other = api.post("/api/v1/primes", json={**body, "end": TOP - 1}).get_json()
    assert other["id"] != job["id"] and other["params"]["end"] == TOP - 1
    # The raw body keeps every digit too (no float on the way through orjson and the record).
    raw = api.get(f"/api/v1/jobs/{job['id']}").get_data()
    assert b'"end":18446744073709551615' in raw and b'"start":' + str(lo).encode() in raw


def test_past_2_64_minus_1_is_a_422_naming_the_limit_not_a_float(api: FlaskClient) -> None:
    for end in (TOP + 1, 10**30):
        errs = errors_of(api.post("/api/v1/primes", data=f'{{"start": 0, "end": {end}, "output": "count"}}',
                                  content_type="application/json"))
        assert errs == [{"loc": ["body", "end"], "msg": f"Value error, end must be at most {TOP} (MAX_PRIMES_END)"}]
    # A float that is integral is still a float, refused as the contract says.
    errs = errors_of(api.post("/api/v1/primes", json={"start": 0, "end": 7767.0}))
    assert errs[0]["loc"] == ["body", "end"]


def test_a_counts_width_is_limited_like_a_lists(api: FlaskClient) -> None:
    lo = TOP - 10**13
    errs = errors_of(api.post("/api/v1/primes", json={"start": lo, "end": lo + 10**12 + 1, "output": "count"}))
    assert errs[0]["loc"] == ["body", "end"] and "MAX_PRIMES_COUNT_WIDTH" in errs[0]["msg"]
    assert "at most 1000000000000 for output=count" in errs[0]["msg"]
    errs = errors_of(api.post("/api/v1/primes", json={"start": lo, "end": lo + 10**6 + 1, "output": "list"}))
    assert "MAX_PRIMES_LIST_WIDTH" in errs[0]["msg"]
    assert api.post("/api/v1/primes", json={"start": lo, "end": lo + 10**12, "output": "count"}).status_code == 202


def test_the_document_states_both_widths_and_the_top(api: FlaskClient) -> None:
    doc = api.get("/openapi.json").get_json()
    params = doc["components"]["schemas"]["PrimesParams"]
    assert params["properties"]["end"]["maximum"] == TOP and params["properties"]["start"]["maximum"] == TOP
    rules = {r.get("setting"): r for r in params["x-crunch-rules"] if r["kind"] == "width"}
    assert rules["MAX_PRIMES_LIST_WIDTH"]["maximum"] == 10**6 and rules["MAX_PRIMES_LIST_WIDTH"]["when"] == {
        "output": "list"}
    assert rules["MAX_PRIMES_COUNT_WIDTH"]["maximum"] == 10**12
    assert "MAX_PRIMES_COUNT_WIDTH" in params["description"] and "MAX_PRIMES_LIST_WIDTH" in params["description"]


def test_forms_and_links_take_20_digits_and_refuse_21(wide_app: Flask) -> None:
    wide_app.test_client_class = FormClient
    page = wide_app.test_client()
    with page.session_transaction() as sess:
        sess["csrf"] = CSRF
    home = html(page.get("/"))
    assert f'max="{TOP}"' in home and "18,446,744,073,709,551,615" in home
    assert "range up to 1,000,000,000,000 wide" in home, "the count width is stated on the form"
    job_id = job_id_of(page.post("/submit/primes", data={"start": str(TOP - 50), "end": str(TOP),
                                                          "output": "count"}))
    assert f"[{TOP - 50:,}, {TOP:,}]" in html(page.get(f"/jobs/{job_id}"))
    resp = page.get(f"/primes?start=0&end={TOP + 1}&output=count")
    assert "at most" in field_error(html(resp), "primes", "end")
    resp = page.get(f"/primes?start=0&end={10**20}&output=count")
    assert "too long" in field_error(html(resp), "primes", "end")


def test_a_limit_past_2_64_minus_1_stops_the_process_with_the_settings_name() -> None:
    with pytest.raises(ValueError, match="MAX_PRIMES_END"):
        Limits(max_primes_end=TOP + 1)
    with pytest.raises(ValueError, match="MAX_PRIMES_COUNT_WIDTH"):
        Limits(max_primes_count_width=-1)
    env = {**os.environ, "MAX_PRIMES_END": str(TOP + 1)}
    out = subprocess.run([sys.executable, "-c", "from jobs.settings import Settings; Settings.from_env()"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "MAX_PRIMES_END" in out.stderr and "Traceback" not in out.stderr
    env["MAX_PRIMES_END"] = str(TOP)
    out = subprocess.run([sys.executable, "-c", "from jobs.settings import Settings; "
                          "print(Settings.from_env().limits.max_primes_end)"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == str(TOP), out.stderr
    assert JOB_TYPES["primes"].parse_json({"start": TOP, "end": TOP}, Limits(max_primes_end=TOP)).params == {
        "start": TOP, "end": TOP, "output": "list"}
