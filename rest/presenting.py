"""What the job pages say about a job beyond its record: units, the worker running it, and "Run again".

Kept apart from rest/web.py (the routes and forms) so each stays one concern and small.
"""

from __future__ import annotations

import re
import time
from typing import Any

from jobs.store.record import JobRecord
from jobs.store.status import JobStatus
from jobs.types.registry import JOB_TYPES
from rest.extensions import service

_ID = re.compile(r"^[0-9a-f]{32}$")


def progress_unit(rec: JobRecord) -> str:
    """What a job's progress counts: its type's spec says (JobSpec.progress_unit)."""
    spec = JOB_TYPES.get(rec.type)
    return spec.progress_unit if spec is not None else "steps"


def normal_id(text: str) -> str | None:
    """A job id as typed or pasted (spaces, dashes, capitals, a whole job URL), or None."""
    raw = text.strip().rstrip("/").rsplit("/", 1)[-1].replace("-", "").lower()
    return raw if _ID.match(raw) else None


def worker_of(rec: JobRecord) -> str | None:
    """The worker running a started job: its record names it, else rq's worker records do."""
    if rec.status is not JobStatus.STARTED:
        return None
    if rec.worker:
        return rec.worker
    for w in service().workers():
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
