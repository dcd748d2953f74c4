"""Liveness, readiness and metrics for orchestrators and Prometheus."""

from __future__ import annotations

import os

import orjson
from flask import Blueprint, Flask, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess
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
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        from prometheus_client import REGISTRY as registry  # noqa: N811
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
