"""Rate limits per client IP (Flask-Limiter on the app's Redis), and a bound on live jobs per client.

- Submissions (every POST /api/v1/<type>) share one budget, RATE_LIMIT_SUBMIT; the control
  actions (cancel, pause, resume, retry, delete) share another, RATE_LIMIT_CONTROL. Counters
  live in Redis, so the budget is per client across every web process and host.
- MAX_QUEUED_PER_CLIENT bounds a client's live jobs (queued, started or paused). The job
  service keeps the count (INCR when it creates a job, DECR when the job ends or is deleted).

Both answer 429 problem+json with Retry-After. The client is the token owner when the request
is authenticated (API_TOKENS, see rest.auth): every token and browser session of one owner
shares its budget, from any address. Otherwise it is the connection's address
(request.remote_addr): behind a reverse proxy, make the proxy's X-Forwarded-For the remote
address (werkzeug's ProxyFix) or every client shares one budget.
"""

from __future__ import annotations

import math
import time
from typing import Any

from flask import Flask, Response, current_app, request
from flask_limiter import Limiter, RateLimitExceeded
from limits import parse_many

from jobs.redis_connection import limits_storage
from jobs.service import CLIENT_LIVE_KEY
from rest.auth import current_owner
from rest.problems import PROBLEM_BASE, Problem, error_response

CONTROL_ENDPOINTS = ("api.cancel_job", "api.pause_job", "api.resume_job", "api.retry_job", "api.delete_job")
SUBMIT_PREFIX = "api.submit_"


def client_id() -> str:
    """Who is asking: the token owner, else the peer address (see the module docstring about proxies)."""
    owner = current_owner()
    if owner is not None:
        return f"owner:{owner}"
    return request.remote_addr or "unknown"


def storage_uri(redis_url: str) -> str:
    """The limits library's spelling of the app's Redis URL."""
    return limits_storage(redis_url)[0]


def check_live_jobs(conn: Any) -> str:
    """429 when this client already has MAX_QUEUED_PER_CLIENT live jobs; returns the client id."""
    client = client_id()
    bound = current_app.config.get("MAX_QUEUED_PER_CLIENT", 0)
    if bound and bound > 0:
        live = int(conn.get(CLIENT_LIVE_KEY.format(client=client)) or 0)
        if live >= bound:
            raise Problem(429, "Too many live jobs",
                          f"this client has {live} live jobs, the most allowed (MAX_QUEUED_PER_CLIENT={bound}); "
                          "wait for some to end, or cancel them", type_=PROBLEM_BASE + "too-many-jobs",
                          headers={"Retry-After": "5"})
    return client


def init_app(app: Flask) -> None:
    """Wrap the submit and control views of this app with its own limiter (after api.init_app)."""
    if not app.config.get("RATELIMIT_ENABLED", True):
        return
    for name in ("RATE_LIMIT_SUBMIT", "RATE_LIMIT_CONTROL"):
        try:
            parse_many(app.config[name])
        except ValueError:
            raise SystemExit(f"setting {name} must be a rate like '600/minute' or '10/second;600/hour', "
                             f"got {app.config[name]!r}") from None
    uri, options = limits_storage(app.config["REDIS_URL"])
    limiter = Limiter(
        key_func=client_id,
        storage_uri=uri,
        storage_options=options,
        strategy="sliding-window-counter",
        key_prefix="crunch:ratelimit",
        headers_enabled=False,  # headers would cost a Redis round trip per request; 429s get Retry-After
    )
    limiter.init_app(app)
    app.extensions["crunch_limiter"] = limiter
    submit_limit = limiter.shared_limit(app.config["RATE_LIMIT_SUBMIT"], scope="submit")
    control_limit = limiter.shared_limit(app.config["RATE_LIMIT_CONTROL"], scope="control")
    wrapped: dict[Any, Any] = {}
    for endpoint, view in list(app.view_functions.items()):
        if endpoint.startswith(SUBMIT_PREFIX) or endpoint in CONTROL_ENDPOINTS:
            if view not in wrapped:  # every submit route shares one view function: wrap it once
                wrapped[view] = (submit_limit if endpoint.startswith(SUBMIT_PREFIX) else control_limit)(view)
            app.view_functions[endpoint] = wrapped[view]

    @app.errorhandler(RateLimitExceeded)
    def _rate_limited(e: RateLimitExceeded) -> Response:
        retry = 1
        current = limiter.current_limit
        if current is not None:
            retry = max(1, math.ceil(current.reset_at - time.time()))
        return error_response(Problem(
            429, "Too Many Requests", f"rate limit of {e.description} per client exceeded; retry in {retry} s",
            type_=PROBLEM_BASE + "rate-limit", headers={"Retry-After": str(retry)}))
