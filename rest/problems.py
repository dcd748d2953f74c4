"""RFC 9457 problem+json for every error, so clients parse one error shape.

Browser pages (the "web" blueprint, and any non-/api path a browser asks for) get the same
errors as small HTML pages instead.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from flask import Flask, Response, render_template, request
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError as RedisResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from werkzeug.exceptions import HTTPException

from jobs.errors import InvalidParams
from jobs.service import Conflict

PROBLEM_BASE = "/problems/"


class Problem(Exception):
    """An HTTP error raised from a view, rendered as problem+json."""

    def __init__(self, status: int, title: str, detail: str, *, type_: str = "",
                 errors: list[dict[str, Any]] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail = status, title, detail
        self.type = type_ or "about:blank"
        self.errors, self.headers = errors, headers or {}


def problem_response(p: Problem) -> Response:
    body: dict[str, Any] = {"type": p.type, "title": p.title, "status": p.status, "detail": p.detail}
    if p.errors is not None:
        body["errors"] = p.errors
    try:
        data = orjson.dumps(body)
    except orjson.JSONEncodeError:  # a lone surrogate echoed from the request (a key in `loc`): escape it
        data = json.dumps(body, default=str).encode()
    resp = Response(data, status=p.status, mimetype="application/problem+json")
    for k, v in p.headers.items():
        resp.headers[k] = v
    return resp


def wants_html() -> bool:
    """Whether this error goes to a person in a browser rather than to an API client."""
    if request.blueprint == "web":
        return True
    if request.blueprint is not None or request.path == "/api" or request.path.startswith("/api/"):
        return False
    return request.accept_mimetypes.best_match(["application/json", "text/html"]) == "text/html"


def html_error(p: Problem) -> Response:
    html = render_template("error.html", title=f"{p.title} ({p.status})", detail=p.detail)
    resp = Response(html, status=p.status, mimetype="text/html")
    for k, v in p.headers.items():
        resp.headers[k] = v
    return resp


def error_response(p: Problem) -> Response:
    """problem+json for API clients, an HTML page for browsers."""
    return html_error(p) if wants_html() else problem_response(p)


def validation_problem(errors: list[dict[str, Any]], detail: str) -> Problem:
    return Problem(422, "Validation failed", detail, type_=PROBLEM_BASE + "validation", errors=errors)


#: Error-reply codes (the reply's first word) of a Redis that is up but will not serve now: loading
#: its data, a replica after a failover, protected mode, not authenticated, a script hogging it,
#: or (OOM) full at maxmemory. All pass with time or an operator's hand, so 503 + Retry-After;
#: the job the request was creating is not left half-written because every job-creating step is
#: one script, and Redis refuses a script's first write (all or nothing) when it is at maxmemory.
STORE_REFUSALS = {"LOADING": 5, "READONLY": 5, "MASTERDOWN": 5, "TRYAGAIN": 1, "CLUSTERDOWN": 5,
                  "BUSY": 5, "DENIED": 30, "NOAUTH": 30, "NOPERM": 30, "WRONGPASS": 30, "OOM": 30}


def store_refused(e: Exception) -> Problem | None:
    """The 503 problem for a Redis error reply that says "not now" (see STORE_REFUSALS), else None."""
    code = getattr(e, "status_code", None) or ""
    text = str(e)
    if code not in STORE_REFUSALS:
        # redis-py keeps the code only for the replies it maps; a script's error carries it in the text
        # ("OOM command not allowed ...", "Error running script ...: -READONLY ...").
        code = next((c for c in STORE_REFUSALS if text.startswith(c + " ") or f"-{c} " in text
                     or f": {c} " in text), "")
    if not code:
        return None
    retry = STORE_REFUSALS[code]
    if code == "OOM":
        return Problem(503, "Job store full", "the job store (Redis) is at its memory limit (maxmemory) and "
                       "refuses new data; nothing was created. Retry once results expire or are deleted",
                       type_=PROBLEM_BASE + "store-full", headers={"Retry-After": str(retry)})
    return Problem(503, "Service unavailable", f"the job store (Redis) refuses commands for now ({code}); "
                   "nothing was created", type_=PROBLEM_BASE + "unavailable", headers={"Retry-After": str(retry)})


def init_app(app: Flask) -> None:
    """Register handlers that turn every exception into problem+json."""

    @app.errorhandler(Problem)
    def _problem(p: Problem) -> Response:
        return problem_response(p)

    @app.errorhandler(InvalidParams)
    def _invalid(e: InvalidParams) -> Response:
        return problem_response(validation_problem(e.errors, e.detail))

    @app.errorhandler(Conflict)
    def _conflict(e: Conflict) -> Response:
        return problem_response(Problem(409, "Conflict with the job's state", str(e),
                                        type_=PROBLEM_BASE + "conflict"))

    @app.errorhandler(RedisConnectionError)
    @app.errorhandler(RedisTimeoutError)
    def _redis_down(e: Exception) -> Response:
        app.logger.error("Redis unavailable: %s", e)
        return error_response(Problem(503, "Service unavailable", "the job store (Redis) is unreachable",
                                      type_=PROBLEM_BASE + "unavailable", headers={"Retry-After": "5"}))

    @app.errorhandler(RedisResponseError)
    def _redis_refused(e: RedisResponseError) -> Response:
        p = store_refused(e)
        if p is None:
            app.logger.exception("unexpected Redis error reply")
            p = Problem(500, "Internal Server Error", "an unexpected error occurred")
        else:
            app.logger.error("the job store refused a command: %s", e)
        return error_response(p)

    @app.errorhandler(HTTPException)
    def _http(e: HTTPException) -> Response:
        detail = e.description or e.name
        if e.code == 413:
            detail = f"the request body is larger than MAX_BODY_BYTES ({app.config['MAX_CONTENT_LENGTH']} bytes)"
        resp = error_response(Problem(e.code or 500, e.name, detail))
        if e.code == 405 and e.get_headers():
            for k, v in e.get_headers():
                if k.lower() == "allow":
                    resp.headers["Allow"] = v
        return resp

    @app.errorhandler(Exception)
    def _unexpected(e: Exception) -> Response:
        app.logger.exception("unhandled error")
        return error_response(Problem(500, "Internal Server Error", "an unexpected error occurred"))
