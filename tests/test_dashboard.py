"""/rq: rq-dashboard 0.9.0 on rq 3.0 with Crunch's JSON jobs, read-only and behind the access control.

One module-scoped Redis database holds real jobs in every state the dashboard shows: a finished
fibonacci job (run by rq's SimpleWorker in this process), a primes job started by a real worker
process (`python worker.py`, one worker) and a second primes job queued behind it.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis import Redis
from rq.registry import FinishedJobRegistry, StartedJobRegistry

from infra.processes import Workers
from jobs.store.queues import JsonQueue
from rest import create_app
from rest.auth import hash_token
from rest.dashboard import CSP_TEMPLATE, parse_owners
from rest.settings import Settings
from tests.conftest import TEST_RATE_LIMITS, run_fast_queue

PROBLEM = "application/problem+json"
RUN = os.urandom(3).hex()
OPS, DEV = f"ops-{RUN}", f"dev-{RUN}"
OPS_TOKEN, DEV_TOKEN = "o-" + os.urandom(24).hex(), "d-" + os.urandom(24).hex()
API_TOKENS = f"{OPS}:{hash_token(OPS_TOKEN)}, {DEV}:{hash_token(DEV_TOKEN)}"
AS_OPS = {"Authorization": f"Bearer {OPS_TOKEN}"}
AS_DEV = {"Authorization": f"Bearer {DEV_TOKEN}"}
CSRF_INPUT = re.compile(r'name="csrf_token" value="([^"]+)"')


def _db(url: str, db: int) -> str:
    return f"{url.rpartition('/')[0]}/{db}"


@pytest.fixture(scope="module")
def url(redis_url: str) -> str:
    return _db(redis_url, 12)


def make_app(url: str, **settings: Any):
    # Whole jobs (fanout_min_seconds=0): the fixture's long count must be one rq job the dashboard can show
    # started, not parts of a split job (those are tests/test_fanout.py's).
    return create_app(settings=Settings(redis_url=url, wait_slots=4, fanout_min_seconds=0,
                                        **{**TEST_RATE_LIMITS, **settings}))



@pytest.fixture(scope="module")
def jobs(url: str, log_dir: Path) -> Iterator[dict[str, str]]:
    """RQ ids of a finished, a started and a queued Crunch job (a real worker holds the started one)."""
    conn = Redis.from_url(url)
    conn.flushdb()
    client = make_app(url).test_client()
    fib = client.post("/api/v1/fibonacci", json={"n": 1000 + int(RUN, 16) % 1000})
    assert fib.status_code == 202, fib.get_data(as_text=True)
    run_fast_queue(url)
    started = client.post("/api/v1/primes", json={"start": 0, "end": 10**12, "output": "count"}).get_json()
    workers = Workers(url, log_dir, count=1, name="dashboard-workers").start()
    try:
        deadline = time.monotonic() + 60
        while f"{started['id']}-1" not in StartedJobRegistry("default", connection=conn).get_job_ids(cleanup=False):
            assert time.monotonic() < deadline, f"the worker never started the job:\n{workers.tail()}"
            time.sleep(0.2)
        queued = client.post("/api/v1/primes", json={"start": 1, "end": 10**12, "output": "count"}).get_json()
        ids = {"finished": f"{fib.get_json()['id']}-1", "started": f"{started['id']}-1",
               "queued": f"{queued['id']}-1"}
        assert ids["finished"] in FinishedJobRegistry("fast", connection=conn).get_job_ids(cleanup=False)
        yield ids
        for crunch_id in (started["id"], queued["id"]):
            client.post(f"/api/v1/jobs/{crunch_id}/cancel")
    finally:
        workers.stop()
        conn.flushdb()


def _rq_state(conn: Redis) -> dict[str, Any]:
    """Everything the dashboard's write actions could change: queues, registries, job hashes."""
    state: dict[str, Any] = {}
    for name in ("fast", "default"):
        q = JsonQueue(name, connection=conn)
        state[name] = (q.get_job_ids(), q.finished_job_registry.get_job_ids(cleanup=False),
                       q.failed_job_registry.get_job_ids(cleanup=False),
                       q.started_job_registry.get_job_ids(cleanup=False))
    state["keys"] = sorted(k for k in conn.keys("rq:job:*") if b":results" not in k)
    return state


# -- it works: pages, JSON, real jobs ----------------------------------------------------------------


def test_pages_render_with_their_csp(url: str, jobs: dict[str, str]) -> None:
    client = make_app(url).test_client()
    pages = ["/rq/", "/rq/0/view/workers", "/rq/0/view/jobs", f"/rq/0/view/job/{jobs['started']}"]
    pages += [f"/rq/0/view/jobs/{q}/{r}/8/asc/1" for q in ("fast", "default")
              for r in ("queued", "started", "finished", "failed", "deferred", "scheduled", "canceled")]
    for path in pages:
        resp = client.get(path)
        assert resp.status_code == 200, path
        html = resp.get_data(as_text=True)
        csp = resp.headers["Content-Security-Policy"]
        assert csp.startswith("default-src 'self'; script-src 'self' 'unsafe-eval' 'sha256-"), (path, csp)
        assert "script-src 'self' 'unsafe-eval' 'sha256-" in csp and "'unsafe-inline'" not in csp.split(";")[1]
        assert "http" not in csp
        assert resp.headers["X-Frame-Options"] == "DENY"
        assert "/static/rq-readonly.css" in html
        assert not re.search(r"<(script|link)[^>]+(src|href)=\"(https?:)?//", html), path  # no CDN
    # Only the dashboard's pages get the looser policy; its JSON keeps the default one.
    assert "unsafe-eval" not in client.get("/rq/0/data/queues.json").headers["Content-Security-Policy"]
    assert CSP_TEMPLATE.split("{")[0] in client.get("/rq/").headers["Content-Security-Policy"]
    for asset in ("js/jquery-3.5.1.min.js", "js/underscore-umd-min.js", "js/sugar-1.2.1.min.js",
                  "js/bootstrap.bundle.min.js", "css/bootstrap.min.css", "css/main.css"):
        resp = client.get(f"/rq/static/{asset}")
        assert resp.status_code == 200 and len(resp.get_data()) > 1000, asset
        resp.close()
    assert client.get("/static/rq-readonly.css").status_code == 200


def test_json_endpoints_show_real_jobs(url: str, jobs: dict[str, str]) -> None:
    client = make_app(url).test_client()
    queues = {q["name"]: q for q in client.get("/rq/0/data/queues.json").get_json()["queues"]}
    assert queues["default"]["count"] == 1 and queues["default"]["started_job_registry_count"] == 1
    assert queues["fast"]["finished_job_registry_count"] >= 1

    def listed(queue: str, registry: str) -> list[str]:
        resp = client.get(f"/rq/0/data/jobs/{queue}/{registry}/8/asc/1.json")
        assert resp.status_code == 200 and resp.headers["Cache-Control"] == "no-store"
        return [j["id"] for j in resp.get_json()["jobs"]]

    assert listed("default", "queued") == [jobs["queued"]]
    assert listed("default", "started") == [jobs["started"]]
    assert jobs["finished"] in listed("fast", "finished")
    assert listed("default", "failed") == []

    for state, rq_id in jobs.items():
        job = client.get(f"/rq/0/data/job/{rq_id}.json").get_json()
        assert job["status"] == state and job["id"] == rq_id, job
        assert job["description"].endswith(rq_id.rsplit("-", 1)[0])
    finished = client.get(f"/rq/0/data/job/{jobs['finished']}.json").get_json()
    assert finished["result"]["status"] == "finished"

    # The shim: a busy worker's current job is a JSON job (upstream unpickles it: a 500).
    resp = client.get("/rq/0/data/workers.json")
    assert resp.status_code == 200, resp.get_data(as_text=True)
    busy = [w for w in resp.get_json()["workers"] if w["state"] == "busy"]
    assert [w["current_job"]["job_id"] for w in busy] == [jobs["started"]]
    assert busy[0]["version"] == "3.0.0"
    # rq-dashboard's per-request reconnect (push_rq_connection) is off: the app's own connection serves it.
    import rq_dashboard.web as rqd_web
    assert rqd_web.push_rq_connection not in client.application.before_request_funcs.get("rq_dashboard", [])
    # Only instance 0: Crunch has one Redis.
    assert client.get("/rq/1/data/queues.json").status_code == 404


def test_navbar_shows_no_redis_credentials(url: str) -> None:
    secret = "s3cret-" + RUN
    with_password = url.replace("redis://", f"redis://:{secret}@") + f"?password={secret}"
    app = make_app(url)
    app.config["REDIS_URL"] = with_password
    from rest.dashboard import _display_url
    assert secret not in _display_url(with_password)
    assert secret not in app.test_client().get("/rq/").get_data(as_text=True)


# -- read-only -----------------------------------------------------------------------------------------


def test_write_actions_are_refused_and_rq_is_untouched(url: str, jobs: dict[str, str]) -> None:
    client = make_app(url).test_client()
    conn = Redis.from_url(url)
    before = _rq_state(conn)
    for method, path in [
        ("POST", f"/rq/job/{jobs['queued']}/delete"), ("POST", f"/rq/job/{jobs['finished']}/requeue"),
        ("POST", "/rq/requeue/default"), ("GET", "/rq/requeue/default"), ("HEAD", "/rq/requeue/fast"),
        ("POST", "/rq/queue/default/queued/empty"), ("POST", "/rq/queue/fast/finished/empty"),
        ("POST", "/rq/queue/default/compact"), ("POST", "/rq/"), ("DELETE", f"/rq/0/view/job/{jobs['started']}"),
        ("PUT", "/rq/0/data/queues.json"), ("POST", "/rq/no/such/page"),
    ]:
        resp = client.open(path, method=method)
        assert resp.status_code == 405, (method, path, resp.status_code)
        assert resp.headers["Allow"] == "GET, HEAD"
        if method != "HEAD":
            assert resp.mimetype == PROBLEM and resp.get_json()["type"] == "/problems/read-only"
    assert _rq_state(conn) == before
    # The buttons are hidden: delete/empty are not rendered at all, the rest hidden by the stylesheet.
    html = client.get("/rq/0/view/jobs/default/queued/8/asc/1").get_data(as_text=True)
    assert 'id="empty-btn"' not in html and 'data-role="delete-job-btn"' not in html
    css = client.get("/static/rq-readonly.css").get_data(as_text=True)
    for button in ("#compact-btn", "#requeue-all-btn", "#requeue-job-btn", '[data-role="requeue-job-btn"]'):
        assert button in css


def test_rq_dashboard_off(url: str) -> None:
    client = make_app(url, rq_dashboard=False).test_client()
    assert client.get("/rq/").status_code == 404
    assert client.get("/rq/0/data/queues.json").status_code == 404


# -- access control ------------------------------------------------------------------------------------


def _login(client: Any, token: str) -> None:
    page = client.get("/login").get_data(as_text=True)
    csrf = CSRF_INPUT.search(page).group(1)  # type: ignore[union-attr]
    resp = client.post("/login", data={"token": token, "csrf_token": csrf, "next": "/rq/"})
    assert resp.status_code == 303 and resp.headers["Location"].endswith("/rq/"), resp.get_data(as_text=True)


def test_tokens_on_only_listed_owners(url: str, jobs: dict[str, str]) -> None:
    client = make_app(url, api_tokens=API_TOKENS, rq_dashboard_owners=f" {OPS} ,").test_client()
    # Anonymous: pages go to /login, data answers 401, a wrong token 401.
    resp = client.get("/rq/0/view/workers")
    assert resp.status_code == 303 and resp.headers["Location"] == "/login?next=/rq/0/view/workers"
    resp = client.get("/rq/0/data/queues.json")
    assert resp.status_code == 401 and resp.mimetype == PROBLEM and resp.headers["WWW-Authenticate"]
    assert client.get("/rq/", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.post("/rq/queue/default/compact").status_code == 401
    # Listed owner, by bearer token.
    assert client.get("/rq/", headers=AS_OPS).status_code == 200
    assert client.get("/rq/0/data/queues.json", headers=AS_OPS).status_code == 200
    # Not listed: as if /rq did not exist.
    for path in ("/rq/", "/rq/0/data/queues.json", f"/rq/0/data/job/{jobs['queued']}.json"):
        resp = client.get(path, headers=AS_DEV)
        assert resp.status_code == 404 and resp.mimetype == PROBLEM, path
    # Listed owner, by browser session.
    _login(client, OPS_TOKEN)
    assert client.get("/rq/").status_code == 200
    assert client.get(f"/rq/0/data/job/{jobs['started']}.json").get_json()["status"] == "started"
    # Still read-only for the operator.
    conn = Redis.from_url(url)
    before = _rq_state(conn)
    assert client.post("/rq/queue/default/queued/empty").status_code == 405
    assert client.get("/rq/requeue/default", headers=AS_OPS).status_code == 405
    assert _rq_state(conn) == before
    other = make_app(url, api_tokens=API_TOKENS, rq_dashboard_owners=OPS).test_client()
    _login(other, DEV_TOKEN)
    assert other.get("/rq/").status_code == 404


def test_tokens_on_and_no_owners_listed_is_404(url: str) -> None:
    client = make_app(url, api_tokens=API_TOKENS).test_client()
    assert client.get("/rq/").status_code == 404
    assert client.get("/rq/", headers=AS_OPS).status_code == 404
    _login(client, OPS_TOKEN)
    assert client.get("/rq/").status_code == 404


def test_owner_names_are_checked() -> None:
    assert parse_owners(" a, b.c ,,") == {"a", "b.c"}
    with pytest.raises(SystemExit, match="RQ_DASHBOARD_OWNERS"):
        parse_owners("ok, not ok")


def test_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RQ_DASHBOARD", "0")
    monkeypatch.setenv("RQ_DASHBOARD_OWNERS", "ops,admin")
    s = Settings.from_env()
    assert s.rq_dashboard is False and s.rq_dashboard_owners == "ops,admin"
    monkeypatch.delenv("RQ_DASHBOARD")
    assert Settings.from_env().rq_dashboard is True


# -- a real browser: the queues table fills in, no CSP violation ---------------------------------------


@pytest.mark.e2e
def test_browser_renders_queues_and_workers(url: str, jobs: dict[str, str]) -> None:
    from werkzeug.serving import make_server

    from tests.test_browser import CHROMIUM, CHROMIUM_ARGS

    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium is not installed at {CHROMIUM}", pytrace=False)
    from playwright.sync_api import sync_playwright

    server = make_server("127.0.0.1", 0, make_app(url), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    errors: list[str] = []
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=30_000)
            page = browser.new_page()
            page.set_default_timeout(20_000)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            # rq-dashboard links /static/favicon.ico, which Crunch does not have (a 404, nothing else).
            page.on("console", lambda msg: errors.append(f"{msg.text} ({msg.location.get('url')})")
                    if msg.type == "error" and not msg.location.get("url", "").endswith("/static/favicon.ico")
                    else None)
            page.goto(base + "/rq/")
            page.wait_for_selector("#queues tr[data-role=queue]")
            assert "default" in page.inner_text("#queues") and "fast" in page.inner_text("#queues")
            page.goto(base + "/rq/0/view/workers")
            page.wait_for_selector(f"a[href$='/view/job/{jobs['started']}']")
            page.goto(base + "/rq/0/view/jobs/default/queued/8/asc/1")
            page.wait_for_selector(f"tr[data-job-id='{jobs['queued']}']")
            assert not page.is_visible("#requeue-all-btn") and not page.is_visible("#compact-btn")
            page.goto(base + f"/rq/0/view/job/{jobs['started']}")
            page.wait_for_function("document.body.innerText.includes('started')")
            browser.close()
    finally:
        server.shutdown()
    assert not errors, errors
