"""Batches over HTTP: POST /api/v1/batches and the batch resource, its items, events and cancel; and the
browser's batch page (/batches/{id}).

Validation is all or nothing and happens before anything is spent but the one unit of the client's
submit budget a batch costs (a refused body spends it too, as a single submit's does). The items are
then written by jobs.batches in a few pipelined scripts (see there).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

import orjson
from flask import Blueprint, Flask, Response, abort, current_app, redirect, render_template, request, url_for
from werkzeug.exceptions import HTTPException

from jobs.batches import Batch, BatchRequest, BatchService, decode_batch_body, parse_batch
from jobs.errors import InvalidParams
from jobs.store import quota
from jobs.store.admission import Rejected
from rest import auth
from rest.api import MAX_WAIT, json_response, prefer_wait, query_int, read_body
from rest.extensions import crunch
from rest.input_bounds import duplicate_key
from rest.logging import request_id
from rest.problems import PROBLEM_BASE, Problem, validation_problem
from rest.ratelimit import admission, client_id, rejected

bp = Blueprint("batches", __name__, url_prefix="/api/v1")
pages = Blueprint("batch_pages", __name__)

#: Items per page of GET /batches/{id}/jobs by default, and at most.
PAGE_DEFAULT = 100
PAGE_MAX = 1000
COUNTS = ("queued", "started", "paused", "finished", "failed", "canceled")
#: Items per page of the browser's batch page.
HTML_PAGE = 50
#: Seconds between self-refreshes of a running batch's page without JavaScript, and between the
#: progress events of a batch's stream (the counts change with every item; the end is sent at once).
REFRESH_SECONDS = 2
STREAM_INTERVAL = 1.0


def batches() -> BatchService:
    return current_app.extensions["crunch_batches"]


def not_found(batch_id: str) -> Problem:
    return Problem(404, "Not Found", f"no batch with id {batch_id!r} (unknown or expired)",
                   type_=PROBLEM_BASE + "unknown-batch")


def load(batch_id: str) -> Batch:
    """The caller's batch, or the 404 (another owner's batch is exactly as unknown)."""
    batch = batches().get(batch_id)
    if batch is None or (auth.enabled() and batch.owner != auth.current_owner()):
        raise not_found(batch_id)
    return batch


def resource(batch: Batch) -> dict[str, Any]:
    return batches().resource(batch, client_id())


@bp.post("/batches")
def submit_batch() -> Response:
    svc = batches()
    try:
        req = _read_batch()
    except (Problem, HTTPException, InvalidParams):
        try:  # a refused body still spends the client's budget, as a single submit's does
            svc.jobs.admit(admission(validated=False))
        except Rejected as r:
            raise rejected(r) from None
        raise
    wait = prefer_wait()
    try:  # the batch's inputs together against the client's storage quota, before anything is stored
        quota.check(svc.jobs.conn, client_id(), sum(quota.input_bytes(item) for item in req.items),
                    current_app.config["SETTINGS"].max_stored_bytes_per_client)
        sub = svc.submit(req, admission(), auth.current_owner(), {"request_id": request_id() or ""})
    except Rejected as r:
        raise rejected(r) from None
    headers = {"Location": f"/api/v1/batches/{sub.batch.id}"}
    body = resource(sub.batch)
    body["submitted"] = sub.outcomes
    if sub.all_cached:
        return json_response(body, 200, headers)
    if wait:
        done = svc.wait(sub.batch.id, wait, slots=crunch().wait_slots)
        if done is not None and done.finished:
            body = resource(done)
            body["submitted"] = sub.outcomes
            return json_response(body, 200, {**headers, "Preference-Applied": f"wait={wait}"})
    headers["Retry-After"] = str(max(1, min(30, math.ceil(sub.batch.total / 2000))))
    return json_response(body, 202, headers)


def _read_batch() -> BatchRequest:
    if request.mimetype != "application/json" and not (
            request.mimetype.startswith("application/") and request.mimetype.endswith("+json")):
        raise Problem(415, "Unsupported Media Type",
                      f"send the batch as application/json, not {request.mimetype or 'nothing'!r}",
                      type_=PROBLEM_BASE + "media-type", headers={"Accept-Post": "application/json"})
    raw = read_body()
    try:
        body = decode_batch_body(raw)
    except ValueError as exc:
        raise Problem(400, "Malformed JSON", f"the body is not valid JSON: {exc}",
                      type_=PROBLEM_BASE + "malformed-json") from None
    dup = duplicate_key(raw)
    if dup is not None:
        loc = dup[1:] if dup and dup[0] == "body" else dup
        raise validation_problem([{"loc": loc, "msg": "duplicate key: each key may appear once in an object"}],
                                 f"{'.'.join(map(str, loc))}: duplicate key")
    return parse_batch(body, current_app.config["LIMITS"], current_app.config["SETTINGS"])


@bp.get("/batches/<batch_id>")
def get_batch(batch_id: str) -> Response:
    wait = query_int("wait", 0, 0, MAX_WAIT) or 0
    batch = load(batch_id)
    if wait and not batch.finished:
        batch = batches().wait(batch_id, wait, slots=crunch().wait_slots) or batch
    return json_response(resource(batch))


@bp.get("/batches/<batch_id>/jobs")
def batch_jobs(batch_id: str) -> Response:
    batch = load(batch_id)
    limit = query_int("limit", PAGE_DEFAULT, 1, PAGE_MAX) or PAGE_DEFAULT
    cursor = request.args.get("cursor") or None
    try:
        offset = batches().decode_cursor(cursor) if cursor else 0
    except ValueError:
        raise validation_problem([{"loc": ["query", "cursor"], "msg": "invalid cursor"}],
                                 "cursor: invalid cursor") from None
    jobs, next_offset = batches().items(batch, offset, limit)
    next_cursor = batches().encode_cursor(next_offset) if next_offset is not None else None
    return json_response({"jobs": jobs, "next_cursor": next_cursor})


@bp.get("/batches/<batch_id>/events")
def batch_events(batch_id: str) -> Response:
    """The batch resource each time its counts change (at most once per STREAM_INTERVAL), then once more
    when it ends, and the stream closes."""
    ext = crunch()
    svc = batches()
    load(batch_id)
    client = client_id()
    if not ext.wait_slots.acquire(blocking=False):
        raise Problem(503, "Too many open streams", "this server holds its maximum of waiting clients; poll instead",
                      headers={"Retry-After": "5"})

    def stream() -> Iterator[bytes]:
        watch = svc.jobs.hub.watch(batch_id)
        try:
            last = b""
            seq = 0
            yield b"retry: 2000\n\n"
            idle = 0.0
            while True:
                batch = svc.get(batch_id)
                if batch is None:
                    yield b"event: deleted\ndata: {\"id\": \"" + batch_id.encode() + b"\"}\n\n"
                    return
                data = orjson.dumps(svc.resource(batch, client))
                if data != last:
                    seq += 1
                    kind = "status" if batch.finished or not last else "progress"
                    yield f"id: {seq}\nevent: {kind}\n".encode() + b"data: " + data + b"\n\n"
                    last, idle = data, 0.0
                if batch.finished:
                    return
                t0 = time.monotonic()
                watch.get(STREAM_INTERVAL)  # the end wakes it at once; progress is sampled
                idle += time.monotonic() - t0
                if idle >= 15.0:
                    yield b": keep-alive\n\n"
                    idle = 0.0
        finally:
            svc.jobs.hub.unwatch(watch)
            ext.wait_slots.release()

    return Response(stream(), mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@bp.post("/batches/<batch_id>/cancel")
def cancel_batch(batch_id: str) -> Response:
    svc = batches()
    try:
        svc.jobs.admit(admission(scope="control"))
    except Rejected as r:
        raise rejected(r) from None
    batch = load(batch_id)
    if batch.finished:
        raise Problem(409, "Conflict", "every job of this batch has already ended; nothing to cancel",
                      type_=PROBLEM_BASE + "conflict")
    return json_response(resource(svc.cancel(batch)))


# -- the browser page -----------------------------------------------------------------------------


@pages.get("/batches/<batch_id>")
def batch_page(batch_id: str) -> Response:
    if auth.enabled() and auth.current_owner() is None:
        return redirect(url_for("web.login", next=request.full_path.rstrip("?")), 303)  # type: ignore[return-value]
    svc = batches()
    batch = svc.get(batch_id)
    if batch is None or (auth.enabled() and batch.owner != auth.current_owner()):
        abort(404, description=f"There is no batch with id {batch_id!r}: it is unknown, or it has expired.")
    page = query_int("page", 1, 1, 10**6) or 1
    jobs, _ = svc.items(batch, (page - 1) * HTML_PAGE, HTML_PAGE, inline=False)
    pages_total = max(1, math.ceil(batch.total / HTML_PAGE))
    view = svc.resource(batch, client_id())
    done = sum(view["counts"][s] for s in ("finished", "failed", "canceled"))
    html = render_template("batch.html", batch=view, jobs=jobs, page=page, pages=pages_total,
                           first=(page - 1) * HTML_PAGE, done=done, refresh=REFRESH_SECONDS,
                           percent=100.0 * done / batch.total if batch.total else 100.0)
    resp = Response(html, mimetype="text/html")
    resp.headers["Cache-Control"] = "no-cache"
    return resp


@pages.post("/batches/<batch_id>/cancel")
def batch_cancel(batch_id: str) -> Response:
    """The batch page's cancel button (a plain form, CSRF-checked): cancel, then 303 back to the page."""
    if auth.enabled() and auth.current_owner() is None:
        abort(403)
    auth.check_csrf()
    svc = batches()
    batch = svc.get(batch_id)
    if batch is None or (auth.enabled() and batch.owner != auth.current_owner()):
        abort(404)
    if not batch.finished:
        svc.cancel(batch)
    return redirect(url_for("batch_pages.batch_page", batch_id=batch_id), 303)  # type: ignore[return-value]


def init_app(app: Flask) -> None:
    """After extensions.init_app: the batch service shares the app's job service (and its event hub)."""
    app.extensions["crunch_batches"] = BatchService(app.extensions["crunch"].service, app.config["SETTINGS"])
    app.register_blueprint(bp)
    app.register_blueprint(pages)


# -- the OpenAPI document's part (rest.openapi calls this) --------------------------------------------


def extend_openapi(paths: dict[str, Any], schemas: dict[str, Any]) -> None:
    """Add the batch routes and the Batch schema, the `webhook` of submits and the job's `webhooks`."""
    from jobs.batches import json_types
    from jobs.types.registry import JOB_TYPES

    def ref(name: str) -> dict[str, str]:
        return {"$ref": f"#/components/schemas/{name}"}

    def problems(*codes: str) -> dict[str, Any]:
        return {c: {"$ref": f"#/components/responses/{c}"} for c in codes}

    def ok(schema: dict[str, Any], description: str, **extra: Any) -> dict[str, Any]:
        return {"description": description, "content": {"application/json": {"schema": schema}}, **extra}

    delivery = {"type": "object", "required": ["url", "status", "attempts", "last_error"], "properties": {
        "url": {"type": "string"},
        "status": {"type": "string", "enum": ["waiting", "pending", "delivered", "failed"]},
        "attempts": {"type": "integer", "minimum": 0},
        "last_error": {"type": ["string", "null"]}}}
    schemas["WebhookDelivery"] = delivery
    schemas["Job"]["properties"]["webhooks"] = {
        "type": "array", "items": ref("WebhookDelivery"),
        "description": "The webhook deliveries the asking client registered on this job, and their state."}
    counts = {"type": "object", "required": list(COUNTS),
              "properties": {c: {"type": "integer", "minimum": 0} for c in COUNTS}}
    link = {"type": "string"}
    schemas["Batch"] = {
        "type": "object", "description": "A batch: its items' counts by status.",
        "required": ["id", "status", "total", "counts", "created_at", "ended_at", "links"],
        "properties": {
            "id": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
            "status": {"type": "string", "enum": ["running", "finished"],
                       "description": "finished once every item is terminal, whatever their statuses"},
            "total": {"type": "integer", "minimum": 1},
            "counts": counts,
            "created_at": {"type": "string", "format": "date-time"},
            "ended_at": {"type": ["string", "null"], "format": "date-time"},
            "links": {"type": "object", "required": ["self", "jobs", "events", "cancel"],
                      "properties": {k: link for k in ("self", "jobs", "events", "cancel")}},
            "webhooks": {"type": "array", "items": ref("WebhookDelivery")},
            "submitted": {"type": "object", "description": "In the POST's answer only: how many items were "
                                                            "created, deduplicated or answered from cache.",
                          "properties": {k: {"type": "integer"} for k in ("created", "deduplicated", "cached")}},
        },
    }
    def item(name: str) -> dict[str, Any]:
        """One item of a batch: a type, and params as that type's own POST body (its spec's schema)."""
        model = JOB_TYPES[name].params_model.__name__
        required = ["type", "params"] if schemas.get(model, {}).get("required") else ["type"]
        return {"type": "object", "required": required, "additionalProperties": False,
                "properties": {"type": {"const": name}, "params": ref(model),
                               "webhook": {"type": ["string", "null"], "format": "uri",
                                           "description": "Called (signed, Standard Webhooks) when this item's "
                                                          "job ends, as its own POST's `webhook` would be."}}}

    schemas["BatchRequest"] = {
        "type": "object", "required": ["jobs"], "additionalProperties": False,
        "properties": {
            "jobs": {"type": "array", "minItems": 1, "items": {"oneOf": [item(n) for n in json_types()]},
                     "description": "Each item's params are validated as the type's own POST body would be."},
            "webhook": {"type": ["string", "null"], "format": "uri",
                        "description": "Called (signed, Standard Webhooks) when the batch finishes."}},
    }
    webhook_note = (" Add `\"webhook\": \"<http(s) URL>\"` next to the params (a form field for multipart) to "
                    "get a signed POST (Standard Webhooks) when the job ends; it is not part of the request's "
                    "identity.")
    for name in JOB_TYPES:
        op = paths.get(f"/api/v1/{name}", {}).get("post")
        if op is not None:
            op["description"] = op.get("description", "") + webhook_note
    batch_id = {"name": "batch_id", "in": "path", "required": True, "schema": {"type": "string"},
                "example": "9b1f0c2a7e4d4c3b8a5f6e7d8c9b0a1f", "description": "The batch id (32 hex digits)."}
    wait = {"name": "wait", "in": "query", "schema": {"type": "integer", "minimum": 0, "maximum": MAX_WAIT},
            "example": 5,
            "description": f"Long-poll up to this many seconds (<= {MAX_WAIT}) until every item is terminal."}
    paths["/api/v1/batches"] = {"post": {
        "tags": ["batches"], "operationId": "submit_batch", "summary": "Submit many jobs in one request",
        "description": "Every item is submitted exactly as its own POST would be (validation, cache, "
                       "deduplication); one invalid item is a 422 with `errors[].loc` starting "
                       "`[\"jobs\", index]`, and nothing is queued. A batch spends one unit of the submit rate "
                       "budget; its items count against MAX_QUEUED_PER_CLIENT (a batch that would pass it is "
                       "refused whole, 429).",
        "parameters": [{"$ref": "#/components/parameters/Prefer"}],
        "requestBody": {"required": True, "content": {"application/json": {"schema": ref("BatchRequest"), "example": {
            "jobs": [{"type": "fibonacci", "params": {"n": 100}},
                     {"type": "primes", "params": {"start": 0, "end": 1000, "output": "count"}}]}}}},
        "responses": {
            "200": ok(ref("Batch"), "Every item was answered from the cache, or the batch finished within "
                                    "`Prefer: wait=N`."),
            "202": ok(ref("Batch"), "The batch is running.",
                      headers={"Location": {"schema": {"type": "string"}, "required": True,
                                            "description": "The batch's URL, /api/v1/batches/{id}."}}),
            **problems("400", "413", "415", "422", "429", "503")}}}
    paths["/api/v1/batches/{batch_id}"] = {"parameters": [batch_id], "get": {
        "tags": ["batches"], "operationId": "get_batch", "summary": "A batch, its counts by status",
        "parameters": [wait],
        "responses": {"200": ok(ref("Batch"), "The batch."), **problems("404", "422", "503")}}}
    paths["/api/v1/batches/{batch_id}/jobs"] = {"parameters": [batch_id], "get": {
        "tags": ["batches"], "operationId": "batch_jobs", "summary": "The batch's jobs in submission order",
        "parameters": [
            {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": PAGE_MAX,
                                                        "default": PAGE_DEFAULT}, "description": "Jobs per page.",
             "example": 100},
            {"name": "cursor", "in": "query", "schema": {"type": "string"}, "example": "",
             "description": "`next_cursor` of the previous page."}],
        "responses": {"200": ok({"type": "object", "required": ["jobs", "next_cursor"], "properties": {
            "jobs": {"type": "array", "items": {"anyOf": [ref("Job"), {
                "type": "object", "required": ["id", "status"],
                "properties": {"id": {"type": "string"}, "status": {"type": "null"}, "expired": {"type": "boolean"}},
            }]}},
            "next_cursor": {"type": ["string", "null"]}}}, "One page of the items' job resources (small results "
                                                           "inline; an expired item as {id, status: null})."),
                      **problems("404", "422", "503")}}}
    paths["/api/v1/batches/{batch_id}/events"] = {"parameters": [batch_id], "get": {
        "tags": ["batches"], "operationId": "batch_events", "summary": "Server-Sent Events with the batch resource",
        "responses": {"200": {"description": "text/event-stream: the batch each time its counts change, until it "
                                             "is finished.",
                              "content": {"text/event-stream": {"schema": {
                                  "type": "object", "description": "One event.",
                                  "properties": {
                                      "event": {"type": "string"}, "id": {"type": "string"},
                                      "data": {"type": "string", "contentMediaType": "application/json",
                                               "contentSchema": {"anyOf": [ref("Batch"), {
                                                   "type": "object", "required": ["id"],
                                                   "properties": {"id": {"type": "string"}}}]}}}},
                                  "example": "event: status\ndata: {...}\n\n"}}},
                      **problems("404", "503")}}}
    paths["/api/v1/batches/{batch_id}/cancel"] = {"parameters": [batch_id], "post": {
        "tags": ["batches"], "operationId": "cancel_batch", "summary": "Cancel every live job of the batch",
        "responses": {"200": ok(ref("Batch"), "The batch after the cancel."), **problems("404", "409", "429", "503")}}}

