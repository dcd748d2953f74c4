"""GET /openapi.json (OpenAPI 3.1) and GET /docs (Swagger UI served from the app, no CDN).

Each submit operation comes from its type's spec (jobs.types.spec.JobSpec): the body schema of
the pydantic model that validates it with this server's limits (MAX_FIB_N, ...) written in, the
multipart schema, the examples, the summary. So a type appears here as soon as it is registered.
What JSON Schema cannot say (end >= start, a width limit, a column of the uploaded file's header)
is said in words and as `x-crunch-rules` (RULES_KEYWORD); tests/test_openapi.py generates valid
requests that honour those rules and expects every one answered 2xx.
"""

from __future__ import annotations

import copy
from typing import Any

import orjson
from flask import Blueprint, Flask, Response, current_app, send_from_directory, url_for

from jobs.store.status import JobStatus
from jobs.types.registry import JOB_TYPES
from jobs.types.spec import DEFAULT_QUEUE, FAST_QUEUE, JobSpec, Limits

bp = Blueprint("openapi", __name__)

API_VERSION = "1.0.0"
MAX_WAIT = 30
REF = "#/components/schemas/{model}"

#: A multipart body for a form-accepting type whose spec describes none: at least the upload.
GENERIC_FORM = {"type": "object", "required": ["file"],
                "properties": {"file": {"type": "string", "format": "binary"}}}
#: The largest value the API reads from a query string (rest.api.query_int takes up to 18 digits).
QUERY_INT_MAX = 10**18 - 1
#: The extension keyword for rules between fields that JSON Schema cannot state. Each rule has a
#: "kind": "order" (the value of `high` is not below that of `low`), "width" (high - low is at most
#: `maximum` when the fields named in `when` have those values, defaults included), "column" (the
#: value of `field` is a column name of the header row of the CSV upload `file`).
RULES_KEYWORD = "x-crunch-rules"
#: A list cursor (jobs.service.CURSOR_RE, or empty for the first page), and examples of ids.
CURSOR_PATTERN = r"^(?:[0-9]{1,17}(?:\.[0-9]{1,17})?-[0-9a-f]{32})?$"
EXAMPLE_JOB_ID = "4f0c2a9e7b1d4c3e8a5f6b7c8d9e0f1a"
EXAMPLE_CURSOR = f"1764781234.5098383-{EXAMPLE_JOB_ID}"
METRICS_EXAMPLE = ('# HELP crunch_jobs_submitted_total Accepted job submissions by type and outcome\n'
                   '# TYPE crunch_jobs_submitted_total counter\n'
                   'crunch_jobs_submitted_total{outcome="created",type="fibonacci"} 3.0\n')


def _problem_response(description: str, retry_after: bool = False) -> dict[str, Any]:
    resp: dict[str, Any] = {
        "description": description,
        "content": {"application/problem+json": {"schema": {"$ref": REF.format(model="Problem")}}},
    }
    if retry_after:
        resp["headers"] = {"Retry-After": {"$ref": "#/components/headers/Retry-After"}}
    return resp


def _json(schema: dict[str, Any], description: str, example: Any = None, **extra: Any) -> dict[str, Any]:
    media: dict[str, Any] = {"schema": schema}
    if example is not None:
        media["example"] = example
    return {"description": description, "content": {"application/json": media}, **extra}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(model=name)}


PROBLEMS = {
    "400": _problem_response("Malformed JSON, or a request that cannot be parsed at all."),
    "404": _problem_response("No such job (unknown, deleted or expired)."),
    "409": _problem_response("The action conflicts with the job's state."),
    "413": _problem_response("The body is larger than MAX_BODY_BYTES."),
    "415": _problem_response("The body is not in a media type this route accepts (see Accept-Post)."),
    "422": _problem_response("Validation failed, or a limit was crossed; `errors` lists each problem."),
    "429": _problem_response("Rate limit, or too many live jobs from this client; retry after Retry-After.",
                             retry_after=True),
    "503": _problem_response("The job store (Redis) is unreachable, or this process holds its maximum "
                             "of waiting clients.", retry_after=True),
}
#: Only with API_TOKENS configured: no or a wrong bearer token (the response carries WWW-Authenticate).
UNAUTHORIZED = {**_problem_response("API_TOKENS is set on this server and the request has no valid "
                                    "`Authorization: Bearer <token>`."),
                "headers": {"WWW-Authenticate": {"schema": {"type": "string"},
                                                 "description": 'Bearer realm="crunch" (with error="invalid_token" '
                                                                "for a wrong token)."}}}
#: Bearer tokens are optional: a server without API_TOKENS serves every route without one.
SECURITY_SCHEMES = {"bearerAuth": {
    "type": "http", "scheme": "bearer",
    "description": "Needed on every /api route only when the server sets API_TOKENS; each token belongs to an "
                   "owner, who sees only its own jobs (another owner's job answers 404). Health, readiness, "
                   "metrics and this document stay open."}}
OPTIONAL_BEARER: list[dict[str, list[str]]] = [{}, {"bearerAuth": []}]


def _problems(*codes: str) -> dict[str, Any]:
    return {c: {"$ref": f"#/components/responses/{c}"} for c in codes}


def _components_problems() -> dict[str, Any]:
    return copy.deepcopy(PROBLEMS)


def _query_int(minimum: int, maximum: int | None = None, default: int | None = None) -> dict[str, Any]:
    """An integer query parameter; like an absent one, an empty value means the default."""
    number: dict[str, Any] = {"type": "integer", "minimum": minimum, "maximum": QUERY_INT_MAX}
    if maximum is not None:
        number["maximum"] = maximum
    schema: dict[str, Any] = {"anyOf": [number, {"type": "string", "maxLength": 0}]}
    if default is not None:
        schema["default"] = default
    return schema


def _job_id_param() -> dict[str, Any]:
    return {"$ref": "#/components/parameters/JobId"}


def params_schema(spec: JobSpec, limits: Limits, defs: dict[str, Any]) -> dict[str, Any]:
    """The JSON body schema of one job type, from its spec (the validating model, with this server's limits)."""
    schema = spec.json_schema(limits)
    defs.update(schema.pop("$defs", {}))
    return schema


def form_schema(spec: JobSpec, limits: Limits) -> dict[str, Any]:
    """The multipart body, as the spec describes it."""
    return spec.form_schema(limits) or copy.deepcopy(GENERIC_FORM)


def submit_operation(spec: JobSpec, limits: Limits, model_name: str) -> dict[str, Any]:
    content: dict[str, Any] = {}
    if spec.accepts_json:
        content["application/json"] = {"schema": _ref(model_name)}
        if spec.examples:
            content["application/json"]["examples"] = copy.deepcopy(spec.examples)
    if spec.accepts_form:
        form = form_schema(spec, limits)
        content["multipart/form-data"] = {"schema": form}
        examples = getattr(spec, "form_examples", None) or (spec.examples if not spec.accepts_json else None)
        if examples:
            content["multipart/form-data"]["examples"] = copy.deepcopy(examples)
        file_type = form.get("properties", {}).get("file", {}).get("contentMediaType")
        if file_type:
            content["multipart/form-data"]["encoding"] = {"file": {"contentType": file_type}}
    pause_note = "pausable: it checkpoints" if spec.pausable else "not pausable"
    return {
        "tags": ["submit"],
        "operationId": f"submit_{spec.name}",
        "summary": spec.title or f"Submit a {spec.name} job",
        "description": (
            f"Queue a `{spec.name}` job ({pause_note}), join the identical one in flight, or answer "
            "at once from the result cache. Identical requests (same type and canonical params) "
            "never compute twice." + (" An integer field takes a JSON integer: 7.0 is a float and is refused "
                                      "(422), although JSON Schema's `integer` admits it." if spec.accepts_json else "")
        ),
        "parameters": [{"$ref": "#/components/parameters/Prefer"}],
        "requestBody": {"required": True, "content": content},
        "responses": {
            "200": _json(_ref("Job"), "The finished job: an identical request was answered from the cache "
                         "(`cached: true`), or the job finished within `Prefer: wait=N`.",
                         headers={"Location": {"$ref": "#/components/headers/Location"},
                                  "Preference-Applied": {"schema": {"type": "string"},
                                                         "description": "`wait=N` when the server waited."}}),
            "202": _json(_ref("Job"), "A new job was queued, or this request joined the identical job in "
                         "flight (`deduplicated: true`).",
                         headers={"Location": {"$ref": "#/components/headers/Location"},
                                  "Retry-After": {"$ref": "#/components/headers/Retry-After"}}),
            **_problems("400", "413", "415", "422", "429", "503"),
        },
    }


def job_schema() -> dict[str, Any]:
    nullable_time = {"type": ["string", "null"], "format": "date-time"}
    link = {"type": "string"}
    return {
        "type": "object",
        "description": "A job: its request, state, progress and (while small) its result.",
        "required": ["id", "type", "params", "status", "progress", "created_at", "started_at", "ended_at",
                     "duration_ms", "cached", "deduplicated", "result", "result_url", "error", "links"],
        "properties": {
            "id": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
            "type": {"type": "string", "enum": list(JOB_TYPES)},
            "params": {"type": "object", "description": "The canonical params of the request."},
            "summary": {"type": "string", "description": "What the job computes, in one line (its type's "
                                                         "wording, as the pages show it)."},
            "status": {"type": "string", "enum": [s.value for s in JobStatus]},
            "progress": {
                "type": ["object", "null"],
                "required": ["done", "total", "percent"],
                "properties": {"done": {"type": "number"}, "total": {"type": "number"},
                               "percent": {"type": "number", "minimum": 0, "maximum": 100}},
            },
            "created_at": {"type": "string", "format": "date-time"},
            "started_at": nullable_time,
            "ended_at": nullable_time,
            "duration_ms": {"type": ["number", "null"], "minimum": 0,
                            "description": "Execution time (pauses excluded); null until the job ends."},
            "cached": {"type": "boolean"},
            "deduplicated": {"type": "boolean"},
            "result": {"description": "The result, inline while it has at most 10,000 items and 1 MiB; "
                                      "otherwise null and served by result_url."},
            "result_url": {"type": "string"},
            "error": {
                "type": ["object", "null"],
                "required": ["type", "message"],
                "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
            },
            "pausable": {"type": "boolean"},
            "attempt": {"type": "integer", "minimum": 0},
            "runs": {"type": "integer", "minimum": 0},
            "preemptions": {"type": "integer", "minimum": 0,
                            "description": "Times the job went back to queued at a checkpoint so that another "
                                           "client's waiting work could start (it continued from there)."},
            "position": {"type": ["integer", "null"], "minimum": 0,
                         "description": "While queued: how many jobs would be dispatched before this one if no "
                                        "new work arrived (another client's new job may overtake it under fair "
                                        "share); otherwise null."},
            "stats": {"type": ["object", "null"]},
            "queue": {"type": "string"},
            "links": {
                "type": "object",
                "required": ["self", "result", "events", "cancel", "pause", "resume"],
                "properties": {k: link for k in ("self", "result", "events", "cancel", "pause", "resume",
                                                 "retry")},
            },
        },
        "example": {
            "id": EXAMPLE_JOB_ID, "type": "fibonacci", "params": {"n": 10}, "summary": "F(10)",
            "status": "finished", "progress": {"done": 10, "total": 10, "percent": 100.0},
            "created_at": "2026-12-03T17:00:00.000Z", "started_at": "2026-12-03T17:00:00.002Z",
            "ended_at": "2026-12-03T17:00:00.003Z", "duration_ms": 0.4, "cached": False, "deduplicated": False,
            "result": {"n": 10, "digits": 2, "value": "55"}, "result_url": f"/api/v1/jobs/{EXAMPLE_JOB_ID}/result",
            "error": None, "pausable": False, "queue": FAST_QUEUE,
            "links": {k: f"/api/v1/jobs/{EXAMPLE_JOB_ID}" + ("" if k == "self" else f"/{k}")
                      for k in ("self", "result", "events", "cancel", "pause", "resume", "retry")},
        },
    }


def problem_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "description": "RFC 9457 problem details.",
        "required": ["type", "title", "status", "detail"],
        "properties": {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer", "minimum": 400, "maximum": 599},
            "detail": {"type": "string"},
            "errors": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["loc", "msg"],
                    "properties": {
                        "loc": {"type": "array", "items": {"type": ["string", "integer"]}},
                        "msg": {"type": "string"},
                    },
                },
            },
        },
    }


def _job_action(op_id: str, summary: str, description: str, ok: str) -> dict[str, Any]:
    return {
        "tags": ["jobs"],
        "operationId": op_id,
        "summary": summary,
        "description": description,
        "parameters": [_job_id_param()],
        "responses": {ok: _json(_ref("Job"), "The job after the action."), **_problems("404", "409", "429", "503")},
    }


def build_document(limits: Limits) -> dict[str, Any]:
    """The whole OpenAPI 3.1 document for this server's limits."""
    schemas: dict[str, Any] = {"Job": job_schema(), "Problem": problem_schema()}
    paths: dict[str, Any] = {}
    for name, spec in JOB_TYPES.items():
        model_name = spec.params_model.__name__
        if spec.accepts_json:
            schemas[model_name] = params_schema(spec, limits, schemas)
        paths[f"/api/v1/{name}"] = {"post": submit_operation(spec, limits, model_name)}

    paths["/api/v1/jobs"] = {"get": {
        "tags": ["jobs"], "operationId": "list_jobs", "summary": "List jobs, newest first",
        "parameters": [
            {"name": "status", "in": "query", "description": "Only jobs in this status (empty: any).",
             "schema": {"type": "string", "enum": ["", *(s.value for s in JobStatus)]}, "example": "finished"},
            {"name": "type", "in": "query", "description": "Only jobs of this type (empty: any).",
             "schema": {"type": "string", "enum": ["", *JOB_TYPES]}, "example": next(iter(JOB_TYPES), "")},
            {"name": "limit", "in": "query", "schema": _query_int(1, 500, 50), "example": 10},
            {"name": "cursor", "in": "query", "schema": {"type": "string", "pattern": CURSOR_PATTERN},
             "example": EXAMPLE_CURSOR,
             "description": "`next_cursor` of the previous page: the position after which the page starts (the "
                            "last listed job's creation time and id). Any other string is refused (422)."},
        ],
        "responses": {
            "200": _json({"type": "object", "required": ["jobs", "next_cursor"], "properties": {
                "jobs": {"type": "array", "items": _ref("Job")},
                "next_cursor": {"type": ["string", "null"], "pattern": CURSOR_PATTERN}}},
                "One page of jobs (results not inlined)."),
            **_problems("422", "503"),
        },
    }}
    paths["/api/v1/jobs/{job_id}"] = {
        "get": {
            "tags": ["jobs"], "operationId": "get_job", "summary": "Get a job, or long-poll it",
            "parameters": [_job_id_param(), {
                "name": "wait", "in": "query",
                "schema": _query_int(0, MAX_WAIT, 0), "example": 5,
                "description": "Long-poll: answer as soon as the job is terminal or paused, or after this "
                               "many seconds."}],
            "responses": {"200": _json(_ref("Job"), "The job."), **_problems("404", "422", "503")},
        },
        "delete": {
            "tags": ["jobs"], "operationId": "delete_job", "summary": "Cancel (if live) and forget a job",
            "parameters": [_job_id_param()],
            "responses": {"204": {"description": "Deleted."}, **_problems("404", "429", "503")},
        },
    }
    paths["/api/v1/jobs/{job_id}/result"] = {"get": {
        "tags": ["jobs"], "operationId": "get_result", "summary": "The result, whole or one page, streamed",
        "parameters": [
            _job_id_param(),
            {"name": "offset", "in": "query", "schema": _query_int(0, None, 0), "example": 0,
             "description": "First item of the page (array results)."},
            {"name": "limit", "in": "query", "schema": _query_int(0), "example": 100,
             "description": "Items in the page (array results); all the rest when absent."},
            {"name": "format", "in": "query", "schema": {"type": "string", "enum": ["", "json", "csv", "txt"]},
             "example": "csv",
             "description": "Empty or absent: json, except for text results (the csv job's file): csv. "
                            "For a text result, json gives its inline summary."},
        ],
        "responses": {
            "200": {
                "description": "The result. Headers tell the paging: X-Total-Count, X-Offset, X-Limit, Link.",
                "headers": {"X-Total-Count": {"schema": {"type": "string", "pattern": "^[0-9]+$"}},
                            "Link": {"schema": {"type": "string"}}},
                "content": {"application/json": {"schema": {}},
                            "text/csv": {"schema": {"type": "string"}},
                            "text/plain": {"schema": {"type": "string"}}},
            },
            **_problems("404", "409", "422", "503"),
        },
    }}
    paths["/api/v1/jobs/{job_id}/events"] = {"get": {
        "tags": ["jobs"], "operationId": "job_events", "summary": "Server-Sent Events of the job",
        "description": "One event per status or progress change, its data the job resource; the stream "
                       "closes after a terminal state.",
        "parameters": [_job_id_param()],
        "responses": {
            "200": {"description": "The event stream. Each event (`status`, `progress`, or `deleted` when the job "
                                   "is deleted) carries the job resource as JSON in `data`.",
                    "content": {"text/event-stream": {"schema": {
                        "type": "object", "description": "One event.",
                        "properties": {"event": {"type": "string", "enum": ["status", "progress", "deleted"]},
                                       "id": {"type": "string"},
                                       "data": {"type": "string", "contentMediaType": "application/json",
                                                "contentSchema": {"anyOf": [_ref("Job"), {
                                                    "type": "object", "required": ["id"],
                                                    "properties": {"id": {"type": "string"}}}]}}}}}}},
            **_problems("404", "503"),
        },
    }}
    paths["/api/v1/jobs/{job_id}/cancel"] = {"post": _job_action(
        "cancel_job", "Cancel a job", "A queued job is canceled at once, a running one within 2 seconds; "
        "a terminal job gets 409.", "200")}
    paths["/api/v1/jobs/{job_id}/pause"] = {"post": _job_action(
        "pause_job", "Pause a job", "A running or queued job reaches `paused` within 2 seconds and keeps its "
        "progress; a job that is not pausable gets 409.", "200")}
    paths["/api/v1/jobs/{job_id}/resume"] = {"post": _job_action(
        "resume_job", "Resume a paused job", "Queued again, continuing from its checkpoint.", "202")}
    paths["/api/v1/jobs/{job_id}/retry"] = {"post": _job_action(
        "retry_job", "Retry a failed or canceled job", "Queued again from the start.", "202")}

    queue_schema = {"type": "object",
                    "required": ["name", "queued", "started", "finished", "failed", "canceled", "workers"],
                    "properties": {"name": {"type": "string"},
                                   **{k: {"type": "integer", "minimum": 0}
                                      for k in ("queued", "started", "finished", "failed", "canceled", "workers")}}}
    worker_schema = {"type": "object", "required": ["name", "state", "queues", "current_job", "last_heartbeat"],
                     "properties": {"name": {"type": "string"}, "state": {"type": "string"},
                                    "queues": {"type": "array", "items": {"type": "string"}},
                                    "current_job": {"type": ["string", "null"]},
                                    "last_heartbeat": {"type": ["string", "null"], "format": "date-time"}}}
    paths["/api/v1/queues"] = {"get": {
        "tags": ["queues"], "operationId": "list_queues", "summary": "Queues and their counters",
        "responses": {"200": _json({"type": "array", "items": queue_schema}, "Every queue.", example=[
            {"name": DEFAULT_QUEUE, "queued": 3, "started": 2, "finished": 120, "failed": 1, "canceled": 4,
             "workers": 2}]),
                      **_problems("503")}}}
    paths["/api/v1/queues/{name}/jobs"] = {"get": {
        "tags": ["queues"], "operationId": "queue_jobs", "summary": "Waiting jobs in dispatch order",
        "parameters": [{"name": "name", "in": "path", "required": True, "example": DEFAULT_QUEUE,
                        "schema": {"type": "string", "enum": [FAST_QUEUE, DEFAULT_QUEUE]}}],
        "responses": {"200": _json({"type": "object", "required": ["queue", "jobs"],
                                    "properties": {"queue": {"type": "string"},
                                                   "jobs": {"type": "array", "items": _ref("Job")}}},
                                   "The queue's waiting jobs."),
                      **_problems("404", "503")}}}
    paths["/api/v1/workers"] = {"get": {
        "tags": ["queues"], "operationId": "list_workers", "summary": "Workers and what they run",
        "responses": {"200": _json({"type": "array", "items": worker_schema}, "Every registered worker.", example=[
            {"name": "crunch-worker-1", "state": "busy", "queues": [FAST_QUEUE, DEFAULT_QUEUE],
             "current_job": EXAMPLE_JOB_ID, "last_heartbeat": "2026-12-03T17:00:05Z"}]),
                      **_problems("503")}}}

    status_body = {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}}
    paths["/healthz"] = {"get": {"tags": ["operations"], "operationId": "healthz",
                                 "summary": "Liveness: 200 while the process lives",
                                 "responses": {"200": _json(status_body, "Alive.", example={"status": "ok"})}}}
    ready_body = {"type": "object", "required": ["status", "redis", "workers"],
                  "properties": {"status": {"type": "string"}, "redis": {"type": "string"},
                                 "workers": {"type": ["integer", "null"]}, "detail": {"type": "string"}}}
    for path, item in paths.items():
        if path.startswith("/api/"):
            for op in item.values():
                op["security"] = copy.deepcopy(OPTIONAL_BEARER)
                op["responses"]["401"] = {"$ref": "#/components/responses/401"}
    paths["/readyz"] = {"get": {"tags": ["operations"], "operationId": "readyz",
                                "summary": "Readiness: 200 when Redis answers, 503 when not",
                                "responses": {"200": _json(ready_body, "Ready; `workers` counts the workers.",
                                                           example={"status": "ok", "redis": "ok", "workers": 2}),
                                              "503": {**_problem_response(
                                                  "Redis is unreachable, or refused the credentials in REDIS_URL "
                                                  "(the body adds `redis` and `workers`).", retry_after=True)}}}}
    paths["/metrics"] = {"get": {"tags": ["operations"], "operationId": "metrics",
                                 "summary": "Prometheus metrics (text exposition format)",
                                 "responses": {"200": {"description": "The metrics (Prometheus text format).",
                                                       "content": {"text/plain": {"schema": {"type": "string"},
                                                                                  "example": METRICS_EXAMPLE}}},
                                               **_problems("503")}}}
    paths["/openapi.json"] = {"get": {"tags": ["operations"], "operationId": "openapi",
                                      "summary": "This document",
                                      "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1.", example={
                                          "openapi": "3.1.0", "info": {}, "paths": {}})}}}
    paths["/docs"] = {"get": {"tags": ["operations"], "operationId": "docs",
                              "summary": "Interactive documentation (works offline)",
                              "responses": {"200": {"description": "An HTML page.",
                                                    "content": {"text/html": {"schema": {"type": "string"},
                                                                              "example": "<!DOCTYPE html>..."}}}}}}
    from rest.batches import extend_openapi

    extend_openapi(paths, schemas)  # batches, and the webhook field of submits and of the job resource

    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Crunch",
            "version": API_VERSION,
            "description": (
                "Long-running compute jobs behind a REST API. POST a job and get its URL at once; poll it, "
                "long-poll it (`?wait=N`, `Prefer: wait=N`) or watch its events; cancel, pause or resume it. "
                "Errors are RFC 9457 `application/problem+json`. Every response carries an `X-Request-ID` "
                "(yours, if you sent a sane one)."
            ),
        },
        "tags": [{"name": "submit", "description": "Submit jobs, one route per job type."},
                 {"name": "jobs", "description": "Observe and steer jobs."},
                 {"name": "queues", "description": "Queues and workers."},
                 {"name": "operations", "description": "Health, readiness, metrics, this document."}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": {**_components_problems(), "401": copy.deepcopy(UNAUTHORIZED)},
            "securitySchemes": copy.deepcopy(SECURITY_SCHEMES),
            "parameters": {
                "JobId": {"name": "job_id", "in": "path", "required": True,
                          "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"}, "example": EXAMPLE_JOB_ID,
                          "description": "The job id (32 hex digits), as the submit answered it."},
                "Prefer": {"name": "Prefer", "in": "header", "schema": {"type": "string"},
                           "example": "wait=10",
                           "description": f"RFC 7240 `wait=N` (N <= {MAX_WAIT}): hold the response up to N "
                                          "seconds; if the job finishes meanwhile the answer is 200 with the "
                                          "finished job and `Preference-Applied: wait=N`."},
            },
            "headers": {
                # Required here: OpenAPI 3.1 allows only summary and description beside a $ref.
                "Location": {"schema": {"type": "string"}, "required": True,
                             "description": "The job's URL, /api/v1/jobs/{id}."},
                "Retry-After": {"schema": {"type": "string", "pattern": "^[0-9]+$"},
                                "description": "Seconds to wait before asking again."},
            },
        },
    }


def document() -> dict[str, Any]:
    """This app's document, built once (it depends only on the registry and the limits)."""
    ext = current_app.extensions
    if "openapi" not in ext:
        ext["openapi"] = orjson.dumps(build_document(current_app.config["LIMITS"]))
    return orjson.loads(ext["openapi"])


@bp.get("/openapi.json")
def openapi_json() -> Response:
    ext = current_app.extensions
    if "openapi" not in ext:
        document()
    return Response(ext["openapi"], mimetype="application/json")


# -- /docs: Swagger UI from the swagger-ui-bundle package, scripts from files (no inline JS) -----

#: Swagger UI sets inline style attributes and shows data: images; nothing leaves the origin.
DOCS_CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
            "connect-src 'self'; font-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; "
            "form-action 'self'")

_DOCS_HTML = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Crunch API</title>
<link rel="stylesheet" href="{css}">
<link rel="icon" type="image/png" href="{icon}">
</head>
<body>
<div id="swagger-ui" data-spec-url="{spec}"></div>
<script src="{bundle}"></script>
<script src="{init}"></script>
</body>
</html>
"""

_DOCS_INIT_JS = """window.addEventListener("load", function () {
  var root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.getAttribute("data-spec-url"),
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    tryItOutEnabled: true,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout"
  });
});
"""


def swagger_ui_dir() -> str:
    from swagger_ui_bundle import swagger_ui_path
    return str(swagger_ui_path)


@bp.get("/docs")
def docs() -> Response:
    html = _DOCS_HTML.format(
        css=url_for("openapi.docs_static", filename="swagger-ui.css"),
        icon=url_for("openapi.docs_static", filename="favicon-32x32.png"),
        bundle=url_for("openapi.docs_static", filename="swagger-ui-bundle.js"),
        init=url_for("openapi.docs_init"),
        spec=url_for("openapi.openapi_json"),
    )
    return Response(html, mimetype="text/html", headers={"Content-Security-Policy": DOCS_CSP})


@bp.get("/docs/init.js")
def docs_init() -> Response:
    return Response(_DOCS_INIT_JS, mimetype="text/javascript", headers={"Cache-Control": "public, max-age=3600"})


@bp.get("/docs/static/<path:filename>")
def docs_static(filename: str) -> Response:
    return send_from_directory(swagger_ui_dir(), filename, max_age=86_400)


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
