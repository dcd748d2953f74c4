"""The /api/v1 blueprint: validation, then one call into the job service."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import Any

import orjson
from flask import Blueprint, Response, current_app, g, request, stream_with_context
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from jobs.errors import InvalidParams
from jobs.service import Outcome, Submitted
from jobs.sharing import submit_owned
from jobs.store import quota
from jobs.store.admission import Rejected
from jobs.store.record import JobRecord
from jobs.store.status import TERMINAL, JobStatus
from jobs.types.registry import JOB_TYPES
from jobs.types.spec import Submission
from rest import auth, webhooks
from rest.draining import STOPPING
from rest.extensions import crunch, service
from rest.input_bounds import duplicate_key
from rest.logging import request_id
from rest.metrics import count_submission
from rest.problems import PROBLEM_BASE, Problem, validation_problem
from rest.ratelimit import admission, client_id, rejected

bp = Blueprint("api", __name__, url_prefix="/api/v1")

MAX_WAIT = 30
#: RFC 7240 `wait=N`; a value of more than 6 digits is not a preference Crunch understands, so the
#: whole preference is ignored (RFC 7240 section 2: unknown or malformed preferences are ignored).
_PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*\"?(\d{1,6})(?![\d])\"?", re.IGNORECASE)


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """orjson everywhere: fast, and it passes pre-encoded result fragments through."""
    resp = Response(orjson.dumps(obj), status=status, mimetype="application/json")
    for k, v in (headers or {}).items():
        resp.headers[k] = v
    return resp


def not_found(job_id: str) -> Problem:
    return Problem(404, "Not Found", f"no job with id {job_id!r} (unknown or expired)",
                   type_=PROBLEM_BASE + "unknown-job")


def load(job_id: str) -> JobRecord:
    """The caller's job, or the unknown-job 404; another owner's job is exactly as unknown (never 403)."""
    rec = auth.visible(service().get(job_id))
    if rec is None:
        raise not_found(job_id)
    return rec


def guard(job_id: str) -> None:
    """404 for another owner's job before acting on it; free (no lookup) when tokens are off."""
    if auth.enabled():
        load(job_id)


def query_int(name: str, default: int | None, lo: int, hi: int | None = None) -> int | None:
    """A non-negative integer query parameter, or 422 naming it."""
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    # ASCII digits only, and few enough that int() cannot hit CPython's 4300-digit limit (a 500).
    if not re.fullmatch(r"[0-9]{1,18}", raw) or int(raw) < lo or (hi is not None and int(raw) > hi):
        bound = f" between {lo} and {hi}" if hi is not None else f" >= {lo}"
        raise validation_problem([{"loc": ["query", name], "msg": f"must be an integer{bound}"}],
                                 f"query parameter {name!r} must be an integer{bound}")
    return int(raw)


def read_body() -> bytes:
    """The whole body, and 413 for a chunked one over MAX_CONTENT_LENGTH: werkzeug checks only a
    declared Content-Length, and silently cuts a longer chunked stream at the cap (then a 400 or worse)."""
    raw = request.get_data(cache=False)
    cap = current_app.config.get("MAX_CONTENT_LENGTH")
    if cap is not None and request.content_length is None and len(raw) >= cap \
            and request.environ["wsgi.input"].read(1):
        raise RequestEntityTooLarge()
    return raw


def read_submission(job_type: str) -> Submission:
    """Parse the body by content type; 415 for anything but JSON (or multipart where allowed)."""
    spec = JOB_TYPES[job_type]
    limits = current_app.config["LIMITS"]
    mimetype = request.mimetype
    if mimetype == "application/json" or (mimetype.startswith("application/") and mimetype.endswith("+json")):
        if not spec.accepts_json:
            raise unsupported(spec)
        raw = read_body()
        try:
            body = spec.decode_body(raw)
        except ValueError as exc:
            raise Problem(400, "Malformed JSON", f"the body is not valid JSON: {exc}",
                          type_=PROBLEM_BASE + "malformed-json") from None
        dup = duplicate_key(raw)
        if dup is not None:  # 422, not 400: valid JSON, ambiguous content (see rest.input_bounds)
            raise validation_problem([{"loc": dup, "msg": "duplicate key: each key may appear once in an object"}],
                                     f"{'.'.join(map(str, dup))}: duplicate key")
        webhooks.take_from_json(body)  # next to the params, not one of them (nor part of the identity)
        return spec.parse_json(body, limits, raw=raw)
    if mimetype == "multipart/form-data" and spec.accepts_form:
        # Werkzeug names a part without a name None, which the forms' field checks cannot sort (a 500).
        if None in request.form or None in request.files:
            raise validation_problem([{"loc": ["body"], "msg": "every multipart part needs a name"}],
                                     "body: every multipart part needs a name")
        return spec.parse_form(webhooks.take_from_form(request.form), request.files, limits)
    raise unsupported(spec)


def unsupported(spec: Any) -> Problem:
    accepted = ["application/json"] if spec.accepts_json else []
    if spec.accepts_form:
        accepted.append("multipart/form-data")
    return Problem(415, "Unsupported Media Type",
                   f"send the body as {' or '.join(accepted)}, not {request.mimetype or 'nothing'!r}",
                   type_=PROBLEM_BASE + "media-type", headers={"Accept-Post": ", ".join(accepted)})


def prefer_wait() -> int:
    """Seconds asked for with RFC 7240 `Prefer: wait=N`, capped at 30."""
    m = _PREFER_WAIT.search(request.headers.get("Prefer", ""))
    return min(int(m.group(1)), MAX_WAIT) if m else 0


def wait_for(job_id: str, seconds: float, fresh: Submitted | None = None) -> JobRecord | None:
    """Long-poll within this process's wait slots so waiters never starve other requests."""
    ext = crunch()
    if seconds <= 0 or not ext.wait_slots.acquire(blocking=False):
        ext.service.unwatch(fresh)
        return ext.service.get(job_id)
    try:
        return ext.service.wait(job_id, seconds, fresh)
    finally:
        ext.wait_slots.release()


def accepted(rec: JobRecord, deduplicated: bool) -> Response:
    spec = JOB_TYPES[rec.type]
    retry = max(1, min(30, math.ceil(spec.expected_seconds(rec.params) / 4)))
    return json_response(service().resource(rec, deduplicated=deduplicated, client=client_id()), 202,
                         {"Location": f"/api/v1/jobs/{rec.id}", "Retry-After": str(retry)})


def submit(job_type: str) -> Response:
    svc = service()
    try:
        sub = read_submission(job_type)
    except (Problem, HTTPException, InvalidParams):
        try:  # a refused body still spends the client's budget, and past it the answer is the 429
            svc.admit(admission(validated=False))
        except Rejected as r:
            raise rejected(r) from None
        raise
    wait = prefer_wait()
    adm = admission()
    sub.extra["client"] = adm.client
    sub.extra["request_id"] = request_id() or ""
    stored = quota.input_bytes(sub)
    if stored:
        sub.extra["input_bytes"] = stored
    # The quota is checked inside the admission's script (before the budget is spent): one round trip less.
    adm.stored_limit = max(0, current_app.config["SETTINGS"].max_stored_bytes_per_client)
    adm.stored_adding = stored
    try:
        submitted = submit_owned(svc, sub, auth.current_owner(), adm, watch=wait > 0)
    except Rejected as r:
        raise rejected(r) from None
    rec, outcome = submitted
    webhooks.register(rec.id, adm.client)
    count_submission(job_type, outcome)
    g.log_job_id = rec.id
    if outcome is Outcome.CACHED:
        return json_response(svc.resource(rec, cached=True, client=adm.client), 200,
                             {"Location": f"/api/v1/jobs/{rec.id}"})
    if wait:
        done = wait_for(rec.id, wait, submitted)
        if done is not None and done.status in TERMINAL:
            return json_response(svc.resource(done, deduplicated=outcome is Outcome.JOINED, client=adm.client), 200,
                                 {"Location": f"/api/v1/jobs/{rec.id}",
                                  "Preference-Applied": f"wait={wait}"})
        rec = done or rec
    return accepted(rec, outcome is Outcome.JOINED)


# One rule for every registered type (rest.extensions.JobTypeConverter); the spec does the rest.
bp.add_url_rule("/<job_type:job_type>", "submit", submit, methods=["POST"])


@bp.get("/jobs/<job_id>")
def get_job(job_id: str) -> Response:
    wait = query_int("wait", 0, 0, MAX_WAIT) or 0
    if wait:
        guard(job_id)
        rec = wait_for(job_id, wait)
    else:
        rec = auth.visible(service().get(job_id))
    if rec is None:
        raise not_found(job_id)
    return json_response(service().resource(rec, client=client_id()))


@bp.get("/jobs")
def list_jobs() -> Response:
    status = request.args.get("status") or None
    type_ = request.args.get("type") or None
    errors = []
    if status and status not in {s.value for s in JobStatus}:
        errors.append({"loc": ["query", "status"], "msg": f"must be one of {', '.join(s.value for s in JobStatus)}"})
    if type_ and type_ not in JOB_TYPES:
        errors.append({"loc": ["query", "type"], "msg": f"must be one of {', '.join(JOB_TYPES)}"})
    if errors:
        raise validation_problem(errors, "; ".join(f"{e['loc'][1]}: {e['msg']}" for e in errors))
    limit = query_int("limit", 50, 1, 500) or 50
    try:
        recs, cursor = service().list(status, type_, limit, request.args.get("cursor") or None,
                                      owner=auth.current_owner())
    except ValueError:
        raise validation_problem([{"loc": ["query", "cursor"], "msg": "invalid cursor"}],
                                 "cursor: invalid cursor") from None
    svc = service()
    return json_response({"jobs": [svc.resource(r, inline=False) for r in recs], "next_cursor": cursor})


_FORMATS = {"json": "application/json", "csv": "text/csv; charset=utf-8", "txt": "text/plain; charset=utf-8"}


@bp.get("/jobs/<job_id>/result")
def get_result(job_id: str) -> Response:
    """The result, streamed. Text results (the csv job's file) default to format=csv: the file as
    stored, or with offset/limit its header plus that page of records; format=json gives their summary."""
    svc = service()
    rec = load(job_id)
    fmt = request.args.get("format") or None
    if fmt is not None and fmt not in _FORMATS:
        raise validation_problem([{"loc": ["query", "format"], "msg": "must be json, csv or txt"}],
                                 "format: must be json, csv or txt")
    offset = query_int("offset", 0, 0) or 0
    limit = query_int("limit", None, 0)
    if rec.status is not JobStatus.FINISHED:
        raise Problem(409, "Result not ready",
                      f"the job is {rec.status.value}; a result exists only once it is finished",
                      type_=PROBLEM_BASE + "not-finished",
                      headers={"Retry-After": "1"} if rec.status.live else None)
    reader = svc.reader(rec)
    if reader is None or not reader.exists():
        raise Problem(404, "Not Found", "the result of this job has expired", type_=PROBLEM_BASE + "expired")
    if fmt is None:
        fmt = "csv" if reader.is_text else "json"
    pageable = reader.is_array or (reader.is_text and fmt != "json")
    paged = pageable and (offset > 0 or limit is not None)
    headers = {"X-Total-Count": str(reader.total)}
    if paged:
        headers["X-Offset"] = str(offset)
        if limit is not None:
            headers["X-Limit"] = str(limit)
            if offset + limit < reader.total:
                headers["Link"] = (f'</api/v1/jobs/{job_id}/result?offset={offset + limit}&limit={limit}'
                                   f'&format={fmt}>; rel="next"')
    body: Iterator[bytes]
    if fmt == "json":
        body = reader.iter_page_json(offset, limit) if paged else reader.iter_json()
        if not paged:
            headers["Content-Length"] = str(rec.result_meta.get("json_bytes", 0)) if rec.result_meta else "0"
    else:
        body = reader.iter_lines(offset if paged else 0, limit if paged else None, header=fmt == "csv")
        headers["Content-Disposition"] = f'attachment; filename="{rec.type}-{rec.id}.{fmt}"'
        if reader.is_text and not paged:
            headers["Content-Length"] = str(reader.text_bytes)
    resp = Response(stream_with_context(body), mimetype=_FORMATS[fmt].split(";")[0],
                    content_type=_FORMATS[fmt], headers=headers)
    return resp


@bp.get("/jobs/<job_id>/events")
def job_events(job_id: str) -> Response:
    ext = crunch()
    svc = ext.service
    load(job_id)
    client = client_id()
    if not ext.wait_slots.acquire(blocking=False):
        raise Problem(503, "Too many open streams", "this server holds its maximum of waiting clients; poll instead",
                      headers={"Retry-After": "5"})

    def stream() -> Iterator[bytes]:
        watch = svc.hub.watch(job_id)
        try:
            last = b""
            seq = 0
            yield b"retry: 2000\n\n"
            while True:
                rec = svc.get(job_id)
                if rec is None:
                    yield b"event: deleted\ndata: {\"id\": \"" + job_id.encode() + b"\"}\n\n"
                    return
                data = orjson.dumps(svc.resource(rec, client=client))
                if data != last:
                    seq += 1
                    kind = "progress" if rec.status is JobStatus.STARTED and last else "status"
                    yield f"id: {seq}\nevent: {kind}\n".encode() + b"data: " + data + b"\n\n"
                    last = data
                if rec.status.terminal or STOPPING.is_set():
                    return  # a stopping process ends its streams; the client reconnects elsewhere
                if watch.get(15.0) is None:
                    yield b": keep-alive\n\n"
        finally:
            svc.hub.unwatch(watch)
            ext.wait_slots.release()

    return Response(stream(), mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _action(job_id: str, fn: Any, status: int = 200) -> Response:
    guard(job_id)
    try:
        rec = fn(job_id)
    except KeyError:
        raise not_found(job_id) from None
    return json_response(service().resource(rec, client=client_id()), status)


@bp.post("/jobs/<job_id>/cancel")
def cancel_job(job_id: str) -> Response:
    return _action(job_id, service().cancel)


@bp.post("/jobs/<job_id>/pause")
def pause_job(job_id: str) -> Response:
    return _action(job_id, service().pause)


@bp.post("/jobs/<job_id>/resume")
def resume_job(job_id: str) -> Response:
    return _action(job_id, service().resume, 202)


@bp.post("/jobs/<job_id>/retry")
def retry_job(job_id: str) -> Response:
    return _action(job_id, service().retry, 202)


@bp.delete("/jobs/<job_id>")
def delete_job(job_id: str) -> Response:
    guard(job_id)
    try:
        service().delete(job_id)
    except KeyError:
        raise not_found(job_id) from None
    resp = Response(status=204)
    del resp.headers["Content-Type"]  # no body, so no type (Flask would say text/html)
    return resp


@bp.get("/queues")
def list_queues() -> Response:
    return json_response(service().overview.queues())


@bp.get("/queues/<name>/jobs")
def queue_jobs(name: str) -> Response:
    svc = service()
    if name not in {q["name"] for q in svc.overview.queues()}:
        raise Problem(404, "Not Found", f"no queue named {name!r}")
    recs = [r for r in (auth.visible(svc.get(i)) for i in svc.overview.queue_job_ids(name)) if r is not None]
    return json_response({"queue": name, "jobs": [svc.resource(r, inline=False) for r in recs]})


@bp.get("/workers")
def list_workers() -> Response:
    workers = service().overview.workers()
    if auth.enabled():  # another owner's job id must not show, even as a worker's current job
        svc = service()
        for w in workers:
            if w["current_job"] and auth.visible(svc.get(w["current_job"])) is None:
                w["current_job"] = None
    return json_response(workers)


def init_app(app: Any) -> None:
    app.register_blueprint(bp)

