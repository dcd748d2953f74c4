"""Browser pages through the Flask test client and a real Redis: forms, validation, redirects, escaping."""

from __future__ import annotations

import io
import random
import re
import time

import orjson
import pytest
from flask.testing import FlaskClient
from redis import Redis

from jobs.settings import Settings
from jobs.store.keys import JOB_KEY, JOBS_INDEX_KEY
from jobs.store.results import RedisResultWriter
from jobs.store.status import JobStatus
from jobs.types.registry import JOB_TYPES
from rest import create_app
from rest.extensions import service
from tests.conftest import TEST_LIMITS, TEST_RATE_LIMITS

rng = random.Random()
HOSTILE = '<script>alert("x")</script>'
JOB_URL = re.compile(r"^/jobs/([0-9a-f]{32})$")
#: A queue no worker serves: jobs put there stay queued even when the session runs real workers.
IDLE_QUEUE = "web-tests-idle"
#: The CSRF token of the test browser's session (tests/test_auth.py checks that forms without it fail).
CSRF = "test-csrf-token"


class FormClient(FlaskClient):
    """The test client as a browser that loaded the page first: every POST carries the session's CSRF field."""

    def open(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        if kwargs.get("method") == "POST" and (kwargs.get("data") is None or isinstance(kwargs["data"], dict)):
            kwargs["data"] = {"csrf_token": CSRF, **(kwargs.get("data") or {})}
        return super().open(*args, **kwargs)


@pytest.fixture
def client(app):
    app.test_client_class = FormClient
    c = app.test_client()
    with c.session_transaction() as sess:
        sess["csrf"] = CSRF
    return c


def job_id_of(resp) -> str:
    assert resp.status_code == 303, resp.get_data(as_text=True)[:2000]
    m = JOB_URL.match(resp.headers["Location"])
    assert m, resp.headers["Location"]
    return m.group(1)


def html(resp) -> str:
    assert resp.mimetype == "text/html", resp.mimetype
    return resp.get_data(as_text=True)


def field_error(page: str, form: str, field: str) -> str:
    """The message shown next to a field, which the field points at with aria-describedby."""
    m = re.search(rf'<p class="field-error" id="{form}-{field}-error">(.*?)</p>', page, re.S)
    assert m, f"no error shown for {form}.{field}"
    assert re.search(rf'aria-describedby="[^"]*\b{form}-{field}-error\b', page), \
        f"{form}.{field} does not point at its error"
    return re.sub(r"<[^>]+>", "", m.group(1))


def idle_job(app, job_type: str, body: dict) -> str:
    """A job that stays queued (nobody serves its queue), whatever else runs in this session."""
    with app.app_context():
        sub = JOB_TYPES[job_type].parse_json(body, app.config["LIMITS"])
        sub.queue = IDLE_QUEUE
        rec, _ = service().submit(sub)
        return rec.id


def finish(app, job_id: str) -> None:
    """Mark an idle job finished by hand, with an empty result."""
    with app.app_context():
        now = repr(time.time())
        assert service().life.transition(job_id, (JobStatus.QUEUED,), JobStatus.FINISHED, {
            "ended_at": now, "started_at": now,
            "result_meta": '{"kind": "array", "chunks": 0, "items": 0, "bytes": 0, "json_bytes": 2}'})


def test_home_has_a_form_for_each_job_type_with_client_side_validation(client) -> None:
    resp = client.get("/")
    assert resp.status_code == 200
    page = html(resp)
    for form in ("primes", "fibonacci", "sort"):
        assert f'id="{form}-form"' in page
        assert f'action="/submit/{form}"' in page
    # Every input has a label.
    ids = set(re.findall(r'<(?:input|textarea|select)[^>]*\bid="([^"]+)"', page))
    labelled = set(re.findall(r'<label for="([^"]+)"', page))
    assert ids and ids <= labelled, ids - labelled
    # HTML5 constraints from the configured limits (TEST_LIMITS in conftest).
    assert re.search(r'id="fibonacci-n"[^>]*type="number"[^>]*min="0"[^>]*max="100000"[^>]*required', page, re.S)
    assert re.search(r'id="primes-end"[^>]*type="number"[^>]*max="1000000000"[^>]*required', page, re.S)
    assert 'name="output" value="count"' in page
    assert re.search(r'<textarea id="sort-numbers" name="numbers"', page)
    assert re.search(r'id="sort-file" name="file" type="file"', page)
    assert 'enctype="multipart/form-data"' in page
    assert "<h1>" in page and 'lang="en"' in page
    assert "Recent jobs" in page


def test_fibonacci_form_submits_and_redirects_to_the_job(client, redis_conn: Redis) -> None:
    n = rng.randrange(1000, 90_000)
    job_id = job_id_of(client.post("/submit/fibonacci", data={"n": str(n)}))
    assert redis_conn.zscore(JOBS_INDEX_KEY, job_id) is not None
    page = html(client.get(f"/jobs/{job_id}"))
    assert f"F({n:,})" in page
    # The same request again joins the same job.
    assert job_id_of(client.post("/submit/fibonacci", data={"n": str(n)})) == job_id


@pytest.mark.parametrize("data, field, words", [
    ({"n": "-1"}, "n", "whole number"),
    ({"n": "1.5"}, "n", "whole number"),
    ({"n": ""}, "n", "required"),
    ({"n": "100001"}, "n", "at most 100000"),
])
def test_fibonacci_form_errors_are_shown_next_to_the_field(client, redis_conn: Redis, data, field, words) -> None:
    before = redis_conn.zcard(JOBS_INDEX_KEY)
    resp = client.post("/submit/fibonacci", data=data)
    assert resp.status_code == 422
    page = html(resp)
    assert words in field_error(page, "fibonacci", field)
    assert f'value="{data["n"]}"' in page, "the form keeps what was typed"
    assert "This job was not started" in page
    assert redis_conn.zcard(JOBS_INDEX_KEY) == before, "nothing is queued for a rejected form"


def test_primes_form_checks_the_range_on_the_server(client) -> None:
    resp = client.post("/submit/primes", data={"start": "100", "end": "10", "output": "count"})
    assert resp.status_code == 422
    page = html(resp)
    assert "greater than or equal to start" in field_error(page, "primes", "end")
    assert 'id="primes-output-count" name="output" value="count" checked' in page
    resp = client.post("/submit/primes", data={"start": "0", "end": str(10**8), "output": "list"})
    assert "MAX_PRIMES_LIST_WIDTH" in field_error(html(resp), "primes", "end")
    resp = client.post("/submit/primes", data={"start": "0", "end": "10", "output": "many"})
    assert resp.status_code == 422 and "list" in field_error(html(resp), "primes", "output")


def test_primes_form_submits(client) -> None:
    lo = rng.randrange(0, 10**8)
    job_id = job_id_of(client.post("/submit/primes", data={"start": str(lo), "end": str(lo + 1000),
                                                            "output": "count"}))
    page = html(client.get(f"/jobs/{job_id}"))
    assert f"Count primes in [{lo:,}, {lo + 1000:,}]" in page


def test_sort_form_takes_the_text_area_or_a_file(client) -> None:
    a = rng.randrange(10**12)
    job_text = job_id_of(client.post("/submit/sort", data={"numbers": f"3, 1\n{a} 2.5", "descending": "true"},
                                     content_type="multipart/form-data"))
    upload = (io.BytesIO(f"3,1,{a},2.5\n".encode()), "numbers.txt")
    job_file = job_id_of(client.post("/submit/sort", data={"file": upload, "numbers": "", "descending": "true"},
                                     content_type="multipart/form-data"))
    assert job_file == job_text, "the same numbers typed or uploaded are the same request"
    page = html(client.get(f"/jobs/{job_text}"))
    assert "Sort 4 numbers, descending" in page


def test_sort_form_errors(client) -> None:
    resp = client.post("/submit/sort", data={"numbers": "1, 2, banana"}, content_type="multipart/form-data")
    assert resp.status_code == 422
    assert "banana" in field_error(html(resp), "sort", "numbers")
    resp = client.post("/submit/sort", data={"numbers": " "}, content_type="multipart/form-data")
    assert "enter some numbers" in field_error(html(resp), "sort", "numbers")
    resp = client.post("/submit/sort", data={"file": (io.BytesIO(b"1,x"), "n.txt")},
                       content_type="multipart/form-data")
    assert resp.status_code == 422 and "not a number" in field_error(html(resp), "sort", "file")
    resp = client.post("/submit/sort", data={"file": (io.BytesIO(b"1,2"), "n.txt"), "numbers": "3"},
                       content_type="multipart/form-data")
    assert resp.status_code == 422 and "not both" in html(resp)


def test_get_links_submit_and_redirect(client) -> None:
    n = rng.randrange(1000, 90_000)
    job_id = job_id_of(client.get(f"/fibonacci?n={n}"))
    assert job_id_of(client.get(f"/fibonacci?n={n}")) == job_id, "an identical link joins the job"
    lo = rng.randrange(0, 10**8)
    job_id_of(client.get(f"/primes?start={lo}&end={lo + 100}"))
    job_id_of(client.get(f"/primes?start={lo}&end={lo + 10**6}&output=count"))
    job_id_of(client.get(f"/sort?numbers=3,1,2,{rng.randrange(10**9)}&descending=true"))


@pytest.mark.parametrize("url, form, field", [
    ("/fibonacci?n=abc", "fibonacci", "n"),
    ("/fibonacci", "fibonacci", "n"),
    ("/primes?start=5", "primes", "end"),
    ("/primes?start=5&end=1", "primes", "end"),
    ("/sort?numbers=1,two", "sort", "numbers"),
    ("/sort?numbers=1,2&descending=maybe", "sort", "descending"),
])
def test_get_links_with_bad_input_show_the_home_page_with_errors(client, url, form, field) -> None:
    resp = client.get(url)
    assert resp.status_code == 422
    assert field_error(html(resp), form, field)


def test_job_page_refreshes_itself_only_while_the_job_is_live(app, client) -> None:
    job_id = idle_job(app, "primes", {"start": (lo := rng.randrange(10**8)), "end": lo + 50})
    page = html(client.get(f"/jobs/{job_id}"))
    assert '<meta http-equiv="refresh" content="2">' in page
    assert 'id="job-status"' in page and "queued" in page
    assert re.search(r'<progress id="job-progress" max="100" value="0.00"', page)
    assert re.search(r'aria-live="polite"', page)
    assert f'action="/jobs/{job_id}/cancel"' in page
    assert '<script src="/static/job.js" defer></script>' in page
    finish(app, job_id)
    page = html(client.get(f"/jobs/{job_id}"))
    assert 'http-equiv="refresh"' not in page
    assert re.search(r'<progress id="job-progress" max="100" value="100.00"', page)
    assert f'href="/api/v1/jobs/{job_id}/result?format=csv"' in page
    assert f'action="/jobs/{job_id}/cancel"' not in page


def test_job_page_buttons_work_without_javascript(app, client) -> None:
    lo = rng.randrange(10**8, 9 * 10**8)
    job_id = idle_job(app, "primes", {"start": lo, "end": lo + 10**8, "output": "count"})
    resp = client.post(f"/jobs/{job_id}/pause")
    assert resp.status_code == 303 and resp.headers["Location"] == f"/jobs/{job_id}"
    page = html(client.get(f"/jobs/{job_id}"))
    assert "Job paused." in page and "badge-paused" in page
    assert f'action="/jobs/{job_id}/resume"' in page
    assert "Job paused." not in html(client.get(f"/jobs/{job_id}")), "a flash message shows once"
    client.post(f"/jobs/{job_id}/resume")
    client.post(f"/jobs/{job_id}/cancel")
    page = html(client.get(f"/jobs/{job_id}"))
    assert "Job canceled." in page and "badge-canceled" in page
    assert f'action="/jobs/{job_id}/retry"' in page
    resp = client.post(f"/jobs/{job_id}/cancel")
    assert resp.status_code == 303
    page = html(client.get(f"/jobs/{job_id}"))
    assert "Could not cancel the job: job is already canceled." in page
    assert 'class="flash flash-error"' in page
    assert client.post(f"/jobs/{job_id}/retry").status_code == 303
    assert "badge-queued" in html(client.get(f"/jobs/{job_id}"))
    client.post(f"/jobs/{job_id}/cancel")


def test_cross_site_form_posts_are_refused(client) -> None:
    assert client.post("/submit/fibonacci", data={"n": "5"},
                       headers={"Sec-Fetch-Site": "cross-site"}).status_code == 403
    assert client.post("/submit/fibonacci", data={"n": "5"},
                       headers={"Origin": "http://evil.example"}).status_code == 403
    assert client.post("/submit/fibonacci", data={"n": "5"},
                       headers={"Sec-Fetch-Site": "same-origin"}).status_code == 303


def test_unknown_job_and_pages_are_html_404s_but_the_api_keeps_problem_json(client) -> None:
    resp = client.get("/jobs/0123456789abcdef0123456789abcdef")
    assert resp.status_code == 404 and "unknown" in html(resp)
    assert client.get("/jobs/nope/fragment").status_code == 404
    assert client.post("/jobs/0123456789abcdef0123456789abcdef/cancel").status_code == 404
    assert client.post("/jobs/0123456789abcdef0123456789abcdef/explode").status_code == 404
    resp = client.get("/no-such-page", headers={"Accept": "text/html,*/*;q=0.8"})
    assert resp.status_code == 404 and resp.mimetype == "text/html"
    assert client.get("/no-such-page").mimetype == "application/problem+json"
    assert client.get("/api/v1/nope", headers={"Accept": "text/html"}).mimetype == "application/problem+json"
    assert client.get("/api/v1/jobs/0123456789abcdef0123456789abcdef",
                      headers={"Accept": "text/html"}).mimetype == "application/problem+json"


def new_fibonacci_job(client, redis_conn: Redis) -> str:
    """A Fibonacci job this call created, not an older one that the request cache answered with.

    A link identical to an earlier one answers with that earlier job (test_get_links_submit_and_redirect),
    and the session's Redis holds hundreds of F(n) for n in this range by the time this module runs (one
    batch test alone makes 350); such an old job sits below the newest page of the list."""
    for _ in range(20):
        before = time.time()
        job_id = job_id_of(client.get(f"/fibonacci?n={rng.randrange(1000, 90_000)}"))
        if float(redis_conn.hget(JOB_KEY.format(id=job_id), "created_at") or 0) >= before:
            return job_id
    raise AssertionError("20 random F(n) links in a row answered with existing jobs")


def test_job_list_filters_and_pages(client, redis_conn: Redis) -> None:
    ids = [new_fibonacci_job(client, redis_conn) for _ in range(3)]
    page = html(client.get("/jobs?type=fibonacci"))
    assert all(f"/jobs/{i}" in page for i in ids)
    assert page.index(f"/jobs/{ids[2]}") < page.index(f"/jobs/{ids[0]}"), "newest first"
    assert '<option value="fibonacci" selected>' in page
    assert "/jobs/" in page and "Count primes" not in page
    for _ in range(30):
        client.get(f"/fibonacci?n={rng.randrange(1000, 90_000)}")
    page = html(client.get("/jobs?type=fibonacci"))
    m = re.search(r'<a href="([^"]+)" rel="next">', page)
    assert m, "a full page links to the next"
    nxt = html(client.get(m.group(1).replace("&amp;", "&")))
    first = set(re.findall(r'href="/jobs/([0-9a-f]{32})"', page))
    second = set(re.findall(r'href="/jobs/([0-9a-f]{32})"', nxt))
    assert second and not first & second
    assert client.get("/jobs?status=bogus").status_code == 422
    assert client.get("/jobs?cursor=%%%").status_code == 422


def test_hostile_input_is_never_rendered_as_html(client) -> None:
    resp = client.get("/fibonacci", query_string={"n": HOSTILE})
    assert resp.status_code == 422
    page = html(resp)
    assert HOSTILE not in page and "&lt;script&gt;" in page
    resp = client.post("/submit/sort", data={"numbers": HOSTILE, "descending": HOSTILE},
                       content_type="multipart/form-data")
    page = html(resp)
    assert resp.status_code == 422 and "<script>alert" not in page and "&lt;script&gt;" in page
    resp = client.post("/submit/primes", data={"start": "1", "end": "2", "output": HOSTILE})
    page = html(resp)
    assert resp.status_code == 422 and "<script>alert" not in page
    page = html(client.get("/jobs", query_string={"status": HOSTILE, "type": HOSTILE}))
    assert "<script>alert" not in page
    page = html(client.get("/" + HOSTILE, headers={"Accept": "text/html"}))
    assert "<script>alert" not in page
    # A forged flash cookie is text too.
    job_id = job_id_of(client.get(f"/fibonacci?n={rng.randrange(1000, 90_000)}"))
    client.set_cookie("crunch_flash", "ok:" + HOSTILE.replace('"', "%22"), path=f"/jobs/{job_id}")
    page = html(client.get(f"/jobs/{job_id}"))
    assert "<script>alert" not in page and "&lt;script&gt;" in page


def test_pages_use_no_external_urls_and_no_inline_script(app, client) -> None:
    job_id = job_id_of(client.get(f"/fibonacci?n={rng.randrange(1000, 90_000)}"))
    bad = client.post("/submit/fibonacci", data={"n": "x"})
    finished = idle_job(app, "primes", {"start": (lo := rng.randrange(10**8)), "end": lo + 50})
    finish(app, finished)
    pages = [client.get("/"), client.get("/jobs"), client.get(f"/jobs/{job_id}"), client.get(f"/jobs/{finished}"),
             client.get(f"/jobs/{job_id}/fragment"), bad,
             client.get("/jobs/0123456789abcdef0123456789abcdef")]
    for resp in pages:
        page = html(resp)
        assert "http://" not in page and "https://" not in page, resp.request.path
        assert "//" not in re.sub(r"<!--.*?-->", "", page).replace("://", ""), resp.request.path
        assert not re.search(r"<script(?![^>]*\bsrc=\"/static/)", page), "no inline script"
        assert not re.search(r"\sstyle=|<style", page), "no inline style"
        assert not re.search(r"\son[a-z]+=", page), "no inline event handlers"
    for asset in ("crunch.css", "job.js"):
        resp = client.get(f"/static/{asset}")
        assert resp.status_code == 200
        body = resp.get_data(as_text=True)
        assert "http://" not in body and "https://" not in body
        resp.close()


def finish_with(app, redis_conn: Redis, job_id: str, items: list | None = None, value: dict | None = None) -> None:
    """Store a result for an idle job as a worker would, and mark it finished."""
    writer = RedisResultWriter(redis_conn, job_id)
    if items is not None:
        writer.append(items)
    else:
        writer.write_value(value)
    meta = writer.finish()
    with app.app_context():
        now = repr(time.time())
        assert service().life.transition(job_id, (JobStatus.QUEUED,), JobStatus.FINISHED, {
            "ended_at": now, "started_at": now, "result_meta": orjson.dumps(meta).decode()})


def test_long_results_are_truncated_with_download_links(app, client, redis_conn: Redis) -> None:
    lo = rng.randrange(10**8)
    job_id = idle_job(app, "primes", {"start": lo, "end": lo + 100_000})
    finish_with(app, redis_conn, job_id, items=list(range(10**20, 10**20 + 12_345)))
    page = html(client.get(f"/jobs/{job_id}"))
    shown = re.findall(r"<li>(\d+)</li>", page)
    assert len(shown) == 200 and shown[0] == str(10**20) and shown[-1] == str(10**20 + 199), "exact, first 200"
    assert "12,345 items; the first 200 are shown." in page and "12,145 more" in page
    for fmt in ("json", "csv", "txt"):
        assert f'href="/api/v1/jobs/{job_id}/result?format={fmt}"' in page

    job_id = idle_job(app, "fibonacci", {"n": rng.randrange(50_000, 100_000)})
    digits = "".join(rng.choice("0123456789") for _ in range(5000))
    finish_with(app, redis_conn, job_id, value={"n": 12345, "digits": 5000, "value": digits})
    page = html(client.get(f"/jobs/{job_id}"))
    m = re.search(r'<p class="digits" id="result-value"[^>]*>(\d+)…</p>', page)
    assert m and m.group(1) == digits[:2000]
    assert "5,000 digits; the first 2,000 are shown" in page

    job_id = idle_job(app, "primes", {"start": lo, "end": lo + 10**6, "output": "count"})
    finish_with(app, redis_conn, job_id, value={"count": 70435})
    assert "70,435 primes" in html(client.get(f"/jobs/{job_id}"))


def test_csv_form(client) -> None:
    page = html(client.get("/"))
    assert 'id="csv-form"' in page and 'action="/submit/csv"' in page
    assert re.search(r'id="csv-file" name="file" type="file" accept="[^"]*" required', page)
    assert re.search(r'id="csv-from" name="from" type="date"', page)
    body = f"date,value\n2024-01-0{rng.randrange(1, 9)},{rng.randrange(10**9)}\n2024-02-01,1\n".encode()
    job_id = job_id_of(client.post("/submit/csv", content_type="multipart/form-data", data={
        "file": (io.BytesIO(body), "data.csv"), "date_column": "date", "from": "2024-01-01", "till": "",
        "sort_by": "value"}))
    assert "Filter and sort data.csv" in html(client.get(f"/jobs/{job_id}"))
    resp = client.post("/submit/csv", content_type="multipart/form-data", data={
        "file": (io.BytesIO(body), "data.csv"), "date_column": "nope", "sort_by": ""})
    assert resp.status_code == 422 and field_error(html(resp), "csv", "date_column")
    assert 'value="nope"' in html(resp)


def test_operations_page_shows_queues_workers_and_chart_data_from_redis(client, redis_conn: Redis) -> None:
    from rest import ops

    redis_conn.delete(ops.SAMPLES_KEY, ops.SAMPLE_LOCK_KEY)
    page = html(client.get("/queues"))
    assert "<h1>Queues and workers</h1>" in page and 'aria-current="page">Queues and workers' in page
    assert 'data-queue="fast"' in page and 'data-queue="default"' in page
    assert "/static/vendor/uplot/uPlot.iife.min.js" in page and "cdn" not in page.lower()
    series = orjson.loads(re.search(r'data-series="([^"]*)"', page).group(1).replace("&#34;", '"')
                          .replace("&quot;", '"'))
    assert len(series["finished"]) == 60 and series["depth"]["queues"] == ["fast", "default"]
    assert len(series["depth"]["points"]) == 1, "the page's own request took a sample"
    # A second request within SAMPLE_EVERY seconds (any web process) adds no sample.
    data = client.get("/queues/data").get_json()
    assert len(data["depth"]["points"]) == 1
    # Finished per minute: the finish step's counters are exact; other minutes come from samples.
    minute = int(time.time() // 60)
    redis_conn.set(ops.FINISHED_MINUTE_KEY.format(minute=minute - 2), 7, ex=60)
    data = client.get("/queues/data").get_json()
    per_minute = dict((t // 60, n) for t, n in data["finished_per_minute"])
    assert per_minute[minute - 2] == 7 and per_minute[minute - 59] is None
    assert client.get("/static/vendor/uplot/LICENSE").status_code == 200


def test_operations_page_derives_finished_per_minute_from_samples(app) -> None:
    from rest import ops

    now = 1_000_000 * 60 + 30.0  # 1971: no finish-step counter exists for these minutes
    samples = [{"t": now - 150, "finished": {"fast": 10, "default": 0}},
               {"t": now - 100, "finished": {"fast": 15, "default": 1}},
               {"t": now - 70, "finished": {"fast": 20, "default": 2}},
               {"t": now - 5, "finished": {"fast": 30, "default": 2}}]
    with app.app_context():
        out = dict(ops.finished_per_minute(now, samples))
    m = int(now // 60) * 60
    assert len(out) == 60 and max(out) == m
    # The growth of the totals between each minute's last sample and the previous one's.
    assert out[m] == 32 - 22 and out[m - 60] == 22 - 16
    assert out[m - 120] == 16 - 10, "the first sampled minute: the growth within it"
    assert out[m - 180] is None, "no sample: unknown, not 0"


def test_csv_result_summary_reads_as_sentences_and_lists(client, redis_url: str) -> None:
    from infra.processes import ROOT
    from tests.conftest import run_fast_queue

    body = (ROOT / "examples" / "sales.csv").read_bytes()
    job_id = job_id_of(client.post("/submit/csv", content_type="multipart/form-data", data={
        "file": (io.BytesIO(body), "sales.csv"), "date_column": "date", "from": "2024-01-01",
        "till": "2024-03-31", "sort_by": "amount"}))
    run_fast_queue(redis_url)
    page = html(client.get(f"/jobs/{job_id}"))
    assert "<strong>9</strong> rows kept, sorted as numbers." in page
    assert "<strong>1</strong> row was skipped because the date did not parse." in page
    assert re.findall(r"<li><code>([^<]+)</code></li>", page)[:4] == ["date", "region", "product", "amount"]
    assert "<li>row 14: <code>unknown</code></li>" in page
    assert re.search(r"of [0-9,]+ bytes", page), "progress says its unit"
    assert "{&#34;" not in page and '{"rows"' not in page, "no raw JSON"


def test_a_split_job_between_two_parts_shows_as_running_while_the_api_says_queued(redis_url: str) -> None:
    """The page shows `started` for a split job whose part just ended while the next waits (a worker moving
    between parts), `queued` once no part has ended for a while (all waiting, e.g. sent back by a shutdown);
    the API says `queued` in both (crash recovery reads it), and the buttons offered are the same."""
    url = f"{redis_url.rpartition('/')[0]}/15"  # no worker serves this database: the parts stay put
    conn = Redis.from_url(url)
    conn.flushdb()
    app = create_app(settings=Settings(redis_url=url, limits=TEST_LIMITS, fanout_min_seconds=0.001,
                                       **TEST_RATE_LIMITS))
    client = app.test_client()
    job_id = job_id_of(client.get(f"/primes?start={(lo := rng.randrange(10**8))}&end={lo + 5 * 10**8}"
                                  "&output=count"))
    with app.app_context():
        svc = service()
        parts = svc.fanout.parts(svc.get(job_id))
        assert len(parts) >= 2
        page = html(client.get(f"/jobs/{job_id}"))
        assert 'data-split="1"' in page and 'data-between-parts-ms="5000"' in page and "badge-queued" in page
        actions = re.search(r'data-actions="([^"]*)"', page).group(1)
        assert actions == "pause cancel delete"

        first = parts[0].id
        svc.fanout.started(job_id)
        assert svc.life.transition(first, (JobStatus.QUEUED,), JobStatus.STARTED, {"started_at": repr(time.time())})
        assert svc.life.transition(first, (JobStatus.STARTED,), JobStatus.FINISHED, {"ended_at": repr(time.time())})
        assert client.get(f"/api/v1/jobs/{job_id}").get_json()["status"] == "queued"
        page = html(client.get(f"/jobs/{job_id}"))
        assert "badge-started" in page and 'id="job-run"' in page and 'id="job-waiting"' not in page
        assert "(started) · Crunch</title>" in page
        assert f'data-actions="{actions}"' in page, "the same actions: job.js keeps the buttons"
        assert 'data-status="started"' in html(client.get(f"/jobs/{job_id}/fragment"))

        conn.hset(JOB_KEY.format(id=first), "ended_at", repr(time.time() - 10))  # no part ended lately
        page = html(client.get(f"/jobs/{job_id}"))
        assert "badge-queued" in page and 'id="job-run"' not in page
        assert f'data-actions="{actions}"' in page
    conn.flushdb()
