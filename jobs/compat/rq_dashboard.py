"""rq-dashboard internals the /rq mount (rest.dashboard) sets, written for rq-dashboard 0.9.0 (requirements.txt).

- Module-level settings of rq_dashboard.web: its serializer (config.serializer) and the Worker class its
  views list workers with, so every page reads Crunch's JSON jobs (0.9.0 has no per-app option).
- Its blueprint's before-request hook push_rq_connection, dropped: it opens a Redis client per request
  (and sets it on the app, unsafe across threads), while Crunch hands it the app's one connection.

No fallback: another version may name or use these differently and show broken pages, so the web
refuses to start, naming the version; RQ_DASHBOARD=0 starts it without /rq.
"""

from __future__ import annotations

from typing import Any

from jobs.compat import written_for

VERSION = "0.9.0"
written_for("rq-dashboard", VERSION, "the /rq dashboard's setup (jobs.compat.rq_dashboard; RQ_DASHBOARD=0 "
            "turns /rq off)", fallback=None)


def mount(app: Any, url_prefix: str, conn: Any, serializer: Any, worker_class: type) -> str:
    """Register rq-dashboard's blueprint on `app` at url_prefix, reading through `conn` with `serializer`
    and listing workers with `worker_class`; returns the blueprint's name."""
    import rq_dashboard
    import rq_dashboard.web as rqd_web

    rqd_web.config.serializer = serializer
    rqd_web.Worker = worker_class
    # The app's own connection (rq_dashboard.setup_rq_connection would open another, from the URL).
    app.redis_conn = conn
    app.register_blueprint(rq_dashboard.blueprint, url_prefix=url_prefix)
    name = rq_dashboard.blueprint.name
    app.before_request_funcs[name] = [f for f in app.before_request_funcs.get(name, [])
                                      if f is not rqd_web.push_rq_connection]
    return name
