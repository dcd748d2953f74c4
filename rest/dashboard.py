"""/rq: rq-dashboard (0.9.0), read-only and behind Crunch's access control.

Crunch's job records (crunch:job:{id}) are the truth about a job; the dashboard only looks at
the RQ side (queues, registries, workers, the "{crunch_id}-{run}" RQ jobs). Its own actions
(delete, requeue, requeue all, empty, compact) would change RQ behind the job service's back
and leave Crunch records inconsistent, so every one of them, and every method but GET/HEAD,
answers 405 problem+json here, and a stylesheet hides their buttons.

Access: with API_TOKENS unset /rq is open like every other page (RQ_DASHBOARD=0 turns it off).
With API_TOKENS set it shows every owner's RQ jobs, so only owners named in RQ_DASHBOARD_OWNERS
may see it (browser session from /login, or a bearer token); with that list empty, /rq is 404.

Compatibility with rq 3.0 (tested against rq 3.0.0): every page and JSON endpoint works once the
dashboard uses the JSON serializer, except /data/workers.json, which lists workers without a
serializer and so unpickles a busy worker's JSON job (DeserializationError, a 500): see _JsonWorker.

CSP: the dashboard's pages run one inline <script> and compile Underscore templates with
`new Function` (needs 'unsafe-eval'), and use style attributes. Their inline scripts are allowed
by hash, computed from each page as it is sent, never by 'unsafe-inline'; every asset (jQuery,
Bootstrap, Underscore, Sugar) comes from the wheel's own static folder, nothing from a CDN.
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, Response, current_app, redirect, request, url_for
from rq.serializers import JSONSerializer
from rq.worker import Worker

from jobs.store.queues import JsonJob, JsonQueue
from rest import auth
from rest.problems import PROBLEM_BASE, Problem

PREFIX = "/rq"
BLUEPRINT = "rq_dashboard"
#: Owners allowed on /rq when API_TOKENS is set (app.extensions key).
OWNERS_EXT = "crunch_rq_dashboard_owners"
ENABLED_EXT = "crunch_rq_dashboard_enabled"
#: The dashboard's views that change RQ state; refused even on GET (requeue_all takes GET).
WRITE_ENDPOINTS = frozenset(f"{BLUEPRINT}.{name}" for name in (
    "delete_job_view", "requeue_job_view", "requeue_all", "empty_queue", "compact_queue"))
_READ_METHODS = frozenset(("GET", "HEAD"))
#: Inline scripts that run (not the `type="text/template"` blocks Underscore reads as text).
_INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)(?![^>]*text/template)[^>]*>(.*?)</script>", re.S | re.I)
#: The dashboard's own pages only: hashed inline scripts, Underscore's `new Function`, style attributes.
CSP_TEMPLATE = ("default-src 'self'; script-src 'self' 'unsafe-eval'{hashes}; style-src 'self' 'unsafe-inline'; "
                "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
                "form-action 'self'")


class _JsonWorker(Worker):
    """rq's Worker whose all() reads Crunch's JSON jobs: rq-dashboard 0.9.0 calls Worker.all(connection=...)
    with no serializer, and a busy worker's current job (a JsonJob) then fails to unpickle."""

    @classmethod
    def all(cls, connection: Any = None, job_class: Any = None, queue_class: Any = None,
            queue: Any = None, serializer: Any = None) -> list[Any]:
        return super().all(connection=connection, job_class=job_class or JsonJob,
                           queue_class=queue_class or JsonQueue, queue=queue,
                           serializer=serializer or JSONSerializer)


def parse_owners(raw: str) -> frozenset[str]:
    """RQ_DASHBOARD_OWNERS text -> owner names; SystemExit on a name API_TOKENS could never hold."""
    owners = frozenset(o.strip() for o in raw.split(",") if o.strip())
    bad = sorted(o for o in owners if not auth.OWNER_RE.match(o))
    if bad:
        raise SystemExit(f"setting RQ_DASHBOARD_OWNERS must be comma-separated owner names; {bad[0]!r} is not one")
    return owners


def _display_url(url: str) -> str:
    """The Redis URL the navbar shows: no user, password or query (which may carry a password)."""
    parts = urlsplit(url)
    hosts = parts.netloc.rpartition("@")[2]  # host:port, or a Sentinel URL's host:port,host:port
    return f"{parts.scheme}://{hosts}{parts.path}"


def _under_prefix() -> bool:
    return request.path == PREFIX or request.path.startswith(PREFIX + "/")


def _guard() -> Response | None:
    """Access control, then read-only: runs before every /rq request, routed or not."""
    if not _under_prefix():
        return None
    if auth.enabled():
        allowed: frozenset[str] = current_app.extensions.get(OWNERS_EXT, frozenset())
        if not allowed:
            raise Problem(404, "Not Found", "the requested URL was not found on the server")
        owner = auth.current_owner()
        if owner is None:
            if request.headers.get("Authorization"):
                raise auth._unauthorized("the bearer token is not valid", "invalid_token")
            if request.method in _READ_METHODS and "/data/" not in request.path:
                return redirect(url_for("web.login", next=request.full_path.rstrip("?")), 303)  # type: ignore[return-value]
            raise auth._unauthorized("the RQ dashboard needs a signed-in session or `Authorization: Bearer <token>`")
        if owner not in allowed:
            raise Problem(404, "Not Found", "the requested URL was not found on the server")
    if request.method not in _READ_METHODS or request.endpoint in WRITE_ENDPOINTS:
        raise Problem(405, "Method Not Allowed",
                      "the RQ dashboard is read-only here: Crunch's job records are the truth, so change jobs "
                      "through the API or the job pages (cancel, pause, resume, retry)",
                      type_=PROBLEM_BASE + "read-only", headers={"Allow": "GET, HEAD"})
    if (request.view_args or {}).get("instance_number", 0) != 0:
        raise Problem(404, "Not Found", "Crunch has one Redis: instance 0")
    return None


#: What rq's counts mean next to Crunch's: said on every /rq page, with the way back.
BANNER = (
    '<div class="crunch-banner" role="note"><a href="{home}">Crunch</a> · <a href="{ops}">Queues and workers</a>'
    ' · <a href="{jobs}">All jobs</a><p>This is rq\'s own view. Cheap jobs of the <strong>fast</strong> queue run '
    "inline, without rq's registries, so they appear here only while they wait: rq's Finished and Failed counts "
    "leave them out, and <strong>default</strong>'s Finished also holds the canceled runs whose work horse ended "
    "cleanly. Crunch's counts of every job are on its Queues and workers page.</p></div>")


def _banner() -> str:
    return BANNER.format(home=url_for("web.home"), ops=url_for("ops.queues_page"), jobs=url_for("web.jobs_list"))


def _harden_page(resp: Response) -> Response:
    """Give dashboard pages their CSP (inline scripts by hash) and the stylesheet that hides write buttons."""
    if not _under_prefix() or resp.mimetype != "text/html" or resp.direct_passthrough or resp.status_code >= 300:
        return resp
    html = resp.get_data(as_text=True)
    css = url_for("static", filename="rq-readonly.css")
    html = html.replace("</head>", f'<link rel="stylesheet" href="{css}">\n</head>', 1)
    html = re.sub(r"(<body[^>]*>)", lambda m: m.group(1) + _banner(), html, count=1)
    hashes = "".join(
        f" 'sha256-{base64.b64encode(hashlib.sha256(m.group(1).encode()).digest()).decode()}'"
        for m in _INLINE_SCRIPT.finditer(html))
    resp.set_data(html)
    resp.headers["Content-Security-Policy"] = CSP_TEMPLATE.format(hashes=hashes)
    return resp


def rq_link() -> str | None:
    """The /rq URL for the pages' navigation, when this viewer may open it (else None)."""
    if not current_app.extensions.get(ENABLED_EXT):
        return None
    if auth.enabled() and auth.current_owner() not in current_app.extensions.get(OWNERS_EXT, frozenset()):
        return None
    return PREFIX + "/"


def init_app(app: Flask, enabled: bool = True, owners: str = "") -> None:
    """Mount rq-dashboard at /rq on this app's Redis, read-only and guarded (unless RQ_DASHBOARD=0)."""
    app.extensions[OWNERS_EXT] = parse_owners(owners)
    app.extensions[ENABLED_EXT] = enabled
    app.jinja_env.globals["rq_link"] = rq_link
    if not enabled:
        return
    from jobs.compat.rq_dashboard import mount

    app.config.update(
        RQ_DASHBOARD_REDIS_URL=(_display_url(app.config["REDIS_URL"]),),
        RQ_DASHBOARD_DISABLE_DELETE=True,  # its templates then leave out the delete and empty buttons
    )
    # Crunch uses JSON everywhere, on the app's one connection (see jobs.compat.rq_dashboard).
    mount(app, PREFIX, app.extensions["crunch"].service.conn, JSONSerializer, _JsonWorker)
    app.before_request(_guard)
    app.after_request(_harden_page)
