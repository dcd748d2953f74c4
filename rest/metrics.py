"""Prometheus metrics for GET /metrics.

Two kinds:
- Counted in the web process: submissions by type and outcome, and HTTP latency by endpoint
  and status. Under gunicorn with PROMETHEUS_MULTIPROC_DIR set (`make run` sets it) these live
  in prometheus_client's per-process files and every scrape sums all processes; without it
  (tests, `flask run`) they are this process's own.
- Read from Redis at scrape time by RedisCollector: queue depths, running jobs, workers by
  state, and jobs ended by type/status and by queue/status. Redis is shared by every web
  process and worker, so these are right whichever process answers the scrape.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

from flask import Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from redis import Redis
from rq.registry import StartedJobRegistry
from rq.worker import Worker

from jobs.service import Outcome
from jobs.store.keys import DURATION_BUCKETS, JOB_DURATION_KEY, QUEUE_STATS_KEY, TYPE_STATS_KEY
from jobs.store.queues import QUEUES
from jobs.types.registry import JOB_TYPES

ENDED_STATUSES = ("finished", "failed", "canceled")

SUBMISSIONS = Counter(
    "crunch_jobs_submitted", "Accepted job submissions by type and outcome: created (a new job), "
    "deduplicated (joined the identical job in flight) or cached (answered from the result cache).",
    ["type", "outcome"])
HTTP_LATENCY = Histogram(
    "crunch_http_request_duration_seconds", "Time to produce the HTTP response (for streams: until the "
    "stream starts), by route template, method and status.", ["endpoint", "method", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0))

_OUTCOME_LABEL = {Outcome.CREATED: "created", Outcome.JOINED: "deduplicated", Outcome.CACHED: "cached"}


def count_submission(job_type: str, outcome: Outcome) -> None:
    SUBMISSIONS.labels(job_type, _OUTCOME_LABEL[outcome]).inc()


class RedisCollector:
    """Gauges and counters that Redis already knows, read when Prometheus scrapes."""

    def __init__(self, conn: Redis) -> None:
        self.conn = conn

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("crunch_redis_up", "1 when Redis answered this scrape, else 0.")
        try:
            families = list(self._from_redis())
        except Exception:  # noqa: BLE001 - a scrape must answer even while Redis is down
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _from_redis(self) -> Iterator[Metric]:
        pipe = self.conn.pipeline(transaction=False)
        for name in QUEUES:
            pipe.llen(f"rq:queue:{name}")
            pipe.hgetall(QUEUE_STATS_KEY.format(name=name))
        for job_type in JOB_TYPES:
            pipe.hgetall(TYPE_STATS_KEY.format(type=job_type))
        for job_type in JOB_TYPES:
            pipe.hgetall(JOB_DURATION_KEY.format(type=job_type))
        replies = pipe.execute()

        depth = GaugeMetricFamily("crunch_queue_depth", "Jobs waiting in each queue.", labels=["queue"])
        running = GaugeMetricFamily("crunch_queue_started", "Jobs running from each queue (RQ's started "
                                    "registry).", labels=["queue"])
        by_queue = CounterMetricFamily("crunch_queue_jobs_ended", "Jobs that ended, by queue and status.",
                                       labels=["queue", "status"])
        for i, name in enumerate(QUEUES):
            depth.add_metric([name], replies[2 * i])
            running.add_metric([name], StartedJobRegistry(name, connection=self.conn).get_job_count(cleanup=False))
            stats = _decode(replies[2 * i + 1])
            for status in ENDED_STATUSES:
                by_queue.add_metric([name, status], stats.get(status, 0))
        by_type = CounterMetricFamily("crunch_jobs_ended", "Jobs that ended, by type and status.",
                                      labels=["type", "status"])
        for j, job_type in enumerate(JOB_TYPES):
            stats = _decode(replies[2 * len(QUEUES) + j])
            for status in ENDED_STATUSES:
                by_type.add_metric([job_type, status], stats.get(status, 0))

        durations = HistogramMetricFamily("crunch_job_duration_seconds", "Run time of jobs that ended in a "
                                          "worker (finished or failed), by type, over every worker host.",
                                          labels=["type"])
        offset = 2 * len(QUEUES) + len(JOB_TYPES)
        for j, job_type in enumerate(JOB_TYPES):
            h = {k.decode(): v for k, v in replies[offset + j].items()}
            cumulative, buckets = 0, []
            for bound in DURATION_BUCKETS:
                cumulative += int(h.get(repr(bound), 0))
                buckets.append((repr(bound), cumulative))
            buckets.append(("+Inf", int(h.get("count", 0))))
            durations.add_metric([job_type], buckets, sum_value=float(h.get("sum", 0)))

        workers = GaugeMetricFamily("crunch_workers", "Registered workers by state.", labels=["state"])
        states = {"busy": 0, "idle": 0, "started": 0, "suspended": 0}
        for w in Worker.all(connection=self.conn):
            state = w.get_state()
            key = getattr(state, "value", str(state))
            states[key] = states.get(key, 0) + 1
        for state, n in states.items():
            workers.add_metric([state], n)
        busy = GaugeMetricFamily("crunch_workers_busy", "Workers running a job now.")
        busy.add_metric([], states.get("busy", 0))
        yield from (depth, running, by_queue, by_type, durations, workers, busy)


def _decode(h: dict[bytes, bytes]) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in h.items()}


class _Local:
    """This process's own metrics (the default registry), when not in multiprocess mode."""

    def collect(self) -> Iterator[Metric]:
        return REGISTRY.collect()


def render(conn: Redis) -> Response:
    """The Prometheus text of this deployment: every web process's counters plus Redis's view."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_Local())
    registry.register(RedisCollector(conn))
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


def _start_timer() -> None:
    g.metrics_t0 = time.perf_counter()


def _observe(resp: Response) -> Response:
    t0: Any = g.pop("metrics_t0", None)
    if t0 is not None:
        rule = request.url_rule
        template = rule.rule if rule is not None else "unmatched"
        job_type = (request.view_args or {}).get("job_type")
        if job_type and "<job_type:job_type>" in template:  # one rule serves every type; label each apart
            template = template.replace("<job_type:job_type>", job_type)
        HTTP_LATENCY.labels(template, request.method, str(resp.status_code)).observe(time.perf_counter() - t0)
    return resp


def init_app(app: Flask) -> None:
    app.before_request(_start_timer)
    app.after_request(_observe)
