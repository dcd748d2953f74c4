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
from jobs.errors import BadRequest, InvalidParams
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
    except (Problem, HTTPException, InvalidParams, BadRequest):
        try:  # a refused body still spends the client's budget, as a single submit's does
            svc.jobs.admit(admission(validated=False))
        except Rejected as r:
            raise rejected(r) from None
        raise
    wait = prefer_wait()
    try:
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
