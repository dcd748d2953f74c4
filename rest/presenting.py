"""What the job pages say about a job beyond its record: units, the worker running it, and "Run again".

Kept apart from rest/web.py (the routes and forms) so each stays one concern and small.
"""

from __future__ import annotations

import re
import time
from typing import Any

from jobs.store.record import JobRecord
from jobs.store.status import JobStatus
from rest.extensions import service

#: What a job's progress counts (the kernels' ctx.progress calls): said next to "done of total".
PROGRESS_UNITS = {
    "primes": "numbers of the range",
    "sort": "steps (3 per number: read, sort, write)",
    "csv": "bytes (read, then written)",
    "fibonacci": "steps",
}
_ID = re.compile(r"^[0-9a-f]{32}$")


def progress_unit(rec: JobRecord) -> str:
    return PROGRESS_UNITS.get(rec.type, "steps")


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
    """The home page form's fields for submitting this job's request again, and what is missing.

    Primes and Fibonacci come back whole. A sort keeps only how many numbers it had, and a CSV
    job only its file's name and digest, so those forms come back with their options and ask
    for the numbers or the file again (the note says so).
    """
    p = rec.params
    if rec.type == "primes":
        return {"start": str(p.get("start", "")), "end": str(p.get("end", "")),
                "output": str(p.get("output", "list"))}, None
    if rec.type == "fibonacci":
        return {"n": str(p.get("n", ""))}, None
    if rec.type == "sort":
        return ({"descending": "true" if p.get("descending") else ""},
                f"Enter the {int(p.get('count', 0)):,} numbers again, or choose their file: "
                "a job keeps its result, not its input.")
    if rec.type == "csv":
        values = {k: str(p[k]) for k in ("date_column", "from", "till", "sort_by") if p.get(k)}
        values["descending"] = "true" if p.get("descending") else ""
        name = p.get("filename") or "the CSV file"
        return values, f"Choose the file again ({name}): a job keeps its result, not its input."
    return {}, None


def csv_summary(value: dict[str, Any]) -> dict[str, Any]:
    """A CSV job's inline result as sentences and lists instead of raw JSON."""
    samples = [(int(s.get("row", 0)), str(s.get("value", ""))[:200]) for s in value.get("skipped_samples") or []
               if isinstance(s, dict)]
    return {"rows": value.get("rows"), "columns": [str(c) for c in value.get("columns") or []],
            "skipped": value.get("skipped") or 0, "skipped_samples": samples,
            "sorted_as": value.get("sorted_as"),
            "other": [(k, v) for k, v in value.items()
                      if k not in ("rows", "columns", "skipped", "skipped_samples", "sorted_as")]}
