"""Browser pages: server-rendered HTML that works with JavaScript off and updates live with it on.

Every page validates with the same job specs as the JSON API and calls the same job service;
only the presentation differs (HTML forms re-rendered with messages next to their fields
instead of problem+json). With API_TOKENS set every page needs a signed-in session (/login) and
shows only that owner's jobs; every POST form carries the session's CSRF token (rest.auth).
Templates are Jinja with autoescaping, so nothing a client typed is ever rendered as markup.
Scripts and styles come from rest/static only (no inline code, no external URL), so the pages
run under the strict Content-Security-Policy of rest/security.py.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import orjson
from flask import Blueprint, Flask, Response, abort, current_app, redirect, render_template, request, url_for
from werkzeug.datastructures import MultiDict

from jobs.errors import InvalidParams
from jobs.service import Conflict
from jobs.sharing import submit_owned
from jobs.store import quota
from jobs.store.admission import Rejected
from jobs.store.record import JobRecord, rfc3339
from jobs.store.status import JobStatus
from jobs.types.registry import JOB_TYPES, summary_of
from jobs.types.spec import JobSpec, Limits, Submission
from rest import auth, presenting
from rest.extensions import service
from rest.ratelimit import client_id

bp = Blueprint("web", __name__)

#: Result previews on the job page: the first items of an array, the first characters of a value.
PREVIEW_ITEMS = 200
PREVIEW_CHARS = 2000
PREVIEW_ROWS = 20
#: Value results bigger than this are not decoded for a preview (F(10^7) is about 2 MiB).
PREVIEW_MAX_VALUE_BYTES = 8 << 20
#: Jobs per page of the job list, and on the home page.
LIST_PAGE = 25
RECENT = 10
#: Seconds between self-refreshes of a live job page without JavaScript.
REFRESH_SECONDS = 2
ACTIONS = ("cancel", "pause", "resume", "retry", "delete")
FLASH_COOKIE = "crunch_flash"

# -- validation: each type's spec parses its own form (JobSpec.parse_page) ------------------------


def _limits() -> Limits:
    return current_app.config["LIMITS"]


def _spec(job_type: str) -> JobSpec:
    spec = JOB_TYPES.get(job_type)
    if spec is None:
        abort(404)
    return spec


def parse_page_form(spec: JobSpec) -> Submission:
    """A POSTed form, through the spec's parse_page: without the CSRF token, the values a browser sends
    empty (an empty field means absent, as in a JSON body without it) and empty file inputs."""
    form = MultiDict([(k, v) for k, v in request.form.items(multi=True) if v.strip() and k != auth.CSRF_FIELD])
    files = MultiDict([(k, f) for k, f in request.files.items(multi=True) if f.filename])
    return spec.parse_page(form, files, _limits())


def parse_link(spec: JobSpec) -> Submission:
    """A GET link's query string, through the same parse_page (files=None: a link uploads nothing)."""
    return spec.parse_page(request.args, None, _limits())


def field_errors(exc: InvalidParams) -> dict[str, list[str]]:
    """Errors by form field: loc ["body", "end"] -> "end"; errors without a field go under "_form"."""
    out: dict[str, list[str]] = {}
    for e in exc.errors:
        loc = [str(p) for p in e.get("loc", [])]
        if loc and loc[0] in ("body", "query"):
            loc = loc[1:]
        field = loc[0] if loc else "_form"
        msg = str(e.get("msg", "invalid")).removeprefix("Value error, ")
        if len(loc) > 1:  # an item of a list, e.g. numbers[3]
            msg = f"item {loc[1]}: {msg}"
        out.setdefault(field, []).append(msg)
    return out


# -- helpers for templates --------------------------------------------------------------------


def _thousands(value: Any) -> str:
    try:
        return f"{int(value):,}"
    except (TypeError, ValueError):
        return str(value)


def _duration(ms: float | None) -> str:
    if ms is None:
        return "—"
    if ms < 1000:
        return f"{ms:.1f} ms"
    s = ms / 1000
    if s < 120:
        return f"{s:.2f} s"
    return f"{int(s // 60)} min {s % 60:.0f} s"


def _short(value: Any, limit: int = 120) -> str:
    """Params for display: JSON text, cut at `limit` characters."""
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    return text if len(text) <= limit else text[:limit] + "…"


def summary(rec: JobRecord) -> str:
    """One line that says what a job computes (its spec's summary)."""
    return summary_of(rec.type, rec.params)


def progress_of(rec: JobRecord) -> dict[str, Any]:
    """Percent, done and total for the progress bar; finished jobs are full."""
    p = rec.progress or {}
    percent = float(p.get("percent") or 0.0)
    if rec.status is JobStatus.FINISHED:
        percent = 100.0
    return {"percent": max(0.0, min(percent, 100.0)), "done": p.get("done"), "total": p.get("total"),
            "reported": rec.progress is not None}


def result_preview(rec: JobRecord) -> dict[str, Any] | None:
    """What the job page shows of a finished result: never more than a screenful."""
    if rec.status is not JobStatus.FINISHED:
        return None
    reader = service().reader(rec)
    if reader is None or not reader.exists():
        return {"kind": "expired"}
    if reader.is_array:
        raw = b"".join(reader.iter_page_json(0, PREVIEW_ITEMS))
        items = [t.decode() for t in raw[1:-1].split(b",")] if len(raw) > 2 else []
        return {"kind": "items", "items": items, "total": reader.total}
    if int(reader.meta.get("json_bytes", 0)) > PREVIEW_MAX_VALUE_BYTES:
        return {"kind": "large"}
    # A value result (count, Fibonacci) is its JSON; a text result (the CSV file) answers its summary.
    value = orjson.loads(b"".join(reader.iter_json()))
    if getattr(reader, "is_text", False):
        return {"kind": "table", "csv": presenting.csv_summary(value or {}), "rows": _text_rows(reader)}
    if isinstance(value, dict) and isinstance(value.get("value"), str):
        text = value["value"]
        return {"kind": "digits", "text": text[:PREVIEW_CHARS], "length": len(text),
                "truncated": len(text) > PREVIEW_CHARS,
                "fields": [(k, _short(v)) for k, v in value.items() if k != "value"]}
    if isinstance(value, dict) and set(value) == {"count"}:
        return {"kind": "count", "count": value["count"]}
    if isinstance(value, dict):
        return {"kind": "fields", "fields": [(k, _short(v, PREVIEW_CHARS)) for k, v in value.items()]}
    return {"kind": "text", "text": _short(value, PREVIEW_CHARS)}


def _text_rows(reader: Any) -> list[list[str]]:
    """The first rows of a CSV result (its header first), for a preview table."""
    try:
        head = b"".join(reader.iter_text(0, PREVIEW_ROWS)).decode("utf-8", "replace")
        rows = list(csv.reader(io.StringIO(head, newline="")))
    except Exception:  # noqa: BLE001 - a preview is optional; the download links remain
        return []
    return [[cell[:200] for cell in row[:50]] for row in rows[:PREVIEW_ROWS + 1]]


def download_formats(rec: JobRecord) -> list[str]:
    spec = JOB_TYPES.get(rec.type)
    return list(spec.downloads) if spec is not None else ["json"]


def type_label(job_type: str) -> str:
    spec = JOB_TYPES.get(job_type)
    return (spec.label if spec is not None else "") or job_type.capitalize()


def job_view(rec: JobRecord) -> dict[str, Any]:
    """Everything the job templates need about one job (as shown: presenting.shown)."""
    rec = presenting.shown(rec)
    status = rec.status
    can = {
        "cancel": not status.terminal,
        "pause": rec.pausable and status in (JobStatus.QUEUED, JobStatus.STARTED),
        "resume": status is JobStatus.PAUSED,
        "retry": status in (JobStatus.FAILED, JobStatus.CANCELED),
    }
    return {
        "rec": rec,
        "id": rec.id,
        "status": status.value,
        "terminal": status.terminal,
        "summary": summary(rec),
        "type_label": type_label(rec.type),
        "count_noun": JOB_TYPES[rec.type].count_noun if rec.type in JOB_TYPES else ("", ""),
        "progress": progress_of(rec),
        "created": rfc3339(rec.created_at),
        "started": rfc3339(rec.started_at),
        "ended": rfc3339(rec.ended_at),
        "duration": _duration(rec.duration_ms),
        "params": [(k, _short(v)) for k, v in rec.params.items()],
        "unit": presenting.progress_unit(rec),
        "worker": presenting.worker_of(rec),
        "run": presenting.elapsed_and_eta(rec),
        "preview": result_preview(rec),
        "downloads": download_formats(rec),
        "error": rec.error,
        "waiting": service().overview.waiting_line(rec) if status is JobStatus.QUEUED else None,
        "can": can,
        "actions": presenting.action_set(can, status.terminal),
        "split": presenting.is_split(rec),
        "between_parts_ms": int(presenting.BETWEEN_PARTS_SECONDS * 1000),
    }


def _home(values: dict[str, Mapping[str, str]] | None = None,
          errors: dict[str, dict[str, list[str]]] | None = None, status: int = 200,
          confirm: str | None = None, again: dict[str, Any] | None = None) -> Response:
    recent, _ = service().list(limit=RECENT, owner=auth.current_owner())
    html = render_template("home.html", values=values or {}, errors=errors or {}, limits=_limits(),
                           recent=[job_view_light(r) for r in recent], job_types=list(JOB_TYPES),
                           job_specs=list(JOB_TYPES.values()), confirm=confirm, again=again)
    return Response(html, status=status, mimetype="text/html")


def job_view_light(rec: JobRecord) -> dict[str, Any]:
    """A row of a job table: no result lookups (a split job between parts reads as on its page)."""
    rec = presenting.shown(rec)
    return {"id": rec.id, "type": rec.type, "status": rec.status.value, "summary": summary(rec),
            "created": rfc3339(rec.created_at), "duration": _duration(rec.duration_ms),
            "percent": progress_of(rec)["percent"]}


def _to_job(job_id: str) -> Response:
    return redirect(url_for("web.job", job_id=job_id), 303)  # type: ignore[return-value]


def _submit_or_home(job_type: str, parse: Any, values: Mapping[str, str], link: bool = False) -> Response:
    try:
        sub = parse()
    except InvalidParams as exc:
        return _home({job_type: values}, {job_type: field_errors(exc)}, 422)
    if link and _cross_site_link():
        return _home({job_type: values}, confirm=job_type)
    # The same client and storage quota as the API's submissions (jobs.store.quota).
    sub.extra["client"] = client_id()
    stored = quota.input_bytes(sub)
    if stored:
        sub.extra["input_bytes"] = stored
    try:
        quota.check(service().conn, sub.extra["client"], stored,
                    current_app.config["SETTINGS"].max_stored_bytes_per_client)
    except Rejected as r:
        abort(429, description=r.detail)
    rec, _ = submit_owned(service(), sub, auth.current_owner())
    return _to_job(rec.id)


def _cross_site_link() -> bool:
    """A signed-in user sent here by another site: a GET link must not spend their quota unasked.

    The job-creating GET links cannot carry a CSRF token (the contract makes them plain GETs), so
    with API_TOKENS on, a navigation that the browser marks as coming from another site
    (Sec-Fetch-Site: cross-site) shows the filled-in form to confirm instead of submitting.
    """
    return auth.enabled() and request.headers.get("Sec-Fetch-Site") == "cross-site"


def _form_values() -> dict[str, str]:
    """The submitted text fields (never files), to put back into the form."""
    return {k: v for k, v in request.form.items()}


# -- pages -------------------------------------------------------------------------------------


@bp.get("/")
def home() -> Response:
    if "n" in request.args:  # the Fibonacci server Crunch grew from: http://localhost:5000/?n=42
        return type_link("fibonacci")
    again = request.args.get("again")
    rec = auth.visible(service().get(again)) if again and presenting.normal_id(again) else None
    if rec is not None:  # "Run again": this job's form, filled in with its request
        values, note = presenting.rerun_values(rec)
        return _home({rec.type: values}, again={"type": rec.type, "id": rec.id, "note": note})
    return _home()


@bp.post("/submit/<job_type:job_type>")
def submit_form(job_type: str) -> Response:
    spec = _spec(job_type)
    return _submit_or_home(job_type, lambda: parse_page_form(spec), _form_values())


@bp.get("/<job_type:job_type>")
def type_link(job_type: str) -> Response:
    """GET /fibonacci?n=42 and the like submit too (types with links), then redirect to the job."""
    spec = _spec(job_type)
    if not spec.links:
        abort(404)
    return _submit_or_home(job_type, lambda: parse_link(spec), request.args.to_dict(), link=True)


def _load(job_id: str) -> JobRecord:
    rec = auth.visible(service().get(job_id))
    if rec is None:
        abort(404, description=f"There is no job with id {job_id!r}: it is unknown, or it has expired.")
    return rec


@bp.get("/jobs/<job_id>")
def job(job_id: str) -> Response:
    view = job_view(_load(job_id))
    flash = _read_flash(job_id)
    html = render_template("job.html", job=view, flash=flash, refresh=REFRESH_SECONDS)
    resp = Response(html, mimetype="text/html")
    resp.headers["Cache-Control"] = "no-cache"
    if flash:
        resp.delete_cookie(FLASH_COOKIE, path=_flash_path(job_id))
    return resp


@bp.get("/jobs/<job_id>/fragment")
def job_fragment(job_id: str) -> Response:
    """The live part of the job page alone, for the page's script to swap in."""
    html = render_template("_job_panel.html", job=job_view(_load(job_id)))
    resp = Response(html, mimetype="text/html")
    resp.headers["Cache-Control"] = "no-store"
    return resp


@bp.post("/jobs/<job_id>/<action>")
def job_action(job_id: str, action: str) -> Response:
    """The cancel / pause / resume / retry buttons without JavaScript: act, then 303 back."""
    if action not in ACTIONS:
        abort(404)
    svc = service()
    if auth.enabled():
        _load(job_id)  # another owner's job is as unknown as a missing one
    try:
        rec = getattr(svc, action)(job_id)
    except KeyError:
        abort(404, description=f"There is no job with id {job_id!r}: it is unknown, or it has expired.")
    except Conflict as exc:
        return _with_flash(_to_job(job_id), job_id, "error", f"Could not {action} the job: {exc}.")
    if action == "delete":
        return redirect(url_for("web.jobs_list", deleted=job_id), 303)  # type: ignore[return-value]
    done = {"cancel": "Job canceled." if rec.status is JobStatus.CANCELED else "Cancel requested.",
            "pause": "Job paused." if rec.status is JobStatus.PAUSED else "Pause requested.",
            "resume": "Job resumed: it is queued again and continues from its checkpoint.",
            "retry": "Job queued again."}[action]
    return _with_flash(_to_job(job_id), job_id, "ok", done)


@bp.get("/jobs")
def jobs_list() -> Response:
    search = request.args.get("id")
    if search is not None:  # search by job id: straight to its page when this viewer may see it
        found = presenting.normal_id(search)
        if found and auth.visible(service().get(found)) is not None:
            return _to_job(found)
    status = request.args.get("status") or ""
    type_ = request.args.get("type") or ""
    cursor = request.args.get("cursor") or None
    errors: dict[str, list[str]] = {}
    if status and status not in {s.value for s in JobStatus}:
        errors["status"] = ["unknown status"]
    if type_ and type_ not in JOB_TYPES:
        errors["type"] = ["unknown job type"]
    recs: list[JobRecord] = []
    next_cursor = None
    if not errors:
        try:
            recs, next_cursor = service().list(status or None, type_ or None, LIST_PAGE, cursor,
                                               owner=auth.current_owner())
        except ValueError:
            errors["cursor"] = ["this page link is not valid any more; start again from the newest jobs"]
    if search is not None:  # a miss still lists the jobs below the message
        errors["id"] = [f"No job has the id {search.strip()[:80]!r}: it is unknown, or it has expired."
                        if search.strip() else "Enter a job id."]
    next_url = None
    if next_cursor:
        next_url = url_for("web.jobs_list", status=status or None, type=type_ or None, cursor=next_cursor)
    html = render_template("jobs.html", jobs=[job_view_light(r) for r in recs], status=status, type=type_,
                           statuses=[s.value for s in JobStatus], job_types=list(JOB_TYPES),
                           errors=errors, next_url=next_url, paged=bool(cursor), search=search or "",
                           deleted=presenting.normal_id(request.args.get("deleted") or ""))
    return Response(html, status=422 if errors else 200, mimetype="text/html")


# -- flash messages: a short-lived cookie scoped to one job page, so no server session is needed


def _flash_path(job_id: str) -> str:
    return url_for("web.job", job_id=job_id)


def _with_flash(resp: Response, job_id: str, kind: str, text: str) -> Response:
    resp.set_cookie(FLASH_COOKIE, quote(f"{kind}:{text}"), max_age=60, path=_flash_path(job_id),
                    httponly=True, samesite="Lax")
    return resp


def _read_flash(job_id: str) -> dict[str, str] | None:
    raw = request.cookies.get(FLASH_COOKIE)
    if not raw:
        return None
    kind, _, text = unquote(raw).partition(":")
    return {"kind": "error" if kind == "error" else "ok", "text": text[:500]}


# -- cross-site protection (security headers, CSP included, come from rest/security.py) -----------


@bp.before_request
def _same_origin_posts() -> None:
    """Forms here change state; refuse POSTs that another site's page made a browser send."""
    if request.method != "POST":
        return
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None:
        if site not in ("same-origin", "none"):
            abort(403, description="This form can only be submitted from Crunch's own pages.")
        return
    origin = request.headers.get("Origin")
    if origin and origin != "null" and urlsplit(origin).netloc != request.host:
        abort(403, description="This form can only be submitted from Crunch's own pages.")


@bp.before_request
def _signed_in_and_csrf() -> Response | None:
    """With API_TOKENS on, every page but /login and /logout needs a session; every POST its CSRF token."""
    if auth.enabled() and request.endpoint not in ("web.login", "web.logout") and auth.current_owner() is None:
        target = request.full_path.rstrip("?") if request.method == "GET" else ""
        return redirect(url_for("web.login", next=target or None), 303)  # type: ignore[return-value]
    if request.method == "POST":
        auth.check_csrf()
    return None


def _safe_next(target: str | None) -> str:
    """Only a path on this site (never //host or an absolute URL) may follow a login.

    Control characters and whitespace are refused outright, not stripped: browsers and Werkzeug
    drop tabs and newlines from a Location, so "/\t/evil.example" would leave as "//evil.example"."""
    home = url_for("web.home")
    if not target or any(c <= " " or "\x7f" <= c <= "\x9f" or c == "\\" for c in target):
        return home
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return home
    return target


@bp.route("/login", methods=["GET", "POST"])
def login() -> Response:
    """Trade an API token for a signed session cookie (the pages cannot send a bearer header)."""
    target = _safe_next(request.values.get("next"))
    if not auth.enabled():
        return redirect(target, 303)  # type: ignore[return-value]
    error = None
    status = 200
    if request.method == "POST":
        if auth.sign_in(request.form.get("token", "")) is not None:
            return redirect(target, 303)  # type: ignore[return-value]
        error, status = "This token is not valid.", 403
    html = render_template("login.html", mode="login", next=target, error=error)
    resp = Response(html, status=status, mimetype="text/html")
    resp.headers["Cache-Control"] = "no-store"
    return resp


@bp.route("/logout", methods=["GET", "POST"])
def logout() -> Response:
    """POST (from the header's button) ends the session; GET only offers the button (no CSRF by link)."""
    if request.method == "POST":
        auth.sign_out()
        return redirect(url_for("web.login" if auth.enabled() else "web.home"), 303)  # type: ignore[return-value]
    return Response(render_template("login.html", mode="logout"), mimetype="text/html")


def init_app(app: Flask) -> None:
    app.jinja_env.filters["thousands"] = _thousands
    app.register_blueprint(bp)
