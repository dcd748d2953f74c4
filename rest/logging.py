"""Structured JSON logs with a request id.

Every request gets an id: the client's `X-Request-ID` when it is sane (1-128 characters of
letters, digits and `._:-`), else a new one. It is echoed in the response's `X-Request-ID`,
stored on a job that the request creates (the job hash's `request_id` field, which the worker
logs), and included in every log line written while the request runs.

The web process writes one JSON object per line on stderr: one `request` line per request
(unless ACCESS_LOG=0) and whatever the app logs (errors with their traceback). gunicorn's own
access log would repeat each request line in another format, so it is off unless ACCESS_LOG=1.
"""

from __future__ import annotations

import logging
import re
import sys
import time
import uuid
from typing import Any

import orjson
from flask import Flask, Response, g, has_request_context, request
from flask.logging import default_handler

REQUEST_ID_HEADER = "X-Request-ID"
_SANE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
#: LogRecord attributes that are not worth a JSON field of their own.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}

access_log = logging.getLogger("crunch.web")


def request_id() -> str | None:
    """This request's id (None outside a request)."""
    return g.get("request_id") if has_request_context() else None


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id and any `extra` fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = getattr(record, "request_id", None) or request_id()
        if rid:
            line["request_id"] = rid
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in line and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


def _handler() -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    return handler


def configure_logger(logger: logging.Logger) -> None:
    """JSON lines on stderr for this logger, once per process."""
    if not any(isinstance(h.formatter, JsonFormatter) for h in logger.handlers):
        logger.addHandler(_handler())
    logger.setLevel(logging.INFO)
    logger.propagate = False


def _begin() -> None:
    sent = request.headers.get(REQUEST_ID_HEADER, "")
    g.request_id = sent if _SANE_ID.fullmatch(sent) else uuid.uuid4().hex
    g.log_t0 = time.perf_counter()


def _end(resp: Response) -> Response:
    rid = g.get("request_id")
    if rid is None:  # a response made before any before_request ran
        rid = g.request_id = uuid.uuid4().hex
    resp.headers[REQUEST_ID_HEADER] = rid
    return resp


def _log_request(resp: Response, enabled: bool) -> None:
    if not enabled:
        return
    t0 = g.get("log_t0")
    fields: dict[str, Any] = {
        "method": request.method, "path": request.path, "status": resp.status_code,
        "duration_ms": round((time.perf_counter() - t0) * 1000, 3) if t0 is not None else None,
        "client": request.remote_addr,
    }
    job_id = (request.view_args or {}).get("job_id") or g.get("log_job_id")
    if job_id:
        fields["job_id"] = job_id
    access_log.info("request", extra=fields)


def init_app(app: Flask) -> None:
    import os

    configure_logger(access_log)
    app.logger.removeHandler(default_handler)
    configure_logger(app.logger)
    log_requests = os.environ.get("ACCESS_LOG", "1") != "0" and app.config.get("LOG_REQUESTS", True)

    app.before_request(_begin)

    @app.after_request
    def _finish(resp: Response) -> Response:
        resp = _end(resp)
        _log_request(resp, log_requests)
        return resp
