"""What the job pages say about a job beyond its record: units, the worker running it, and "Run again".

Kept apart from rest/web.py (the routes and forms) so each stays one concern and small.
"""

from __future__ import annotations

import re
import time
from dataclasses import replace
from typing import Any

from jobs.store.record import JobRecord
from jobs.store.status import JobStatus
from jobs.types.registry import JOB_TYPES
from rest.extensions import service

_ID = re.compile(r"^[0-9a-f]{32}$")
#: How long after one of its parts ended a split job that reads `queued` is still shown as running.
#: A worker moves from one part to the next in 47 ms (median of the 13 gaps between its parts'
#: ended_at and started_at, 68 ms at most, in one 2e11-wide count on the idle 2-CPU test machine; the
#: API read `queued` for 0.04-0.11 s per gap in tests/test_browser.py's flip test) and 0.1-0.6 s on a
#: busy one (README "Wide jobs"); 5 s covers that many times over, yet a job that a worker's shutdown
#: sent back still reads `queued` on its page within seconds.
BETWEEN_PARTS_SECONDS = 5.0


def progress_unit(rec: JobRecord) -> str:
    """What a job's progress counts: its type's spec says (JobSpec.progress_unit)."""
    spec = JOB_TYPES.get(rec.type)
    return spec.progress_unit if spec is not None else "steps"


def normal_id(text: str) -> str | None:
    """A job id as typed or pasted (spaces, dashes, capitals, a whole job URL), or None."""
    raw = text.strip().rstrip("/").rsplit("/", 1)[-1].replace("-", "").lower()
    return raw if _ID.match(raw) else None


def is_split(rec: JobRecord) -> bool:
    return bool(rec.extra.get("parts"))


def shown(rec: JobRecord, now: float | None = None) -> JobRecord:
    """The job as its page shows it: a split job between two parts reads `started`, not `queued`.

    The API says `queued` whenever none of a split job's parts runs (jobs.store.fanout), which is also
    true for the few milliseconds a worker takes from one part to the next; the page would flicker
    started -> queued -> started at every part. The API keeps saying `queued` (crash recovery and its
    tests tell a job a shutdown sent back by it); only the pages show `started` while some part ended
    less than BETWEEN_PARTS_SECONDS ago and others wait. job.js holds `started` the same way live."""
    if not is_split(rec) or rec.status is not JobStatus.QUEUED or rec.started_at is None:
        return rec
    parts = [p for p in service().fanout.parts(rec) if p is not None]
    if not any(p.status is JobStatus.QUEUED for p in parts):
        return rec
    last_end = max((p.ended_at or 0.0 for p in parts if p.status is JobStatus.FINISHED), default=0.0)
    if last_end < (now or time.time()) - BETWEEN_PARTS_SECONDS:
        return rec
    return replace(rec, status=JobStatus.STARTED)


def action_set(can: dict[str, bool], terminal: bool) -> str:
    """What the actions section offers, as one word list: job.js re-renders the buttons only when it
    changes, so a button under the cursor stays the same element while the status text moves."""
    offered = [a for a in ("pause", "resume", "retry", "cancel") if can.get(a)]
    return " ".join([*offered, *(["run-again"] if terminal else []), "delete"])


def worker_of(rec: JobRecord) -> str | None:
    """The worker running a started job: its record names it, else rq's worker records do."""
    if rec.status is not JobStatus.STARTED:
        return None
    if rec.worker:
        return rec.worker
    for w in service().overview.workers():
        if w.get("current_job") == rec.id:
            return str(w["name"])
    return None


def clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def elapsed_and_eta(rec: JobRecord, now: float | None = None) -> dict[str, Any]:
    """A running job's run time so far (earlier runs included) and the time left at that pace.

    The same estimate as the CLI's progress bar: the remaining percent at the average rate so
    far; None until there is progress to go by. job.js refines it live from the events.
    """
    if rec.status is not JobStatus.STARTED or rec.started_at is None:
        return {"seconds": 0.0, "elapsed": "", "eta": None}
    spent = rec.run_ms / 1000 + max(0.0, (now or time.time()) - rec.started_at)
    percent = float((rec.progress or {}).get("percent") or 0.0)
    eta = spent * (100.0 - percent) / percent if 0.5 <= percent < 100 else None
    return {"seconds": round(spent, 3), "elapsed": clock(spent), "eta": clock(eta) if eta is not None else None}


def rerun_values(rec: JobRecord) -> tuple[dict[str, str], str | None]:
    """The home page form's fields for submitting this job's request again, and what is missing:
    its type's spec knows (JobSpec.rerun; sort and CSV jobs ask for their input again)."""
    spec = JOB_TYPES.get(rec.type)
    return spec.rerun(rec.params) if spec is not None else ({}, None)


def csv_summary(value: dict[str, Any]) -> dict[str, Any]:
    """A CSV job's inline result as sentences and lists instead of raw JSON."""
    samples = [(int(s.get("row", 0)), str(s.get("value", ""))[:200]) for s in value.get("skipped_samples") or []
               if isinstance(s, dict)]
    return {"rows": value.get("rows"), "columns": [str(c) for c in value.get("columns") or []],
            "skipped": value.get("skipped") or 0, "skipped_samples": samples,
            "sorted_as": value.get("sorted_as"),
            "other": [(k, v) for k, v in value.items()
                      if k not in ("rows", "columns", "skipped", "skipped_samples", "sorted_as")]}
