"""Liveness, readiness and metrics for orchestrators and Prometheus."""

from __future__ import annotations

import orjson
from flask import Blueprint, Flask, Response
from redis.exceptions import AuthenticationError

from rest.extensions import crunch
from rest.problems import PROBLEM_BASE

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    return Response(orjson.dumps({"status": "ok"}), mimetype="application/json")


@bp.get("/readyz")
def readyz() -> Response:
    try:
        conn = crunch().rq.connection
        conn.ping()
        workers = len(crunch().service.overview.live_workers())  # a dead worker stops counting within HEARTBEAT_TIMEOUT
    except Exception as exc:  # noqa: BLE001 - any Redis trouble means not ready
        return not_ready(exc)
    return Response(orjson.dumps({"status": "ok", "redis": "ok", "workers": workers}),
                    mimetype="application/json")


def not_ready(exc: Exception) -> Response:
    """503 problem+json saying why Redis is not usable, so a wrong REDIS_URL password is obvious."""
    if isinstance(exc, AuthenticationError):
        redis_state = "unauthorized"
        detail = ("Redis refused the credentials: REDIS_URL needs the server's password, "
                  f"redis://:PASSWORD@host:port/0 (or rediss:// for TLS) ({exc})")
    else:
        redis_state = "unreachable"
        detail = f"the job store (Redis) is unreachable: {type(exc).__name__}: {exc}"
    # Workers register in Redis: with Redis unusable, this process can reach none of them.
    body = {"type": PROBLEM_BASE + "unavailable", "title": "Service unavailable", "status": 503,
            "detail": detail, "redis": redis_state, "workers": 0}
    return Response(orjson.dumps(body), status=503, mimetype="application/problem+json",
                    headers={"Retry-After": "5"})


@bp.get("/metrics")
def metrics() -> Response:
    from rest.metrics import render

    return render(crunch().rq.connection)


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
