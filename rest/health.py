"""Liveness, readiness and metrics for orchestrators and Prometheus."""

from __future__ import annotations

import orjson
from flask import Blueprint, Flask, Response
from rq.worker import Worker

from rest.extensions import rq

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    return Response(orjson.dumps({"status": "ok"}), mimetype="application/json")


@bp.get("/readyz")
def readyz() -> Response:
    try:
        rq.connection.ping()
        workers = Worker.count(connection=rq.connection)
    except Exception as exc:  # noqa: BLE001 - any Redis trouble means not ready
        body = {"status": "unavailable", "redis": "unreachable", "detail": str(exc), "workers": None}
        return Response(orjson.dumps(body), status=503, mimetype="application/json")
    return Response(orjson.dumps({"status": "ok", "redis": "ok", "workers": workers}),
                    mimetype="application/json")


@bp.get("/metrics")
def metrics() -> Response:
    from rest.metrics import render

    return render(rq.connection)


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
