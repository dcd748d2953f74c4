"""GET /queues: the operations page (contract v1.1, "Browser pages"), and the JSON it refreshes from.

One page shows the whole system: each queue's depth and counters, each worker and the job it
runs (linked to the job's page), jobs finished per minute over the last hour, and queue depth
over time, as charts that update live (static/ops.js polls GET /queues/data every few seconds).

Every number comes from Redis, so every web process draws the same page:
- finished per minute: the per-minute counters that a job's finish step increments
  (FINISHED_MINUTE_KEY, kept two hours); minutes from before those counters existed are
  filled from the samples below, so the chart is never empty after an upgrade;
- queue depth over time: samples in one sorted set (SAMPLES_KEY), at most one every
  SAMPLE_EVERY seconds for all web processes together (a SET NX lock decides who writes),
  taken whenever any operations page asks for data, and trimmed to the last hour. With no
  page open nothing is sampled: the chart then shows a gap, never an invented flat line.

The charts are drawn with uPlot (rest/static/vendor/uplot, MIT, 51 KB minified, no
dependencies, from the npm registry): a canvas time-series library made for exactly this,
about a quarter of Chart.js's size, and actively maintained (1.6.32). It sets styles only
through the CSSOM, so the page keeps the strict CSP (style-src 'self') of every Crunch page.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from flask import Blueprint, Flask, Response, render_template, url_for

from jobs.store.keys import FINISHED_MINUTE_KEY, OPS_SAMPLE_LOCK_KEY, OPS_SAMPLES_KEY
from jobs.store.record import rfc3339
from rest import auth
from rest.extensions import service
from rest.web import _signed_in_and_csrf, summary

bp = Blueprint("ops", __name__)
bp.before_request(_signed_in_and_csrf)  # the same sign-in rule as every page

#: Depth samples, score = unix time, member = JSON {"t", "depth": {queue: n}, "finished": {queue: total}};
#: the lock is held for SAMPLE_EVERY seconds by the web process that writes the current sample.
SAMPLES_KEY, SAMPLE_LOCK_KEY = OPS_SAMPLES_KEY, OPS_SAMPLE_LOCK_KEY
SAMPLE_EVERY = 5
WINDOW = 3600
#: Seconds between the page's refreshes (static/ops.js reads it from the page).
REFRESH_SECONDS = 3


def _sample(now: float, queues: list[dict[str, Any]]) -> None:
    """Record the current depths (one writer per SAMPLE_EVERY seconds across all web processes)."""
    conn = service().conn
    if not conn.set(SAMPLE_LOCK_KEY, b"1", nx=True, px=SAMPLE_EVERY * 1000 - 100):
        return
    member = orjson.dumps({"t": round(now, 3), "depth": {q["name"]: q["queued"] for q in queues},
                           "finished": {q["name"]: q["finished"] for q in queues}})
    pipe = conn.pipeline(transaction=False)
    pipe.zadd(SAMPLES_KEY, {member: now})
    pipe.zremrangebyscore(SAMPLES_KEY, "-inf", now - WINDOW - 60)
    pipe.expire(SAMPLES_KEY, WINDOW + 120)
    pipe.execute()


def _samples(now: float) -> list[dict[str, Any]]:
    raw = service().conn.zrangebyscore(SAMPLES_KEY, now - WINDOW, "+inf")
    return [orjson.loads(m) for m in raw]


def finished_per_minute(now: float, samples: list[dict[str, Any]]) -> list[tuple[int, int | None]]:
    """(minute start, jobs finished in it) for the last 60 minutes, the current one last.

    A minute's counter, when the finish step wrote one, is exact. A minute without one takes the
    growth of the queues' `finished` totals between the last sample before it and its last
    sample (in the first sampled minute, the growth within it: a lower bound); a minute with
    neither is None (unknown, drawn as a gap).
    """
    this_minute = int(now // 60)
    minutes = list(range(this_minute - 59, this_minute + 1))
    counters = service().conn.mget([FINISHED_MINUTE_KEY.format(minute=m) for m in minutes])
    last_total: dict[int, int] = {}
    first_total: dict[int, int] = {}
    for s in samples:  # oldest first: the last sample of each minute wins
        m = int(s["t"] // 60)
        first_total.setdefault(m, sum(s["finished"].values()))
        last_total[m] = sum(s["finished"].values())
    out: list[tuple[int, int | None]] = []
    previous = None
    for m in sorted(last_total):
        if m < minutes[0]:
            previous = last_total[m]
    for m, counter in zip(minutes, counters, strict=True):
        total = last_total.get(m)
        if counter is not None:
            out.append((m * 60, int(counter)))
        elif total is not None and previous is not None:
            out.append((m * 60, max(0, total - previous)))
        elif total is not None and total > first_total[m]:  # the first sampled minute: a lower bound
            out.append((m * 60, total - first_total[m]))
        else:
            out.append((m * 60, None))
        if total is not None:
            previous = total
    return out


def _job_link(job_id: str | None) -> dict[str, Any] | None:
    """A worker's current job as the viewer may see it: another owner's job shows as busy, unnamed."""
    if not job_id:
        return None
    rec = auth.visible(service().get(job_id))
    if rec is None:
        return {"id": None, "summary": "another owner's job" if auth.enabled() else "a job that has ended"}
    return {"id": rec.id, "summary": summary(rec), "url": url_for("web.job", job_id=rec.id),
            "started_at": rfc3339(rec.started_at), "percent": (rec.progress or {}).get("percent")}


def snapshot() -> dict[str, Any]:
    """Everything the page shows, from Redis; the sample for the depth chart is written here too."""
    now = time.time()
    svc = service()
    queues = svc.overview.queues()
    _sample(now, queues)
    samples = _samples(now)
    workers = svc.overview.workers()
    for w in workers:
        w["job"] = _job_link(w.pop("current_job"))
    depth_names = [q["name"] for q in queues]
    return {
        "now": rfc3339(now),
        "queues": queues,
        "workers": sorted(workers, key=lambda w: w["name"]),
        "finished_per_minute": [[t, n] for t, n in finished_per_minute(now, samples)],
        "depth": {"queues": depth_names,
                  "points": [[s["t"], *[s["depth"].get(n, 0) for n in depth_names]] for s in samples]},
        "sample_every": SAMPLE_EVERY,
    }


@bp.get("/queues")
def queues_page() -> Response:
    data = snapshot()
    series = {"finished": data["finished_per_minute"], "depth": data["depth"]}
    html = render_template("queues.html", nav="queues", data=data, refresh=REFRESH_SECONDS,
                           series_json=orjson.dumps(series).decode())
    resp = Response(html, mimetype="text/html")
    resp.headers["Cache-Control"] = "no-cache"
    return resp


@bp.get("/queues/data")
def queues_data() -> Response:
    resp = Response(orjson.dumps(snapshot()), mimetype="application/json")
    resp.headers["Cache-Control"] = "no-store"
    return resp


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
