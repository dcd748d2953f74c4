"""Rate limits per client, and a bound on live jobs per client; both counted in Redis.

- Submissions (every POST /api/v1/<type>, valid or not) share one budget, RATE_LIMIT_SUBMIT. It
  is checked and spent inside the submission's own lookup script (jobs.store.admission: a sliding
  window counter), so the hot path pays no round trip for it. The control actions (cancel,
  pause, resume, retry, delete) share another, RATE_LIMIT_CONTROL, checked by the same script
  before the action. Counters live in Redis, so each budget is per client across every web
  process and host, and they follow REDIS_URL wherever it points (Sentinel included).
- MAX_QUEUED_PER_CLIENT bounds a client's live jobs (queued, started or paused). The job
  service keeps the count (INCR when it creates a job, DECR when the job ends or is deleted),
  and the same lookup script checks it.

Both answer 429 problem+json with Retry-After. A submission whose body is big (PEEK_BODY_BYTES or
more, or of unknown length) is checked against the rate budget before its body is read, without
spending it (Admission.peek), so a client over budget gets its 429 before it sends 100 MB; with
`Expect: 100-continue` it never sends it (rest.gunicorn_worker holds the 100 back until the app
reads the body). The client is the token owner when the request
is authenticated (API_TOKENS, see rest.auth): every token and browser session of one owner
shares its budget, from any address. Otherwise it is the connection's address
(request.remote_addr): behind a reverse proxy, make the proxy's X-Forwarded-For the remote
address (werkzeug's ProxyFix) or every client shares one budget.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from flask import Flask, current_app, request
from limits import parse_many

from jobs.store.admission import Admission, RateLimit, Rejected
from rest.auth import current_owner
from rest.extensions import service
from rest.problems import PROBLEM_BASE, Problem

CONTROL_ENDPOINTS = ("api.cancel_job", "api.pause_job", "api.resume_job", "api.retry_job", "api.delete_job")
#: app.extensions key: the parsed budgets per scope ("submit", "control"); empty when limits are off.
LIMITS_EXTENSION = "crunch_rate_limits"


def client_id() -> str:
    """Who is asking: the token owner, else the peer address (see the module docstring about proxies)."""
    owner = current_owner()
    if owner is not None:
        return f"owner:{owner}"
    return request.remote_addr or "unknown"


def admission(validated: bool = True, scope: str = "submit") -> Admission:
    """This request's admission checks: the scope's budget, and for a valid submission the live bound."""
    limits = current_app.extensions.get(LIMITS_EXTENSION, {}).get(scope, ())
    bound = (current_app.config.get("MAX_QUEUED_PER_CLIENT", 0) or 0) if validated and scope == "submit" else 0
    return Admission(client_id(), limits, max(0, bound), scope=scope)


def rejected(r: Rejected) -> Problem:
    """The 429 problem for a request over its client's budget."""
    if r.kind == "rate":
        return Problem(429, "Too Many Requests", r.detail, type_=PROBLEM_BASE + "rate-limit",
                       headers={"Retry-After": str(r.retry_after)})
    if r.kind == "quota":
        return Problem(429, "Storage quota reached", r.detail, type_=PROBLEM_BASE + "storage-quota",
                       headers={"Retry-After": str(r.retry_after)})
    return Problem(429, "Too many live jobs", r.detail, type_=PROBLEM_BASE + "too-many-jobs",
                   headers={"Retry-After": str(r.retry_after)})


#: Bodies at least this big (or chunked) are not read from a client already over its submit budget.
PEEK_BODY_BYTES = 64 * 1024


def refuse_over_budget_before_body() -> None:
    """before_request: 429 for a big submission over budget, its body left unread (the worker then closes)."""
    if request.method != "POST" or request.endpoint != "api.submit":
        return
    length = request.content_length
    if length is not None and length < PEEK_BODY_BYTES:
        return
    r = admission(validated=False).peek(service().conn)
    if r is not None:
        raise rejected(r)


def _control_limited(view: Callable[..., Any]) -> Callable[..., Any]:
    """Spend one control action of the client's budget before the action; 429 past it."""

    @wraps(view)
    def limited(*args: Any, **kwargs: Any) -> Any:
        try:
            service().admit(admission(scope="control"))
        except Rejected as r:
            raise rejected(r) from None
        return view(*args, **kwargs)

    return limited


def parse_limits(name: str, value: str) -> tuple[RateLimit, ...]:
    """A rate setting ("600/minute", "10/second;600/hour") as budgets; stops the app naming a bad one."""
    try:
        return tuple(RateLimit(item.amount, item.get_expiry(), str(item)) for item in parse_many(value))
    except ValueError:
        raise SystemExit(f"setting {name} must be a rate like '600/minute' or '10/second;600/hour', "
                         f"got {value!r}") from None


def init_app(app: Flask) -> None:
    """Parse the budgets and wrap the control views (after api.init_app); the submit view checks its own."""
    if not app.config.get("RATELIMIT_ENABLED", True):
        return
    app.extensions[LIMITS_EXTENSION] = {
        "submit": parse_limits("RATE_LIMIT_SUBMIT", app.config["RATE_LIMIT_SUBMIT"]),
        "control": parse_limits("RATE_LIMIT_CONTROL", app.config["RATE_LIMIT_CONTROL"]),
    }
    app.before_request(refuse_over_budget_before_body)
    wrapped: dict[Any, Any] = {}
    for endpoint, view in list(app.view_functions.items()):
        if endpoint in CONTROL_ENDPOINTS:
            if view not in wrapped:
                wrapped[view] = _control_limited(view)
            app.view_functions[endpoint] = wrapped[view]
