"""Access control: API tokens hashed at rest, jobs scoped to their owner, browser login, CSRF on every form.

In-process tests use their own Redis database, where no worker listens: jobs stay queued unless a
test finishes them by hand. The e2e test runs a real gunicorn with API_TOKENS against real workers.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import requests
from redis import Redis

from infra.processes import Web, Workers
from jobs.sharing import submit_owned
from jobs.store.keys import JOBS_INDEX_KEY
from jobs.store.results import RedisResultWriter
from jobs.store.status import JobStatus
from jobs.types.registry import JOB_TYPES
from rest import create_app
from rest.auth import SECRET_KEY_KEY, hash_token, main, parse_tokens
from rest.extensions import service
from rest.settings import Settings
from tests.conftest import TEST_LIMITS, TEST_RATE_LIMITS

PROBLEM = "application/problem+json"
UNKNOWN = "0123456789abcdef0123456789abcdef"
CSRF_INPUT = re.compile(r'name="csrf_token" value="([^"]+)"')
JOB_URL = re.compile(r"^/jobs/([0-9a-f]{32})$")
#: A queue no worker serves.
IDLE_QUEUE = "auth-tests-idle"

#: Fresh owners and tokens per run: rate-limit buckets and live counts in Redis are per owner.
RUN = os.urandom(3).hex()
ALICE, BOB = f"alice-{RUN}", f"bob-{RUN}"
ALICE_TOKEN, BOB_TOKEN = "a-" + os.urandom(24).hex(), "b-" + os.urandom(24).hex()
API_TOKENS = f"{ALICE}:{hash_token(ALICE_TOKEN)}, {BOB}:{hash_token(BOB_TOKEN)}"
AS_ALICE = {"Authorization": f"Bearer {ALICE_TOKEN}"}
AS_BOB = {"Authorization": f"Bearer {BOB_TOKEN}"}


def _db(url: str, db: int) -> str:
    return f"{url.rpartition('/')[0]}/{db}"


@pytest.fixture
def url(redis_url: str) -> str:
    return _db(redis_url, 11)


def make_app(url: str, **settings):
    return create_app(settings=Settings(redis_url=url, limits=TEST_LIMITS, wait_slots=4,
                                        **{**TEST_RATE_LIMITS, "api_tokens": API_TOKENS, **settings}))


@pytest.fixture
def app(url: str):
    return make_app(url)


@pytest.fixture
def client(app):
    return app.test_client()


def nonce() -> int:
    return int.from_bytes(os.urandom(4), "big") % 10**8


def idle_job(app, owner: str, body: dict, job_type: str = "primes") -> str:
    """A job of `owner` that stays queued (nobody serves its queue)."""
    with app.app_context():
        sub = JOB_TYPES[job_type].parse_json(body, app.config["LIMITS"])
        sub.queue = IDLE_QUEUE
        rec, _ = submit_owned(service(), sub, owner)
        return rec.id


def finish_with(app, job_id: str, value: dict) -> None:
    """Store a result as a worker would, and mark the job finished."""
    with app.app_context():
        svc = service()
        writer = RedisResultWriter(svc.conn, job_id)
        writer.write_value(value)
        meta = writer.finish()
        now = repr(time.time())
        rec = svc.get(job_id)
        assert svc.life.transition(job_id, (JobStatus.QUEUED,), JobStatus.FINISHED, {
            "ended_at": now, "started_at": now, "result_meta": orjson.dumps(meta).decode()},
            then=svc.life.terminal_commands(rec, JobStatus.FINISHED))


def csrf_of(client, path: str = "/") -> str:
    """The hidden CSRF field of a page, as a browser would submit it."""
    page = client.get(path).get_data(as_text=True)
    m = CSRF_INPUT.search(page)
    assert m, page[:1000]
    return m.group(1)


def copy_session(src, dst) -> None:
    """Hand a browser's session cookie to another client (another process, or the same after a restart)."""
    cookie = src.get_cookie("crunch_session")
    assert cookie is not None
    dst.set_cookie("crunch_session", cookie.value)


def sign_in(client, token: str, next_: str = "/"):
    return client.post("/login", data={"token": token, "next": next_, "csrf_token": csrf_of(client, "/login")})


# -- the setting and its helper ---------------------------------------------------------------------


def test_api_tokens_hold_digests_never_plaintext(capsys) -> None:
    table = parse_tokens(f" alice:{'A' * 64} ,bob:{'b' * 64},alice:{'c' * 64}")
    assert table == {"a" * 64: "alice", "b" * 64: "bob", "c" * 64: "alice"}, "one owner may hold several tokens"
    assert parse_tokens("") == {} and parse_tokens(" , ") == {}
    for bad in ("alice:secret-token", "secret-token", f"al ice:{'a' * 64}", f":{'a' * 64}",
                f"alice:{'a' * 63}", f"a:{'a' * 64},b:{'a' * 64}"):
        with pytest.raises(SystemExit) as exc:
            parse_tokens(bad)
        assert "API_TOKENS" in str(exc.value) and "secret-token" not in str(exc.value)
    assert main(["hash", "alice", "s3cret"]) == 0
    assert capsys.readouterr().out.strip() == f"alice:{hash_token('s3cret')}"
    assert main(["new", "bob"]) == 0
    out = capsys.readouterr().out.splitlines()
    token, entry = out[0].removeprefix("token: "), out[1].removeprefix("entry: ")
    assert parse_tokens(entry) == {hash_token(token): "bob"}
    assert main(["hash"]) == 2


# -- the API ------------------------------------------------------------------------------------------


def assert_401(resp, error: str | None = None) -> None:
    assert resp.status_code == 401, resp.get_data(as_text=True)
    assert resp.mimetype == PROBLEM
    challenge = resp.headers["WWW-Authenticate"]
    assert challenge.startswith("Bearer ")
    assert (f'error="{error}"' in challenge) if error else "error=" not in challenge
    body = resp.get_json(force=True)
    assert body["status"] == 401 and body["type"].endswith("/unauthorized")


def test_api_needs_a_valid_bearer_token(client, redis_conn: Redis, url: str) -> None:
    conn = Redis.from_url(url)
    before = conn.zcard("crunch:jobs")
    for method, path in (("GET", "/api/v1/jobs"), ("GET", f"/api/v1/jobs/{UNKNOWN}"), ("GET", "/api/v1/queues"),
                         ("GET", "/api/v1/workers"), ("POST", f"/api/v1/jobs/{UNKNOWN}/cancel"),
                         ("DELETE", f"/api/v1/jobs/{UNKNOWN}"), ("GET", "/api/v1/nope")):
        assert_401(client.open(path, method=method))
        assert_401(client.open(path, method=method, headers={"Authorization": "Bearer wrong"}), "invalid_token")
        # The digest itself is not a token.
        assert_401(client.open(path, method=method,
                               headers={"Authorization": f"Bearer {hash_token(ALICE_TOKEN)}"}), "invalid_token")
    assert_401(client.post("/api/v1/fibonacci", json={"n": 10}))
    assert_401(client.post("/api/v1/fibonacci", json={"n": 10}, headers={"Authorization": f"Basic {ALICE_TOKEN}"}),
               "invalid_token")
    assert conn.zcard("crunch:jobs") == before, "nothing was created without a token"
    assert client.get("/api/v1/jobs", headers=AS_ALICE).status_code == 200
    # Open on purpose: probes, scrapers, the contract and static files.
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/docs/init.js", "/static/crunch.css"):
        resp = client.get(path)
        assert resp.status_code == 200, path
        resp.close()


def test_tokens_off_changes_nothing(url: str) -> None:
    client = create_app(settings=Settings(redis_url=url, limits=TEST_LIMITS, wait_slots=2,
                                          **TEST_RATE_LIMITS)).test_client()
    resp = client.post("/api/v1/fibonacci", json={"n": nonce() % 90_000},
                       headers={"Authorization": "Bearer anything"})
    assert resp.status_code == 202
    job = resp.get_json()["id"]
    assert client.get(f"/api/v1/jobs/{job}").status_code == 200
    assert "Set-Cookie" not in resp.headers and "Cookie" not in resp.headers.get("Vary", "")
    assert job in {j["id"] for j in client.get("/api/v1/jobs?limit=500").get_json()["jobs"]}


def test_another_owners_job_is_unknown_on_every_route(app, client) -> None:
    lo = nonce()
    job = idle_job(app, ALICE, {"start": lo, "end": lo + 10**6, "output": "count"})
    assert client.get(f"/api/v1/jobs/{job}", headers=AS_ALICE).status_code == 200

    def unknown_body(job_id: str) -> dict:
        resp = client.get(f"/api/v1/jobs/{UNKNOWN}", headers=AS_BOB)
        assert resp.status_code == 404
        body = resp.get_json(force=True)
        body["detail"] = body["detail"].replace(UNKNOWN, job_id)
        return body

    expected = unknown_body(job)
    routes = [("GET", f"/api/v1/jobs/{job}"), ("GET", f"/api/v1/jobs/{job}?wait=1"),
              ("GET", f"/api/v1/jobs/{job}/result"), ("GET", f"/api/v1/jobs/{job}/result?format=csv"),
              ("GET", f"/api/v1/jobs/{job}/events"),
              *(("POST", f"/api/v1/jobs/{job}/{a}") for a in ("cancel", "pause", "resume", "retry")),
              ("DELETE", f"/api/v1/jobs/{job}")]
    for method, path in routes:
        resp = client.open(path, method=method, headers=AS_BOB)
        assert resp.status_code == 404, (method, path, resp.status_code)
        assert resp.mimetype == PROBLEM and resp.get_json(force=True) == expected, (method, path)
    # Nothing happened to it, and its owner still has it.
    resp = client.get(f"/api/v1/jobs/{job}", headers=AS_ALICE)
    assert resp.status_code == 200 and resp.get_json()["status"] == "queued"
    assert client.post(f"/api/v1/jobs/{job}/pause", headers=AS_ALICE).get_json()["status"] == "paused"
    assert client.delete(f"/api/v1/jobs/{job}", headers=AS_ALICE).status_code == 204


def test_lists_show_only_the_callers_jobs(app, client, url: str) -> None:
    lo = nonce()
    mine = [client.post("/api/v1/primes", json={"start": lo + i, "end": lo + 100}, headers=AS_ALICE).get_json()["id"]
            for i in range(3)]
    theirs = client.post("/api/v1/primes", json={"start": lo, "end": lo + 100}, headers=AS_BOB).get_json()["id"]
    assert theirs not in mine, "an identical request of another owner is another job"
    ownerless = create_app(settings=Settings(redis_url=url, limits=TEST_LIMITS, **TEST_RATE_LIMITS)).test_client() \
        .post("/api/v1/primes", json={"start": lo + 7, "end": lo + 100}).get_json()["id"]
    listed = {j["id"] for j in client.get("/api/v1/jobs?limit=500", headers=AS_ALICE).get_json()["jobs"]}
    assert set(mine) <= listed and theirs not in listed and ownerless not in listed
    listed = {j["id"] for j in client.get("/api/v1/jobs?limit=500&type=primes&status=queued",
                                          headers=AS_BOB).get_json()["jobs"]}
    assert theirs in listed and not listed & set(mine) and ownerless not in listed
    queued = {j["id"] for q in ("fast", "default")
              for j in client.get(f"/api/v1/queues/{q}/jobs", headers=AS_BOB).get_json()["jobs"]}
    assert theirs in queued and not queued & set(mine)
    # A job from before tokens were on belongs to nobody: unknown to every owner.
    assert client.get(f"/api/v1/jobs/{ownerless}", headers=AS_ALICE).status_code == 404


def test_identical_requests_of_another_owner_never_reveal_its_job(app, client) -> None:
    lo = nonce()
    body = {"start": lo, "end": lo + 1000, "output": "count"}
    alice = idle_job(app, ALICE, body)
    # In flight: Bob gets a job of his own, never Alice's id; Alice joins her own.
    resp = client.post("/api/v1/primes", json=body, headers=AS_BOB)
    assert resp.status_code == 202 and alice not in resp.get_data(as_text=True)
    bob_live = resp.get_json()["id"]
    assert bob_live != alice and resp.get_json()["deduplicated"] is False
    resp = client.post("/api/v1/primes", json=body, headers=AS_ALICE)
    assert resp.get_json()["id"] == alice and resp.get_json()["deduplicated"] is True
    assert client.delete(f"/api/v1/jobs/{bob_live}", headers=AS_BOB).status_code == 204

    # Finished: Bob is served the stored result at once, as a finished job of his own.
    finish_with(app, alice, {"count": 4242})
    resp = client.post("/api/v1/primes", json=body, headers=AS_BOB)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    text = resp.get_data(as_text=True)
    copy = resp.get_json()
    assert alice not in text and copy["id"] != alice and copy["cached"] is True
    assert copy["status"] == "finished" and copy["result"] == {"count": 4242}
    assert resp.headers["Location"] == f"/api/v1/jobs/{copy['id']}"
    assert client.get(f"/api/v1/jobs/{copy['id']}", headers=AS_BOB).get_json()["result"] == {"count": 4242}
    assert client.get(f"/api/v1/jobs/{copy['id']}/result", headers=AS_BOB).get_json() == {"count": 4242}
    assert client.get(f"/api/v1/jobs/{copy['id']}", headers=AS_ALICE).status_code == 404
    # Bob's next identical request answers from his own copy.
    again = client.post("/api/v1/primes", json=body, headers=AS_BOB).get_json()
    assert again["id"] == copy["id"] and again["cached"] is True
    # The copy is independent: deleting it leaves Alice's result, and the other way round.
    assert client.delete(f"/api/v1/jobs/{copy['id']}", headers=AS_BOB).status_code == 204
    assert client.get(f"/api/v1/jobs/{alice}/result", headers=AS_ALICE).get_json() == {"count": 4242}
    second = client.post("/api/v1/primes", json=body, headers=AS_BOB).get_json()
    assert second["cached"] is True and second["id"] not in (alice, copy["id"])
    assert client.delete(f"/api/v1/jobs/{alice}", headers=AS_ALICE).status_code == 204
    assert client.get(f"/api/v1/jobs/{second['id']}/result", headers=AS_BOB).get_json() == {"count": 4242}
    # With Alice's job gone, a third owner... is Bob again after deleting: he gets a fresh job, not a dead id.
    assert client.delete(f"/api/v1/jobs/{second['id']}", headers=AS_BOB).status_code == 204
    fresh = client.post("/api/v1/primes", json=body, headers=AS_BOB)
    assert fresh.status_code == 202 and fresh.get_json()["id"] not in (alice, copy["id"], second["id"])
    assert client.get(f"/api/v1/jobs/{fresh.get_json()['id']}", headers=AS_BOB).status_code == 200


def test_rate_limits_and_live_jobs_count_per_owner(url: str) -> None:
    app = make_app(url, rate_limit_submit="3/minute")

    def post(ip: str, headers: dict):
        c = app.test_client()
        c.environ_base["REMOTE_ADDR"] = ip
        return c.post("/api/v1/fibonacci", json={"n": nonce() % 90_000}, headers=headers)

    # One owner from three addresses shares one budget...
    assert [post(f"10.9.9.{i}", AS_ALICE).status_code for i in range(3)] == [202, 202, 202]
    resp = post("10.9.9.200", AS_ALICE)
    assert resp.status_code == 429 and "Retry-After" in resp.headers
    # ...and another owner from the same address has its own.
    assert post("10.9.9.0", AS_BOB).status_code == 202
    conn = Redis.from_url(url)
    assert int(conn.get(f"crunch:client:owner:{ALICE}:live") or 0) >= 3


# -- browser pages -------------------------------------------------------------------------------------


def test_a_get_link_from_another_site_asks_before_submitting(client, redis_conn: Redis, url: str) -> None:
    """GET links carry no CSRF token: with tokens on, a cross-site one shows the filled-in form instead."""
    assert sign_in(client, ALICE_TOKEN).status_code == 303
    n = 1000 + nonce() % 90_000
    conn = Redis.from_url(url)
    before = conn.zcard(JOBS_INDEX_KEY)
    page = client.get(f"/fibonacci?n={n}", headers={"Sec-Fetch-Site": "cross-site"})
    assert page.status_code == 200 and 'id="confirm-notice"' in page.get_data(as_text=True)
    assert f'value="{n}"' in page.get_data(as_text=True), "the form comes filled in"
    assert conn.zcard(JOBS_INDEX_KEY) == before, "nothing was submitted"
    # The user's own navigation (same origin, or typed into the address bar) submits at once.
    for fetch_site in ("same-origin", "none", None):
        headers = {"Sec-Fetch-Site": fetch_site} if fetch_site else {}
        r = client.get(f"/fibonacci?n={n}", headers=headers)
        assert r.status_code == 303 and JOB_URL.match(r.headers["Location"]), fetch_site
    # With tokens off there is nobody's quota to spend: links submit whatever their origin.
    open_client = create_app(settings=Settings(redis_url=url, limits=TEST_LIMITS, wait_slots=4,
                                               **TEST_RATE_LIMITS)).test_client()
    r = open_client.get(f"/fibonacci?n={n + 1}", headers={"Sec-Fetch-Site": "cross-site"})
    assert r.status_code == 303


def test_pages_need_a_login_and_show_only_the_owners_jobs(app, client) -> None:
    lo = nonce()
    alice = idle_job(app, ALICE, {"start": lo, "end": lo + 50})
    bob = idle_job(app, BOB, {"start": lo + 1, "end": lo + 50})
    for path in ("/", "/jobs", f"/jobs/{alice}", f"/fibonacci?n={lo % 1000}"):
        resp = client.get(path)
        assert resp.status_code == 303, path
        assert resp.headers["Location"].startswith("/login?next="), resp.headers["Location"]
    assert client.post("/submit/fibonacci", data={"n": "5"}).status_code == 303
    page = client.get("/login").get_data(as_text=True)
    assert 'name="token" type="password"' in page and 'name="csrf_token"' in page

    resp = sign_in(client, "wrong")
    assert resp.status_code == 403 and "not valid" in resp.get_data(as_text=True)
    resp = sign_in(client, ALICE_TOKEN, f"/jobs/{alice}")
    assert resp.status_code == 303 and resp.headers["Location"] == f"/jobs/{alice}"
    cookie = next(h for h in resp.headers.getlist("Set-Cookie") if h.startswith("crunch_session="))
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
    assert ALICE_TOKEN not in cookie

    page = client.get(f"/jobs/{alice}").get_data(as_text=True)
    assert "Signed in as <strong>" + ALICE in page
    assert client.get(f"/jobs/{bob}").status_code == 404
    assert client.get(f"/jobs/{bob}/fragment").status_code == 404
    csrf = csrf_of(client)
    assert client.post(f"/jobs/{bob}/cancel", data={"csrf_token": csrf}).status_code == 404
    listing = client.get("/jobs?limit=100").get_data(as_text=True) + client.get("/").get_data(as_text=True)
    assert f"/jobs/{alice}" in listing and f"/jobs/{bob}" not in listing
    # A form submitted signed in makes a job of the owner.
    job = JOB_URL.match(client.post("/submit/fibonacci", data={"n": str(lo % 90_000),
                                                               "csrf_token": csrf}).headers["Location"]).group(1)
    assert client.get(f"/api/v1/jobs/{job}", headers=AS_ALICE).status_code == 200
    assert client.get(f"/api/v1/jobs/{job}", headers=AS_BOB).status_code == 404

    # The session also carries the job page's script to the API: reads freely, writes with the CSRF header.
    assert client.get(f"/api/v1/jobs/{alice}").status_code == 200
    assert client.get(f"/api/v1/jobs/{bob}").status_code == 404
    resp = client.post(f"/api/v1/jobs/{alice}/pause")
    assert resp.status_code == 403 and resp.mimetype == PROBLEM
    assert client.post(f"/api/v1/jobs/{alice}/pause", headers={"X-CSRF-Token": csrf}).status_code == 200

    # Open redirects are not followed.
    for target in ("//evil.example/", "https://evil.example/", "/\\evil.example"):
        assert sign_in(client, ALICE_TOKEN, target).headers["Location"] == "/"

    assert client.get("/logout").status_code == 200
    assert client.post("/logout").status_code == 400, "logging out needs the CSRF token too"
    resp = client.post("/logout", data={"csrf_token": csrf_of(client)})
    assert resp.status_code == 303 and resp.headers["Location"] == "/login"
    assert client.get("/").status_code == 303
    assert client.get(f"/api/v1/jobs/{alice}").status_code == 401


def test_session_cookie_is_secure_over_https(client) -> None:
    token = csrf_of(client, "/login")
    resp = client.post("/login", base_url="https://localhost",
                       data={"token": BOB_TOKEN, "next": "/", "csrf_token": token})
    assert resp.status_code == 303
    cookie = next(h for h in resp.headers.getlist("Set-Cookie") if h.startswith("crunch_session="))
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie


def test_a_revoked_token_ends_its_sessions(app, url: str) -> None:
    client = app.test_client()
    assert sign_in(client, ALICE_TOKEN).status_code == 303
    assert client.get("/").status_code == 200
    revoked = make_app(url, api_tokens=f"{BOB}:{hash_token(BOB_TOKEN)}").test_client()
    copy_session(client, revoked)
    assert revoked.get("/").status_code == 303


def test_every_form_post_needs_the_csrf_token_with_tokens_off(redis_url: str) -> None:
    client = create_app(settings=Settings(redis_url=_db(redis_url, 11), limits=TEST_LIMITS,
                                          **TEST_RATE_LIMITS)).test_client()
    for path, data in (("/submit/fibonacci", {"n": "5"}), ("/submit/primes", {"start": "1", "end": "5"}),
                       (f"/jobs/{UNKNOWN}/cancel", {}), ("/logout", {})):
        for bad in (None, "", "forged"):
            form = data if bad is None else {**data, "csrf_token": bad}
            resp = client.post(path, data=form)
            assert resp.status_code == 400, (path, bad, resp.status_code)
            assert resp.mimetype == "text/html" and "security token" in resp.get_data(as_text=True)
    token = csrf_of(client)
    page = client.get("/").get_data(as_text=True)
    assert page.count('name="csrf_token"') == page.count('method="post"') >= 3, "every POST form carries it"
    resp = client.post("/submit/fibonacci", data={"n": str(nonce() % 90_000), "csrf_token": token})
    assert resp.status_code == 303 and JOB_URL.match(resp.headers["Location"])
    job = JOB_URL.match(resp.headers["Location"]).group(1)
    assert csrf_of(client, f"/jobs/{job}") == token, "one token per session, in every form"
    assert client.post(f"/jobs/{job}/cancel", data={"csrf_token": token}).status_code == 303
    # Another browser's token is no good here.
    other = create_app(settings=Settings(redis_url=_db(redis_url, 11), limits=TEST_LIMITS,
                                         **TEST_RATE_LIMITS)).test_client()
    assert other.post("/submit/fibonacci", data={"n": "5", "csrf_token": token}).status_code == 400
    # The JSON API takes no CSRF token: it has no cookies to ride on.
    assert other.post("/api/v1/fibonacci", json={"n": 5}).status_code in (200, 202)
    # /login is a no-op without tokens.
    assert client.get("/login").headers["Location"] == "/"


def test_the_generated_secret_key_is_shared_through_redis(url: str) -> None:
    first, second = make_app(url).test_client(), make_app(url).test_client()
    assert sign_in(first, ALICE_TOKEN).status_code == 303
    key = Redis.from_url(url).get(SECRET_KEY_KEY)
    assert key and len(key) == 64
    copy_session(first, second)
    assert second.get("/").status_code == 200, "another process (or a restart) accepts the session"
    explicit = make_app(url, secret_key="configured-" + RUN).test_client()
    copy_session(first, explicit)
    assert explicit.get("/").status_code == 303, "SECRET_KEY, when set, is the key"


# -- a real gunicorn with API_TOKENS ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def auth_web(redis_url: str, log_dir: Path, workers: Workers) -> Iterator[Web]:
    w = Web(redis_url, log_dir, API_TOKENS=API_TOKENS)
    w.log_path = log_dir / "web-auth.log"
    w.start()
    yield w
    w.stop()


@pytest.mark.e2e
def test_e2e_tokens_owners_and_shared_results(auth_web: Web) -> None:
    base = auth_web.url
    resp = requests.get(base + "/api/v1/jobs", timeout=10)
    assert resp.status_code == 401 and resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert requests.get(base + "/api/v1/jobs", headers={"Authorization": "Bearer nope"}, timeout=10).status_code == 401
    assert requests.get(base + "/readyz", timeout=10).status_code == 200
    body = {"n": 1000 + nonce() % 50_000}
    resp = requests.post(base + "/api/v1/fibonacci", json=body, headers={**AS_ALICE, "Prefer": "wait=20"}, timeout=60)
    assert resp.status_code in (200, 202), resp.text
    alice = resp.json()
    # Bob's request below must find a finished result: wait for it (at load 15 the job can take longer
    # than the submit's 20 s wait, behind other tests' jobs).
    deadline = time.monotonic() + 120
    while alice["status"] != "finished":
        assert alice["status"] in ("queued", "started") and time.monotonic() < deadline, alice
        alice = requests.get(f"{base}/api/v1/jobs/{alice['id']}?wait=10", headers=AS_ALICE, timeout=60).json()
    resp = requests.post(base + "/api/v1/fibonacci", json=body, headers=AS_BOB, timeout=60)
    assert resp.status_code == 200 and resp.json()["cached"] is True
    bob = resp.json()
    assert bob["id"] != alice["id"] and alice["id"] not in resp.text
    assert bob["result"] == alice["result"]
    assert requests.get(f"{base}/api/v1/jobs/{alice['id']}", headers=AS_BOB, timeout=10).status_code == 404
    listed = requests.get(base + "/api/v1/jobs?limit=500", headers=AS_BOB, timeout=10).json()["jobs"]
    assert bob["id"] in {j["id"] for j in listed} and alice["id"] not in {j["id"] for j in listed}

    # Browser login across both gunicorn processes: they share the session key kept in Redis.
    s = requests.Session()
    page = s.get(base + "/", timeout=10)
    assert page.url.startswith(base + "/login")
    token = CSRF_INPUT.search(page.text).group(1)
    resp = s.post(base + "/login", data={"token": ALICE_TOKEN, "next": "/jobs", "csrf_token": token}, timeout=10)
    assert resp.status_code == 200 and resp.url == base + "/jobs", resp.url
    for _ in range(10):
        page = s.get(base + "/jobs", timeout=10)
        assert page.status_code == 200 and page.url == base + "/jobs"
        assert f"/jobs/{alice['id']}" in page.text and f"/jobs/{bob['id']}" not in page.text
