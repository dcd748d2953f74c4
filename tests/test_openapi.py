"""The OpenAPI document describes the API truthfully: Schemathesis drives every operation in-process
(the Flask app over WSGI) and every response must conform to the document, with no 5xx.

The app under test uses its own Redis database (no workers listen there, so nothing runs) and
no wait slots, so `Prefer: wait` and `?wait` answer at once and event streams are 503 (documented).
"""

from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from jobs.types.registry import JOB_TYPES
from rest import create_app
from rest.openapi import build_document
from rest.settings import Settings
from tests.conftest import TEST_LIMITS, TEST_RATE_LIMITS, run_fast_queue

#: Zero 5xx, and statuses, media types, headers and bodies as documented; a body the schema rejects
#: must be rejected. (Not "every schema-valid body is accepted": primes has cross-field rules, end >=
#: start and the list width, that JSON Schema cannot state, so the document states them in words.)
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance, negative_data_rejection]

#: Examples per operation and phase; 20 operations x a few phases stays well under a minute.
MAX_EXAMPLES = int(os.environ.get("OPENAPI_MAX_EXAMPLES", "15"))


def _other_db(url: str, db: int) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{db}"


@pytest.fixture(scope="module")
def st_app(redis_url: str):
    app = create_app(settings=Settings(redis_url=_other_db(redis_url, 7), limits=TEST_LIMITS, wait_slots=0,
                                       **TEST_RATE_LIMITS))
    return app


#: The document as the app serves it for TEST_LIMITS (test_served_document_is_this_one proves it),
#: loaded at import so the operations parametrize the test; requests go to `st_app` over WSGI.
schema = schemathesis.openapi.from_dict(build_document(TEST_LIMITS))


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
def test_api_conforms_to_openapi(case, st_app) -> None:
    case.call_and_validate(app=st_app, checks=CHECKS)


def test_served_document_is_this_one(st_app) -> None:
    assert st_app.test_client().get("/openapi.json").get_json() == build_document(TEST_LIMITS)


def test_document_is_openapi_31_and_lists_every_route(st_app) -> None:
    client = st_app.test_client()
    resp = client.get("/openapi.json")
    assert resp.status_code == 200 and resp.mimetype == "application/json"
    doc = resp.get_json()
    assert doc["openapi"].startswith("3.1")
    paths = doc["paths"]
    for name in JOB_TYPES:
        assert "post" in paths[f"/api/v1/{name}"]
    for path in ("/api/v1/jobs", "/api/v1/jobs/{job_id}", "/api/v1/jobs/{job_id}/result",
                 "/api/v1/jobs/{job_id}/events", "/api/v1/jobs/{job_id}/cancel", "/api/v1/jobs/{job_id}/pause",
                 "/api/v1/jobs/{job_id}/resume", "/api/v1/jobs/{job_id}/retry", "/api/v1/queues",
                 "/api/v1/queues/{name}/jobs", "/api/v1/workers", "/healthz", "/readyz", "/metrics"):
        assert path in paths, path
    # Every Flask route of the API is documented (the browser pages and static files are not API).
    documented = {p.replace("{", "<").replace("}", ">") for p in paths}
    for rule in st_app.url_map.iter_rules():
        if rule.rule.startswith("/api/"):
            # The submit rule serves every registered type (<job_type:...>): each one is documented.
            expanded = [rule.rule.replace("<job_type:job_type>", name) for name in JOB_TYPES] \
                if "<job_type:job_type>" in rule.rule else [rule.rule]
            for path in expanded:
                assert path in documented, path


def test_request_schemas_are_the_validating_models_with_the_limits(st_app) -> None:
    doc = st_app.test_client().get("/openapi.json").get_json()
    schemas = doc["components"]["schemas"]
    for spec in (s for s in JOB_TYPES.values() if s.accepts_json):
        generated = spec.params_model.model_json_schema()
        documented = schemas[spec.params_model.__name__]
        assert documented["properties"].keys() == generated["properties"].keys()
        assert documented.get("required") == generated.get("required")
    assert schemas["FibonacciParams"]["properties"]["n"]["maximum"] == TEST_LIMITS.max_fib_n
    assert schemas["PrimesParams"]["properties"]["end"]["maximum"] == TEST_LIMITS.max_primes_end
    assert schemas["SortParams"]["properties"]["numbers"]["maxItems"] == TEST_LIMITS.max_sort_length


def test_submit_documents_statuses_prefer_and_wait(st_app) -> None:
    doc = st_app.test_client().get("/openapi.json").get_json()
    for name, spec in JOB_TYPES.items():
        op = doc["paths"][f"/api/v1/{name}"]["post"]
        assert {"200", "202", "400", "413", "415", "422", "429", "503"} <= op["responses"].keys()
        assert op["parameters"] == [{"$ref": "#/components/parameters/Prefer"}]
        media = op["requestBody"]["content"]
        assert ("application/json" in media) == spec.accepts_json
        assert ("multipart/form-data" in media) == spec.accepts_form
    wait = next(p for p in doc["paths"]["/api/v1/jobs/{job_id}"]["get"]["parameters"] if p.get("name") == "wait")
    number = wait["schema"]["anyOf"][0]
    assert number["type"] == "integer" and number["minimum"] == 0 and number["maximum"] == 30
    for action in ("cancel", "pause", "resume", "retry"):
        assert {"404", "409"} <= doc["paths"][f"/api/v1/jobs/{{job_id}}/{action}"]["post"]["responses"].keys()


def test_docs_page_works_offline(st_app) -> None:
    client = st_app.test_client()
    page = client.get("/docs")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert "http://" not in html and "https://" not in html, "the page must not load anything from elsewhere"
    assert "<script>" not in html, "no inline scripts"
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    for asset in ("/docs/static/swagger-ui-bundle.js", "/docs/static/swagger-ui.css", "/docs/init.js"):
        assert asset in html or asset == "/docs/init.js"
        resp = client.get(asset)
        assert resp.status_code == 200, asset
        assert len(resp.get_data()) > 100
        resp.close()
    assert client.get("/docs/static/../__init__.py").status_code == 404


# -- real jobs in every state, each response checked against the document -----------------------


def test_job_lifecycle_responses_conform(redis_url: str) -> None:
    url = _other_db(redis_url, 7)
    app = create_app(settings=Settings(redis_url=url, limits=TEST_LIMITS, wait_slots=4,
                                       **TEST_RATE_LIMITS))

    def call(method: str, path: str, expect: int, **kw) -> object:
        case = schema[path][method].Case(**kw)
        resp = case.call(app=app)
        assert resp.status_code == expect, (method, path, kw, resp.text[:300])
        case.validate_response(resp, checks=CHECKS)
        return resp

    def submit(name: str, body: dict, expect: int = 202) -> str:
        return call("POST", f"/api/v1/{name}", expect, body=body, media_type="application/json").json()["id"]

    nonce = int.from_bytes(os.urandom(4), "big") % 50_000  # fresh requests, not cache hits of an earlier run
    fib = submit("fibonacci", {"n": nonce})
    srt = submit("sort", {"numbers": [3, 1.5, -2, nonce], "descending": True})
    call("POST", "/api/v1/fibonacci", 202, body={"n": nonce}, media_type="application/json")  # joins
    pausable = submit("primes", {"start": nonce, "end": nonce + 10**6, "output": "count"})
    job = {"job_id": pausable}
    call("GET", "/api/v1/jobs/{job_id}/result", 409, path_parameters=job)
    call("POST", "/api/v1/jobs/{job_id}/resume", 409, path_parameters=job)
    call("POST", "/api/v1/jobs/{job_id}/pause", 200, path_parameters=job)
    call("POST", "/api/v1/jobs/{job_id}/resume", 202, path_parameters=job)
    call("POST", "/api/v1/jobs/{job_id}/cancel", 200, path_parameters=job)
    call("POST", "/api/v1/jobs/{job_id}/cancel", 409, path_parameters=job)
    call("POST", "/api/v1/jobs/{job_id}/retry", 202, path_parameters=job)
    call("GET", "/api/v1/queues/{name}/jobs", 200, path_parameters={"name": "default"})
    call("DELETE", "/api/v1/jobs/{job_id}", 204, path_parameters=job)
    call("GET", "/api/v1/jobs/{job_id}", 404, path_parameters=job)

    run_fast_queue(url)
    for jid in (fib, srt):
        done = call("GET", "/api/v1/jobs/{job_id}", 200, path_parameters={"job_id": jid}, query={"wait": 5}).json()
        assert done["status"] == "finished", done
        call("GET", "/api/v1/jobs/{job_id}/events", 200, path_parameters={"job_id": jid})
        call("GET", "/api/v1/jobs/{job_id}/result", 200, path_parameters={"job_id": jid})
    for fmt in ("json", "csv", "txt"):
        call("GET", "/api/v1/jobs/{job_id}/result", 200, path_parameters={"job_id": srt},
             query={"offset": 1, "limit": 2, "format": fmt})
    cached = call("POST", "/api/v1/sort", 200, body={"numbers": [3, 1.5, -2, nonce], "descending": True},
                  media_type="application/json").json()
    assert cached["cached"] is True
    call("GET", "/api/v1/jobs", 200, query={"status": "finished", "limit": 2})
    call("GET", "/api/v1/queues", 200)
    call("GET", "/api/v1/workers", 200)
    call("GET", "/readyz", 200)
    call("GET", "/metrics", 200)


@pytest.mark.parametrize("url", [
    "/api/v1/jobs/0123?wait=" + "9" * 5000,   # was a 500: int() of more than 4300 digits
    "/api/v1/jobs?limit=" + "9" * 5000,
    "/api/v1/jobs?cursor=bmFuOng",            # was a 500: base64 of "nan:x", a NaN score bound for Redis
    "/api/v1/jobs/0123?wait=%D9%A3",          # an Arabic-Indic digit is not an integer here
])
def test_bad_query_values_are_422_not_500(st_app, url: str) -> None:
    resp = st_app.test_client().get(url)
    assert resp.status_code == 422, resp.get_data(as_text=True)
    assert resp.mimetype == "application/problem+json"
