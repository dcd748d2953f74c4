"""A job type is one spec: a type registered in this test process only is served end to end.

`SquareJob` below is the whole of the new type (README: "Adding a job type"): params, limits,
form, label, summary, examples, routing and its kernel's dotted path. Nothing else in the tree
names it, yet the API takes it, the pages show its form and its jobs, /openapi.json documents it
(valid OpenAPI 3.1), the CLI submits it from the server's description, and a real rq worker
(SimpleWorker in this process, so it sees the registration) runs it through jobs.worker.runner.
It lives in Redis database 9, where no worker of the session's real worker processes listens.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
from openapi_spec_validator import OpenAPIV31SpecValidator
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationInfo, field_validator
from werkzeug.serving import make_server

from client.cli import main as crunch
from jobs.context import KernelContext
from jobs.types.form import FormField
from jobs.types.registry import JOB_TYPES, register, registered
from jobs.types.spec import FAST_QUEUE, JobSpec, Limits
from rest import create_app
from rest.settings import Settings
from tests.conftest import TEST_LIMITS, TEST_RATE_LIMITS, run_fast_queue
from tests.test_web_pages import CSRF, FormClient, field_error, html, job_id_of

MAX_X = 1_000_000


class SquareParams(BaseModel):
    """Body of POST /api/v1/square."""

    model_config = ConfigDict(extra="forbid")

    x: StrictInt = Field(ge=0, description="The number to square.")

    @field_validator("x")
    @classmethod
    def _within_limit(cls, x: int, info: ValidationInfo) -> int:
        if x > MAX_X:
            raise ValueError(f"x must be at most {MAX_X}")
        return x


class SquareJob(JobSpec):
    """x squared: the smallest complete job type."""

    name: ClassVar[str] = "square"
    params_model = SquareParams
    kernel = "tests.test_job_types:square"
    timeout = 60
    pausable = False

    label = "Square"
    description = "The square of a whole number."
    button = "Square it"
    form = (FormField("x", "x", required=True, placeholder="12", hint=f"A whole number up to {MAX_X:,}."),)
    links = True

    title = "x squared"
    limit_keywords: ClassVar[dict[str, dict[str, str]]] = {}
    examples: ClassVar[dict[str, dict[str, Any]]] = {"twelve": {"summary": "12 squared", "value": {"x": 12}}}

    def summary(self, params: dict[str, Any]) -> str:
        return f"{int(params['x']):,} squared"

    def json_schema(self, limits: Limits) -> dict[str, Any]:
        schema = super().json_schema(limits)
        schema["properties"]["x"]["maximum"] = MAX_X
        return schema

    def queue_for(self, params: dict[str, Any]) -> str:
        return FAST_QUEUE


def square(params: dict[str, Any], ctx: KernelContext) -> dict[str, Any]:
    """The kernel, imported by the worker from its dotted path."""
    assert ctx.segments is None, "a type that does not declare needs gets no extras"
    x = params["x"]
    ctx.progress(1, 1)
    ctx.output.write_value({"x": x, "value": str(x * x)})
    return {"multiplications": 1}


def _db(url: str, db: int) -> str:
    return url.rpartition("/")[0] + f"/{db}"


@pytest.fixture
def square_app(redis_url: str) -> Iterator[tuple[Any, str]]:
    url = _db(redis_url, 9)
    with registered(SquareJob()):
        app = create_app(settings=Settings(redis_url=url, limits=TEST_LIMITS, wait_slots=4, **TEST_RATE_LIMITS))
        yield app, url


def test_a_type_registered_in_the_test_is_served_by_the_api_the_pages_openapi_and_a_worker(square_app) -> None:
    app, url = square_app
    api = app.test_client()

    # /openapi.json: the operation, its summary, example and schema, all from the spec; and still valid.
    doc = api.get("/openapi.json").get_json()
    assert list(OpenAPIV31SpecValidator(doc).iter_errors()) == []
    op = doc["paths"]["/api/v1/square"]["post"]
    assert op["summary"] == "x squared" and op["operationId"] == "submit_square"
    media = op["requestBody"]["content"]["application/json"]
    assert media["examples"]["twelve"]["value"] == {"x": 12}
    assert doc["components"]["schemas"]["SquareParams"]["properties"]["x"]["maximum"] == MAX_X
    assert "square" in doc["components"]["schemas"]["Job"]["properties"]["type"]["enum"]

    # The API: the spec validates (422 at the field), routes and names the job.
    assert api.post("/api/v1/square", json={"x": MAX_X + 1}).status_code == 422
    bad = api.post("/api/v1/square", json={"x": 12.0})
    assert bad.status_code == 422 and bad.get_json()["errors"][0]["loc"] == ["body", "x"]
    first = api.post("/api/v1/square", json={"x": 12})
    assert first.status_code == 202, first.get_data(as_text=True)
    job = first.get_json()
    assert job["type"] == "square" and job["queue"] == FAST_QUEUE and job["summary"] == "12 squared"
    assert api.post("/api/v1/square", json={"x": 12}).get_json()["id"] == job["id"], "identical requests join"

    # The pages: the form on the home page, a POST and a GET link through the same spec.
    app.test_client_class = FormClient
    page = app.test_client()
    with page.session_transaction() as sess:
        sess["csrf"] = CSRF
    home = html(page.get("/"))
    assert 'id="square-form"' in home and 'action="/submit/square"' in home and ">Square<" in home
    assert re.search(r'id="square-x"[^>]*type="number"', home) and "A whole number up to 1,000,000." in home
    assert 'id="square-x-hint"' in home
    from_form = job_id_of(page.post("/submit/square", data={"x": "13"}))
    from_link = job_id_of(page.get("/square?x=14"))
    refused = page.post("/submit/square", data={"x": "abc"})
    assert refused.status_code == 422 and "whole number" in field_error(html(refused), "square", "x")
    assert "at most 1000000" in field_error(html(page.get(f"/square?x={MAX_X + 1}")), "square", "x")

    # A real rq worker runs the fast queue: the runner looks the kernel up by the spec's dotted path.
    run_fast_queue(url)
    for job_id, x in ((job["id"], 12), (from_form, 13), (from_link, 14)):
        done = api.get(f"/api/v1/jobs/{job_id}").get_json()
        assert done["status"] == "finished", done
        assert done["result"] == {"x": x, "value": str(x * x)} and done["stats"] == {"multiplications": 1}
    csv = api.get(f"/api/v1/jobs/{job['id']}/result?format=csv").get_data(as_text=True)
    assert csv.splitlines() == ["x,value", "12,144"]

    # The job page and the lists name it with the spec's label and summary.
    job_page = html(page.get(f"/jobs/{from_form}"))
    assert "Square job" in job_page and "13 squared" in job_page and "169" in job_page
    listed = html(page.get("/jobs?type=square"))
    assert "14 squared" in listed and "12 squared" in listed
    api_list = api.get("/api/v1/jobs?type=square").get_json()["jobs"]
    assert {j["id"] for j in api_list} >= {job["id"], from_form, from_link}


def test_the_cli_submits_any_type_from_the_servers_description(square_app, capsys, tmp_path) -> None:
    app, url = square_app
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        assert crunch(["--url", base, "types"]) == 0
        listed = capsys.readouterr().out
        assert re.search(r"^square\s+x squared$", listed, re.M) and "NAME=VALUE: x" in listed
        assert re.search(r"^primes\s+", listed, re.M)

        with pytest.raises(SystemExit) as usage:  # argparse's exit, as for any usage error
            crunch(["--url", base, "submit", "square", "x=oops"])
        assert usage.value.code == 2
        assert "x: 'oops' is not an integer" in capsys.readouterr().err
        assert crunch(["--url", base, "submit", "square", "x=15", "--no-wait"]) == 0
        job_id = capsys.readouterr().out.strip()
        assert re.fullmatch(r"[0-9a-f]{32}", job_id)

        # The built-in types through the same command: typed JSON fields, and a multipart upload.
        assert crunch(["--url", base, "submit", "primes", "start=0", f"end={10**6 + 7}", "output=count",
                       "--no-wait", "--json"]) == 0
        primes = json.loads(capsys.readouterr().out)
        assert primes["params"] == {"start": 0, "end": 1_000_007, "output": "count"}
        sales = tmp_path / "sales.csv"
        sales.write_text("date,amount\n2024-01-02,5\n2024-03-04,7\n")
        assert crunch(["--url", base, "submit", "csv", "sort_by=amount", "--file", str(sales), "--no-wait",
                       "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["params"]["sort_by"] == "amount"

        run_fast_queue(url)
        assert crunch(["--url", base, "status", job_id]) == 0
        status = capsys.readouterr().out
        assert re.search(r"^params\s+15 squared$", status, re.M) and "finished" in status
        assert crunch(["--url", base, "wait", job_id]) == 0
        assert capsys.readouterr().out == "225\n"
    finally:
        server.shutdown()
        thread.join(10)


def test_outside_the_registration_the_type_is_unknown(redis_url: str) -> None:
    app = create_app(settings=Settings(redis_url=_db(redis_url, 9), limits=TEST_LIMITS, **TEST_RATE_LIMITS))
    client = app.test_client()
    assert "square" not in JOB_TYPES
    assert client.post("/api/v1/square", json={"x": 1}).status_code == 404
    assert client.get("/square?x=1").status_code == 404
    assert "/api/v1/square" not in client.get("/openapi.json").get_json()["paths"]
    assert client.post("/api/v1/jobs").status_code == 405, "the API's own segments are not type names"


@pytest.mark.parametrize("change, words", [
    ({"name": "jobs"}, "must match"),
    ({"name": "Bad Name"}, "must match"),
    ({"name": "fibonacci"}, "already registered"),
    ({"kernel": "no_colon"}, "module:function"),
    ({"needs": frozenset({"gpu"})}, "no context provides"),
    ({"downloads": ("json", "xlsx")}, "downloads"),
])
def test_an_incomplete_spec_is_refused_at_registration(change: dict[str, Any], words: str) -> None:
    spec = type("Broken", (SquareJob,), change)()
    with pytest.raises(ValueError, match=words):
        register(spec)
    assert JOB_TYPES.get(spec.name) is not spec
