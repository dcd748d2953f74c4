"""Webhooks end to end: a real receiver on 127.0.0.1, real gunicorn, real worker supervisors (whose
delivery loops send the calls), on a Redis of this module's own so the restarts here touch nothing else."""

from __future__ import annotations

import itertools
import json
import random
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from redis import Redis
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from infra.embedded_redis import EmbeddedRedis
from infra.processes import Api, Web, Workers
from jobs.settings import Settings
from jobs.store.keys import JOBS_INDEX_KEY
from jobs.webhooks import new_secret
from rest import create_app
from tests.conftest import TEST_LIMITS, TEST_RATE_LIMITS

pytestmark = pytest.mark.e2e
SECRET = new_secret()
#: Short retry delays for the tests (the defaults are 5 s and 30 s, then exponential).
#: A short PAUSED_TTL too: a job paused for that long is canceled by the reaper (no test here pauses for longer
#: by accident: only test_a_paused_item_that_expires_ends_its_batch pauses).
PAUSED_TTL = 6
ENV = {"WEBHOOK_ALLOW_PRIVATE": "1", "WEBHOOK_SECRET": SECRET, "WEBHOOK_RETRY_DELAYS": "1,2",
       "PAUSED_TTL": str(PAUSED_TTL)}


class Receiver:
    """An HTTP server on 127.0.0.1 that answers each path with the statuses it is told, in turn."""

    def __init__(self) -> None:
        self.calls: list[dict] = []
        self.plans: dict[str, list[int]] = {}
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.lock:
                    plan = receiver.plans.get(self.path) or []
                    status = plan.pop(0) if plan else 200
                    receiver.calls.append({"path": self.path, "headers": dict(self.headers.items()), "body": body,
                                           "status": status, "at": time.time()})
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_port}{path}"

    def path(self, plan: list[int] | None = None) -> str:
        p = f"/hook/{random.randrange(10**9)}"
        self.plans[p] = list(plan or [])
        return p

    def calls_to(self, path: str) -> list[dict]:
        with self.lock:
            return [c for c in self.calls if c["path"] == path]

    def wait_for(self, path: str, accepted: int = 1, timeout: float = 60) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            calls = self.calls_to(path)
            if sum(1 for c in calls if 200 <= c["status"] < 300) >= accepted:
                return calls
            assert time.monotonic() < deadline, f"{path}: {len(calls)} calls, none accepted"
            time.sleep(0.05)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    logs = tmp_path_factory.mktemp("webhook-logs")
    srv = EmbeddedRedis(tmp_path_factory.mktemp("webhook-redis")).start()
    workers = Workers(srv.url, logs, count=1, **ENV).start()
    web = Web(srv.url, logs, **ENV).start()
    try:
        yield {"redis": srv, "workers": workers, "web": web, "logs": logs}
    finally:
        web.stop()
        workers.stop()
        srv.stop()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()


@pytest.fixture
def hapi(stack: dict) -> Api:
    return Api(stack["web"].url)


def test_a_finished_job_is_posted_signed_and_verifies_with_the_reference(hapi: Api, receiver: Receiver) -> None:
    path = receiver.path()
    n = 1000 + random.randrange(10**5)
    r = hapi.post("/api/v1/fibonacci", json={"n": n, "webhook": receiver.url(path)})
    assert r.status_code in (200, 202), r.text
    job = r.json()
    assert job["params"] == {"n": n}  # the webhook is not a parameter (nor part of the identity)
    call = receiver.wait_for(path)[0]
    payload = Webhook(SECRET).verify(call["body"], call["headers"])
    assert payload["type"] == "job.finished"
    assert payload["data"]["id"] == job["id"] and payload["data"]["status"] == "finished"
    assert payload["data"]["result"]["n"] == n
    assert payload["timestamp"].endswith("Z")
    h = {k.lower(): v for k, v in call["headers"].items()}
    assert h["webhook-id"].startswith("msg_") and h["webhook-signature"].startswith("v1,")
    assert h["content-type"] == "application/json"
    with pytest.raises(WebhookVerificationError):  # a tampered body does not verify
        Webhook(SECRET).verify(call["body"].replace(b"finished", b"failed"), call["headers"])
    deadline = time.monotonic() + 10
    while (hooks := hapi.get(f"/api/v1/jobs/{job['id']}").json()["webhooks"])[0]["status"] != "delivered":
        assert time.monotonic() < deadline, hooks
        time.sleep(0.1)
    assert hooks == [{"url": receiver.url(path), "status": "delivered", "attempts": 1, "last_error": None}]


def test_a_receiver_that_fails_twice_gets_retries_and_the_attempts_show(hapi: Api, receiver: Receiver) -> None:
    path = receiver.path([500, 503])
    r = hapi.post("/api/v1/fibonacci", json={"n": 2000 + random.randrange(10**5), "webhook": receiver.url(path)},
                  headers={"Prefer": "wait=10"})
    job = r.json()
    seen: list[dict] = []
    deadline = time.monotonic() + 60
    while True:  # watch the attempts climb on the job resource
        hooks = hapi.get(f"/api/v1/jobs/{job['id']}").json()["webhooks"]
        assert len(hooks) == 1
        if not seen or hooks[0] != seen[-1]:
            seen.append(hooks[0])
        if hooks[0]["status"] == "delivered":
            break
        assert time.monotonic() < deadline, seen
        time.sleep(0.05)
    assert hooks[0] == {"url": receiver.url(path), "status": "delivered", "attempts": 3, "last_error": None}
    assert any(h["attempts"] == 1 and h["last_error"] == "HTTP 500" and h["status"] == "pending" for h in seen), seen
    assert any(h["attempts"] == 2 and h["last_error"] == "HTTP 503" for h in seen), seen
    calls = receiver.calls_to(path)
    assert [c["status"] for c in calls] == [500, 503, 200]
    assert len({c["headers"]["webhook-id"] for c in calls}) == 1  # one message, three attempts
    gaps = [b["at"] - a["at"] for a, b in itertools.pairwise(calls)]
    assert 0.7 <= gaps[0] <= 5 and 1.5 <= gaps[1] <= 8, gaps  # the shortened schedule: ~1 s, then ~2 s
    for c in calls:
        Webhook(SECRET).verify(c["body"], c["headers"])


def test_restarting_web_and_worker_mid_retries_still_delivers_exactly_once(stack: dict, hapi: Api,
                                                                          receiver: Receiver) -> None:
    path = receiver.path([500, 500, 500])
    r = hapi.post("/api/v1/fibonacci", json={"n": 3000 + random.randrange(10**5), "webhook": receiver.url(path)},
                  headers={"Prefer": "wait=10"})
    job_id = r.json()["id"]
    deadline = time.monotonic() + 30
    while not receiver.calls_to(path):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # The first attempt failed; now the web and the worker supervisor (with its delivery loop) restart.
    web, workers = stack["web"], stack["workers"]
    web.stop()
    workers.kill()  # a crash: nothing settles on the way out
    workers.start()
    web.start()
    calls = receiver.wait_for(path, timeout=90)
    time.sleep(6)  # longer than the retry delays: a duplicate would have come by now
    calls = receiver.calls_to(path)
    assert [c["status"] for c in calls].count(200) == 1, [c["status"] for c in calls]
    assert len({c["headers"]["webhook-id"] for c in calls}) == 1
    hooks = Api(web.url).get(f"/api/v1/jobs/{job_id}").json()["webhooks"]
    assert hooks[0]["status"] == "delivered" and hooks[0]["attempts"] == len(calls), (hooks, len(calls))


def test_a_cached_request_gets_its_own_call(hapi: Api, receiver: Receiver) -> None:
    n = 4000 + random.randrange(10**5)
    first, second = receiver.path(), receiver.path()
    r1 = hapi.post("/api/v1/fibonacci", json={"n": n, "webhook": receiver.url(first)}, headers={"Prefer": "wait=10"})
    assert r1.status_code == 200, r1.text
    r2 = hapi.post("/api/v1/fibonacci", json={"n": n, "webhook": receiver.url(second)})
    assert r2.status_code == 200 and r2.json()["cached"], r2.text
    c1, c2 = receiver.wait_for(first)[0], receiver.wait_for(second)[0]
    assert c1["headers"]["webhook-id"] != c2["headers"]["webhook-id"]
    assert json.loads(c2["body"])["data"]["id"] == r1.json()["id"]


def test_a_batch_calls_once_when_it_finishes(hapi: Api, receiver: Receiver) -> None:
    path = receiver.path()
    salt = random.randrange(10**6)
    items = [{"type": "fibonacci", "params": {"n": 5000 + salt % 1000 + i}} for i in range(25)]
    r = hapi.post("/api/v1/batches", json={"jobs": items, "webhook": receiver.url(path)})
    assert r.status_code in (200, 202), r.text
    call = receiver.wait_for(path)[0]
    payload = Webhook(SECRET).verify(call["body"], call["headers"])
    assert payload["type"] == "batch.finished"
    assert payload["data"]["id"] == r.json()["id"] and payload["data"]["counts"]["finished"] == 25
    time.sleep(1.5)
    assert len(receiver.calls_to(path)) == 1


def delivered(hapi: Api, job_id: str, timeout: float = 10) -> list[dict]:
    """The job's webhooks (as this client registered them) once every one of them is delivered."""
    deadline = time.monotonic() + timeout
    while True:
        hooks = hapi.get(f"/api/v1/jobs/{job_id}").json()["webhooks"]
        if hooks and all(h["status"] == "delivered" for h in hooks):
            return hooks
        assert time.monotonic() < deadline, hooks
        time.sleep(0.1)


def test_each_batch_item_with_a_webhook_gets_its_own_signed_call(hapi: Api, receiver: Receiver) -> None:
    salt = random.randrange(10**6)
    n1, n2, n3 = 20_000 + salt % 5000, 30_000 + salt % 5000, 40_000 + salt % 5000
    r = hapi.post("/api/v1/fibonacci", json={"n": n3}, headers={"Prefer": "wait=20"})
    assert r.status_code == 200, r.text  # finished before the batch: its item is answered from cache
    cached_id = r.json()["id"]
    first, again, cached, whole = receiver.path(), receiver.path(), receiver.path(), receiver.path()
    items = [{"type": "fibonacci", "params": {"n": n1}, "webhook": receiver.url(first)},
             {"type": "fibonacci", "params": {"n": n1}, "webhook": receiver.url(again)},  # joins the item above
             {"type": "fibonacci", "params": {"n": n2}},
             {"type": "fibonacci", "params": {"n": n3}, "webhook": receiver.url(cached)}]
    r = hapi.post("/api/v1/batches", json={"jobs": items, "webhook": receiver.url(whole)})
    assert r.status_code == 202, r.text
    assert r.json()["submitted"] == {"created": 2, "deduplicated": 1, "cached": 1}
    batch_id = r.json()["id"]
    jobs = hapi.get(f"/api/v1/batches/{batch_id}/jobs").json()["jobs"]
    assert jobs[0]["id"] == jobs[1]["id"] and jobs[3]["id"] == cached_id
    for path, item in ((first, 0), (again, 1), (cached, 3)):
        calls = receiver.wait_for(path)
        payload = Webhook(SECRET).verify(calls[0]["body"], calls[0]["headers"])
        assert payload["type"] == "job.finished", payload
        assert payload["data"]["id"] == jobs[item]["id"], payload
        assert payload["data"]["result"]["n"] == items[item]["params"]["n"]
    payload = Webhook(SECRET).verify(receiver.wait_for(whole)[0]["body"], receiver.wait_for(whole)[0]["headers"])
    assert payload["type"] == "batch.finished" and payload["data"]["counts"]["finished"] == 4
    ids = {receiver.calls_to(p)[0]["headers"]["webhook-id"] for p in (first, again, cached, whole)}
    assert len(ids) == 4, "one job, two items: two deliveries of their own"
    # Each job lists the deliveries its items registered (this client's), with their state.
    assert delivered(hapi, jobs[0]["id"]) == [
        {"url": receiver.url(p), "status": "delivered", "attempts": 1, "last_error": None} for p in (first, again)]
    assert delivered(hapi, jobs[3]["id"]) == [
        {"url": receiver.url(cached), "status": "delivered", "attempts": 1, "last_error": None}]
    assert hapi.get(f"/api/v1/jobs/{jobs[2]['id']}").json()["webhooks"] == []
    time.sleep(1.5)
    assert [len(receiver.calls_to(p)) for p in (first, again, cached, whole)] == [1, 1, 1, 1]


def test_a_paused_item_that_expires_ends_its_batch(hapi: Api, receiver: Receiver) -> None:
    """PAUSED_TTL runs out for a paused item: the reaper cancels it (as it does a single paused job), so the
    batch counts it canceled, reaches finished and calls its batch.finished webhook; the item's own webhook
    says job.canceled, and the job says why."""
    base = 3 * 10**11 + random.randrange(10**9)
    wide = {"start": base, "end": base + 5 * 10**10, "output": "count"}  # many seconds: paused while it runs
    queued = {"start": base + 10**11, "end": base + 10**11 + 10**8, "output": "count"}  # waits behind it
    whole, item_hook, single_hook = receiver.path(), receiver.path(), receiver.path()
    items = [{"type": "primes", "params": wide, "webhook": receiver.url(item_hook)},
             {"type": "primes", "params": queued},
             {"type": "fibonacci", "params": {"n": 50_000 + random.randrange(10**4)}}]
    r = hapi.post("/api/v1/batches", json={"jobs": items, "webhook": receiver.url(whole)})
    assert r.status_code == 202, r.text
    batch_id = r.json()["id"]
    ids = [j["id"] for j in hapi.get(f"/api/v1/batches/{batch_id}/jobs").json()["jobs"]]
    single = hapi.post("/api/v1/primes", json={**wide, "start": base + 2 * 10**11, "end": base + 2 * 10**11 + 10**10,
                                               "webhook": receiver.url(single_hook)}).json()["id"]
    for job_id in (ids[1], ids[0], single):
        assert hapi.post(f"/api/v1/jobs/{job_id}/pause").status_code == 200
    paused_at = time.time()
    for job_id in (ids[0], ids[1], single):
        deadline = time.monotonic() + 20
        while (job := hapi.get(f"/api/v1/jobs/{job_id}").json())["status"] != "paused":
            assert job["status"] in ("queued", "started") and time.monotonic() < deadline, job
            time.sleep(0.1)
    assert hapi.get(f"/api/v1/batches/{batch_id}?wait=2").json()["status"] == "running"
    call = receiver.wait_for(whole, timeout=PAUSED_TTL + 60)[0]
    payload = Webhook(SECRET).verify(call["body"], call["headers"])
    assert payload["type"] == "batch.finished", payload
    counts = payload["data"]["counts"]
    assert counts == {"queued": 0, "started": 0, "paused": 0, "finished": 1, "failed": 0, "canceled": 2}, counts
    assert call["at"] - paused_at >= PAUSED_TTL - 1, "not before PAUSED_TTL"
    batch = hapi.get(f"/api/v1/batches/{batch_id}").json()
    assert batch["status"] == "finished" and batch["counts"] == counts
    for path, job_id in ((item_hook, ids[0]), (single_hook, single)):
        payload = Webhook(SECRET).verify(receiver.wait_for(path)[0]["body"], receiver.wait_for(path)[0]["headers"])
        assert payload["type"] == "job.canceled" and payload["data"]["id"] == job_id, payload
        job = hapi.get(f"/api/v1/jobs/{job_id}").json()
        assert job["status"] == "canceled" and job["error"]["type"] == "PausedTooLong", job
        assert "PAUSED_TTL" in job["error"]["message"]
    assert hapi.post(f"/api/v1/jobs/{single}/retry").status_code == 202, "an expired job can be retried"
    assert hapi.post(f"/api/v1/jobs/{single}/cancel").status_code == 200


def test_csv_takes_the_webhook_as_a_form_field(hapi: Api, receiver: Receiver) -> None:
    path = receiver.path()
    csv = f"date,amount\n2024-01-0{random.randrange(1, 9)},{random.randrange(10**6)}\n".encode()
    r = hapi.post("/api/v1/csv", files={"file": ("a.csv", csv)}, data={"webhook": receiver.url(path)})
    assert r.status_code in (200, 202), r.text
    payload = Webhook(SECRET).verify(receiver.wait_for(path)[0]["body"], receiver.wait_for(path)[0]["headers"])
    assert payload["type"] == "job.finished" and payload["data"]["type"] == "csv"


def test_a_canceled_job_says_job_canceled(hapi: Api, receiver: Receiver) -> None:
    path = receiver.path()
    lo = 10**11 + random.randrange(10**9)
    r = hapi.post("/api/v1/primes", json={"start": lo, "end": lo + 5 * 10**10, "output": "count",
                                          "webhook": receiver.url(path)})
    job_id = r.json()["id"]
    assert hapi.post(f"/api/v1/jobs/{job_id}/cancel").status_code == 200
    payload = json.loads(receiver.wait_for(path)[0]["body"])
    assert payload["type"] == "job.canceled" and payload["data"]["status"] == "canceled"


# -- refusals and visibility, in-process (the web's checks need no worker) -----------------------------


@pytest.fixture
def url(redis_url: str) -> str:
    url = f"{redis_url.rpartition('/')[0]}/12"
    Redis.from_url(url).flushdb()
    return url


def make_app(url: str, **settings):
    return create_app(settings=Settings(redis_url=url, limits=TEST_LIMITS, wait_slots=2,
                                        **{**TEST_RATE_LIMITS, **settings}))


@pytest.mark.parametrize("target", ["http://127.0.0.1:9/x", "http://localhost/", "http://10.1.2.3/",
                                    "http://169.254.169.254/latest/meta-data", "http://[::1]/",
                                    "http://192.168.0.1/", "http://0.0.0.0/"])
def test_a_private_address_is_refused(url: str, target: str) -> None:
    c = make_app(url).test_client()
    r = c.post("/api/v1/fibonacci", json={"n": 5, "webhook": target})
    assert r.status_code == 422, r.text
    assert r.get_json()["errors"][0]["loc"] == ["body", "webhook"]
    r = c.post("/api/v1/batches", json={"jobs": [{"type": "fibonacci", "params": {"n": 5}}], "webhook": target})
    assert r.status_code == 422 and r.get_json()["errors"][0]["loc"] == ["webhook"], r.text
    items = [{"type": "fibonacci", "params": {"n": 5}}, {"type": "fibonacci", "params": {"n": 6}, "webhook": target}]
    r = c.post("/api/v1/batches", json={"jobs": items})
    assert r.status_code == 422 and [e["loc"] for e in r.get_json()["errors"]] == [["jobs", 1, "webhook"]], r.text
    assert Redis.from_url(url).zcard(JOBS_INDEX_KEY) == 0


@pytest.mark.parametrize("target", ["ftp://example.com/", "not a url", "http:///nohost", 5, "http://x/#frag"])
def test_a_malformed_webhook_is_refused(url: str, target: object) -> None:
    c = make_app(url, webhook_allow_private=True).test_client()
    r = c.post("/api/v1/fibonacci", json={"n": 5, "webhook": target})
    assert r.status_code == 422 and r.get_json()["errors"][0]["loc"] == ["body", "webhook"], r.text


def test_the_job_lists_only_the_asking_clients_webhooks(url: str) -> None:
    c = make_app(url, webhook_allow_private=True).test_client()
    a = c.post("/api/v1/fibonacci", json={"n": 7, "webhook": "http://127.0.0.1:9/a"},
               environ_base={"REMOTE_ADDR": "10.9.0.1"}).get_json()
    b = c.post("/api/v1/fibonacci", json={"n": 7, "webhook": "http://127.0.0.1:9/b"},
               environ_base={"REMOTE_ADDR": "10.9.0.2"}).get_json()
    assert a["id"] == b["id"]  # one job (deduplicated), two deliveries
    seen_a = c.get(f"/api/v1/jobs/{a['id']}", environ_base={"REMOTE_ADDR": "10.9.0.1"}).get_json()["webhooks"]
    seen_b = c.get(f"/api/v1/jobs/{a['id']}", environ_base={"REMOTE_ADDR": "10.9.0.2"}).get_json()["webhooks"]
    seen_c = c.get(f"/api/v1/jobs/{a['id']}", environ_base={"REMOTE_ADDR": "10.9.0.3"}).get_json()["webhooks"]
    assert [h["url"] for h in seen_a] == ["http://127.0.0.1:9/a"]
    assert [h["url"] for h in seen_b] == ["http://127.0.0.1:9/b"]
    assert seen_c == []
    assert seen_a[0]["status"] == "waiting" and seen_a[0]["attempts"] == 0


def test_a_batch_items_webhooks_are_listed_only_for_the_client_that_registered_them(url: str) -> None:
    c = make_app(url, webhook_allow_private=True).test_client()
    items = [{"type": "fibonacci", "params": {"n": 8}, "webhook": "http://127.0.0.1:9/item"},
             {"type": "fibonacci", "params": {"n": 9}, "webhook": None}]
    r = c.post("/api/v1/batches", json={"jobs": items}, environ_base={"REMOTE_ADDR": "10.9.0.1"})
    assert r.status_code == 202, r.text
    jobs = c.get(f"/api/v1/batches/{r.get_json()['id']}/jobs", environ_base={"REMOTE_ADDR": "10.9.0.1"}).get_json()
    first, second = (j["id"] for j in jobs["jobs"])
    mine = c.get(f"/api/v1/jobs/{first}", environ_base={"REMOTE_ADDR": "10.9.0.1"}).get_json()["webhooks"]
    assert mine == [{"url": "http://127.0.0.1:9/item", "status": "waiting", "attempts": 0, "last_error": None}]
    assert c.get(f"/api/v1/jobs/{first}", environ_base={"REMOTE_ADDR": "10.9.0.2"}).get_json()["webhooks"] == []
    assert c.get(f"/api/v1/jobs/{second}", environ_base={"REMOTE_ADDR": "10.9.0.1"}).get_json()["webhooks"] == []
    bad = [{"type": "fibonacci", "params": {"n": 1}, "webhook": w} for w in ("ftp://x/", 5, "http://x/#f")]
    r = c.post("/api/v1/batches", json={"jobs": bad})
    assert r.status_code == 422 and [e["loc"] for e in r.get_json()["errors"]] == [
        ["jobs", i, "webhook"] for i in range(3)], r.text


def test_the_generated_secret_is_shared_through_redis(url: str) -> None:
    from jobs.store.deliveries import DeliveryStore

    conn = Redis.from_url(url)
    one, two = DeliveryStore(conn).secret(""), DeliveryStore(conn).secret("")
    assert one == two and one.startswith("whsec_")
    assert DeliveryStore(conn).secret(SECRET) == SECRET


def test_the_retry_schedule_is_seconds_first_then_exponential_with_jitter_for_24_hours() -> None:
    """The issue's schedule: retries after about 5 and 30 s, then growing delays with jitter, no attempt
    later than 24 h after the first, and a last try at that moment."""
    from jobs.webhooks import RetryPolicy

    policy, rng = RetryPolicy(), random.Random(7)
    for k, base in ((1, 5.0), (2, 30.0), (3, 120.0), (4, 480.0), (9, 6 * 3600.0)):
        d = [policy.delay(k, rng) for _ in range(200)]
        assert all(base * 0.8 <= x <= base * 1.2 for x in d) and max(d) - min(d) > base * 0.2  # spread
    t0, now, failures, times = 1_000.0, 1_000.0, 0, []
    while (nxt := policy.next_attempt(failures := failures + 1, t0, now, rng)) is not None:
        times.append(nxt)
        now = nxt
    assert times[0] - t0 < 10 and times[1] - times[0] < 40
    assert times[-1] == t0 + 24 * 3600 and len(times) < 20
