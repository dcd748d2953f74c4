"""The browser pages in a real headless Chromium against a real gunicorn and real workers.

Chromium is Debian's (/usr/bin/chromium, or $CHROMIUM), driven by Playwright without its own
browser download. A machine without it fails these tests with a message saying how to install it:
CI installs it (.ci/run), so a skip would only hide a missing browser.
"""

from __future__ import annotations

import os
import random
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gmpy2
import pytest
from redis import Redis
from requests.adapters import HTTPAdapter

from infra.processes import ROOT, Api, Web
from tests.ranges import WEB_ENV, fresh_range

pytestmark = pytest.mark.e2e

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = ROOT / "test-artifacts"
JOB_PATH = re.compile(r"/jobs/([0-9a-f]{32})$")
rng = random.Random()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium is not installed at {CHROMIUM}: the browser tests need it. Install it with "
                    "`apt-get install chromium` (.ci/run does), or point $CHROMIUM at a Chromium binary.",
                    pytrace=False)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the Python package playwright is missing: pip install -r requirements-dev.txt", pytrace=False)
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=30_000)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    ctx = browser.new_context(viewport={"width": 1200, "height": 900})
    pg = ctx.new_page()
    pg.set_default_timeout(20_000)
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" and "status of 4" not in msg.text
          else None)
    yield pg
    ctx.close()
    assert not errors, f"errors in the page: {errors}"


def expect() -> Any:
    from playwright.sync_api import expect as _expect
    _expect.set_options(timeout=20_000)
    return _expect


def job_id(pg: Any) -> str:
    m = JOB_PATH.search(pg.url)
    assert m, pg.url
    return m.group(1)


def wait_js(pg: Any, expression: str, timeout: float = 30) -> Any:
    """Poll a JS expression until truthy (wait_for_function would need eval, which the pages' CSP forbids)."""
    deadline = time.monotonic() + timeout
    while not (value := pg.evaluate(expression)):
        assert time.monotonic() < deadline, f"timed out waiting for {expression}"
        time.sleep(0.1)
    return value


def main_frame_navigations(pg: Any) -> list[str]:
    navs: list[str] = []
    pg.on("framenavigated", lambda f: navs.append(f.url) if f == pg.main_frame else None)
    return navs


def test_each_form_submits_and_shows_its_result(web: Web, api: Api, page: Any) -> None:
    ex = expect()
    page.goto(web.url + "/")

    # Client-side validation stops a bad number before it is sent.
    page.fill("#fibonacci-n", "-3")
    page.click("#fibonacci-form button[type=submit]")
    assert page.url == web.url + "/"
    assert page.eval_on_selector("#fibonacci-n", "e => e.validity.rangeUnderflow")

    n = rng.randrange(10_000, 20_000)
    page.fill("#fibonacci-n", str(n))
    page.click("#fibonacci-form button[type=submit]")
    page.wait_for_url(JOB_PATH)
    ex(page.locator("#job-status")).to_have_text("finished")
    value = gmpy2.fib(n).digits(10)
    shown = page.locator("#result-value").text_content().strip().rstrip("…")
    assert shown == value[:2000] and len(value) > 2000
    ex(page.locator("#result-summary")).to_contain_text(f"{len(value):,} digits; the first 2,000 are shown")

    # Server-side validation: the message sits next to the field and the values stay.
    page.goto(web.url + "/")
    page.fill("#primes-start", "500")
    page.fill("#primes-end", "100")
    page.click("#primes-form button[type=submit]")
    ex(page.locator("#primes-end-error")).to_contain_text("greater than or equal to start")
    assert page.input_value("#primes-start") == "500"
    assert page.get_attribute("#primes-end", "aria-invalid") == "true"

    lo = rng.randrange(10**9, 10**10)
    page.fill("#primes-start", str(lo))
    page.fill("#primes-end", str(lo + 5000))
    page.check("#primes-output-list")
    page.click("#primes-form button[type=submit]")
    page.wait_for_url(JOB_PATH)
    ex(page.locator("#job-status")).to_have_text("finished")
    expected = api.get(f"/api/v1/jobs/{job_id(page)}").json()["result"]
    items = [int(t) for t in page.locator("ol.items li").all_text_contents()]
    assert items == expected[:200] and len(expected) > 100

    numbers = [rng.randrange(-10**30, 10**30) for _ in range(20)] + [2.5, -0.125]
    page.goto(web.url + "/")
    page.fill("#sort-numbers", ", ".join(map(str, numbers)))
    page.check("#sort-descending")
    page.click("#sort-form button[type=submit]")
    page.wait_for_url(JOB_PATH)
    ex(page.locator("#job-status")).to_have_text("finished")
    items = page.locator("ol.items li").all_text_contents()
    assert items == [str(x) for x in sorted(numbers, reverse=True)], "exact, descending"

    page.goto(web.url + "/")
    upload = [rng.randrange(10**6) for _ in range(300)]
    page.set_input_files("#sort-file", files=[{"name": "numbers.txt", "mimeType": "text/plain",
                                                "buffer": "\n".join(map(str, upload)).encode()}])
    page.click("#sort-form button[type=submit]")
    page.wait_for_url(JOB_PATH)
    ex(page.locator("#job-status")).to_have_text("finished")
    ex(page.locator("#result-summary")).to_contain_text("300 items; the first 200 are shown")
    items = [int(t) for t in page.locator("ol.items li").all_text_contents()]
    assert items == sorted(upload)[:200]
    csv_link = page.locator("a", has_text="CSV").get_attribute("href")
    assert csv_link == f"/api/v1/jobs/{job_id(page)}/result?format=csv"

    page.goto(web.url + "/")
    if page.locator("#csv-form").count():
        day = rng.randrange(1, 28)
        body = f"day,amount\n2024-03-{day:02d},{rng.randrange(10**6)}\n2024-05-01,7\n2023-01-01,9\n"
        page.set_input_files("#csv-file", files=[{"name": "sales.csv", "mimeType": "text/csv",
                                                   "buffer": body.encode()}])
        page.fill("#csv-date_column", "day")
        page.fill("#csv-from", "2024-01-01")
        page.fill("#csv-sort_by", "amount")
        page.click("#csv-form button[type=submit]")
        page.wait_for_url(JOB_PATH)
        ex(page.locator("#job-status")).to_have_text("finished")
        ex(page.locator("#result-summary")).to_contain_text("rows")


def test_progress_moves_and_the_result_appears_without_a_reload(web: Web, api: Api, page: Any) -> None:
    ex = expect()
    navs = main_frame_navigations(page)
    lo, hi = fresh_range(2 * 10**10)
    page.goto(f"{web.url}/primes?start={lo}&end={hi}&output=count")
    page.wait_for_url(JOB_PATH)
    jid = job_id(page)
    page.evaluate("window.__crunchTestMarker = 'same document'")
    origin = page.evaluate("performance.timeOrigin")
    assert page.evaluate("document.querySelector('meta[http-equiv=refresh]')") is None

    seen: list[float] = []
    deadline = time.monotonic() + 45
    screenshot_taken = False
    while time.monotonic() < deadline:
        status, value = page.evaluate(
            "[document.getElementById('job-status').textContent, document.getElementById('job-progress').value]")
        if not seen or value != seen[-1]:
            seen.append(value)
        if not screenshot_taken and status == "started" and 10 < value < 90:
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "job-page-running.png"), full_page=True)
            screenshot_taken = True
        if status == "finished":
            break
        time.sleep(0.1)
    ex(page.locator("#job-status")).to_have_text("finished", timeout=1)
    moving = [v for v in seen if 0 < v < 100]
    assert len(moving) >= 2 and moving == sorted(moving), f"the bar moved forward live: {seen}"
    assert seen[-1] == 100

    count = api.get(f"/api/v1/jobs/{jid}").json()["result"]["count"]
    ex(page.locator("#result-summary")).to_have_text(f"{count:,} primes")
    ex(page.locator("#job-percent")).to_have_text("100.0 %")
    ex(page.locator("#timings-title")).to_be_visible()
    assert page.locator("form[data-action=cancel]").count() == 0, "no cancel button once finished"

    # Still the same document: the marker survived, and only the first load navigated.
    assert page.evaluate("window.__crunchTestMarker") == "same document"
    assert page.evaluate("performance.timeOrigin") == origin
    assert page.evaluate("performance.getEntriesByType('navigation').length") == 1
    assert navs == [f"{web.url}/jobs/{jid}"], navs
    state = page.evaluate("window.crunchJobPage")
    assert state["events"] >= 3 and state["fragments"] >= 1, state

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "job-page.png"), full_page=True)


def test_pause_resume_cancel_and_retry_buttons(web: Web, api: Api, page: Any) -> None:
    ex = expect()
    navs = main_frame_navigations(page)
    # Wide enough that the retried run (which reuses the segments its first run stored) is still running
    # when its cancel button is clicked on a busy machine: 4e10 split over both workers could end first.
    lo, hi = fresh_range(2 * 10**11)
    page.goto(f"{web.url}/primes?start={lo}&end={hi}&output=count")
    page.wait_for_url(JOB_PATH)
    jid = job_id(page)
    wait_js(page, "document.getElementById('job-progress').value > 0")

    page.click("form[data-action=pause] button")
    ex(page.locator("#job-status")).to_have_text("paused")
    ex(page.locator("#flash")).to_have_text("Job paused.")
    held = page.evaluate("document.getElementById('job-progress').value")
    assert 0 < held < 100
    time.sleep(0.8)
    assert page.evaluate("document.getElementById('job-progress').value") == held, "a paused job does not move"
    assert page.locator("form[data-action=pause]").count() == 0

    page.click("form[data-action=resume] button")
    ex(page.locator("#flash")).to_contain_text("Job resumed")
    wait_js(page, f"document.getElementById('job-progress').value > {held}")
    ex(page.locator("#job-status")).to_have_text("started")

    page.click("form[data-action=cancel] button")
    ex(page.locator("#job-status")).to_have_text("canceled")
    ex(page.locator("#flash")).to_have_text("Job canceled.")
    assert api.get(f"/api/v1/jobs/{jid}").json()["status"] == "canceled"
    # A canceled split job's running parts stop at their next checkpoint; retrying before they have is a
    # known race (seen once: the retried job ended `failed`), so the retry waits until no worker runs it.
    deadline = time.monotonic() + 60
    while any(w.get("current_job") == jid for w in api.get("/api/v1/workers").json()):
        assert time.monotonic() < deadline, "the canceled job's parts did not stop"
        time.sleep(0.1)

    page.click("form[data-action=retry] button")
    ex(page.locator("#flash")).to_have_text("Job queued again.")
    ex(page.locator("#job-status")).to_have_text(re.compile("queued|started"))
    # A split job's status flips between started and queued as its workers move from part to part; the page
    # keeps its buttons through those flips (test_buttons_stay_the_same_elements_...), so no force is needed.
    page.click("form[data-action=cancel] button")
    ex(page.locator("#job-status")).to_have_text("canceled")
    assert navs == [f"{web.url}/jobs/{jid}"], "every button worked in place"


class FromAddress(HTTPAdapter):
    """Connections from another loopback address: to the web, another client (dispatch is fair between clients)."""

    def __init__(self, address: str) -> None:
        self.address = address
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["source_address"] = (self.address, 0)
        super().init_poolmanager(*args, **kwargs)


def api_from(web: Web, address: str) -> Api:
    other = Api(web.url)
    other.s.mount("http://", FromAddress(address))
    return other


#: The page's status badge as it changes, and the action forms each tagged with its action (a property
#: on the element, so only the same element still has it).
WATCH_PAGE = """() => {
    const badge = document.getElementById('job-status');
    window.__shown = [badge.textContent];
    new MutationObserver(() => window.__shown.push(badge.textContent))
        .observe(badge, {childList: true, characterData: true, subtree: true});
    for (const f of document.querySelectorAll('#job-actions form')) f.crunchTag = f.dataset.action;
}"""
TAGS = "[...document.querySelectorAll('#job-actions form')].map(f => [f.dataset.action, f.crunchTag || null])"


def test_buttons_stay_the_same_elements_while_a_split_job_moves_between_parts(web: Web, api: Api, page: Any) -> None:
    """A split job run by one worker reads `queued` in the API between each two parts: the page neither
    shows that flicker nor replaces its buttons, and the buttons still work."""
    ex = expect()
    # Another client's long count fills the workers first; dispatch is fair between clients, so from then
    # on the page's job runs on one worker, part after part, and reads `queued` in each gap.
    other = api_from(web, "127.0.0.2")
    lo, hi = fresh_range(6 * 10**11)  # outlasts the test on one worker, and is canceled at its end
    r = other.post("/api/v1/primes", json={"start": lo, "end": hi, "output": "count"})
    assert r.status_code == 202, r.text
    blocker = r.json()["id"]
    jid = None
    try:
        lo, hi = fresh_range(2 * 10**11)
        page.goto(f"{web.url}/primes?start={lo}&end={hi}&output=count")
        page.wait_for_url(JOB_PATH)
        jid = job_id(page)
        assert page.locator("#job").get_attribute("data-split") == "1"
        page.evaluate(WATCH_PAGE)
        seen: list[str] = []  # the API's status, as it changes
        flips = refreshes = 0
        t0 = time.monotonic()
        deadline = t0 + 150
        next_refresh = t0
        while flips < 3:
            assert time.monotonic() < deadline, f"no three started/queued flips in 150 s: {seen}"
            status = api.get(f"/api/v1/jobs/{jid}").json()["status"]
            if not seen or status != seen[-1]:
                seen.append(status)
                flips += seen[-3:] == ["started", "queued", "started"]
            assert status in ("queued", "started"), seen
            if time.monotonic() >= next_refresh:  # the details fetched again, as at a status change
                page.evaluate("document.getElementById('job').dispatchEvent(new Event('crunch:refresh'))")
                refreshes += 1
                next_refresh = time.monotonic() + 1
        wait_js(page, f"window.crunchJobPage.fragments >= {refreshes}")
        state = page.evaluate("window.crunchJobPage")
        assert page.evaluate(TAGS) == [["pause", "pause"], ["cancel", "cancel"], ["delete", "delete"]], \
            "the same button elements after every refresh and flip"
        assert state["actionsKept"] == state["fragments"], state
        ex(page.locator("#job-status")).to_have_text("started")
        badge = page.evaluate("window.__shown")
        shown = [s for i, s in enumerate(badge) if i == 0 or s != badge[i - 1]]
        assert "queued" not in shown[shown.index("started"):], f"the page flickered back to queued: {shown}"
        print(f"\nAPI statuses in {time.monotonic() - t0:.1f} s: {seen}; the page held started through "
              f"{state['held']} queued it received; {state['fragments']} refreshes kept the buttons")

        page.click("form[data-action=pause] button")  # no force: the button stands still
        ex(page.locator("#job-status")).to_have_text("paused")
        ex(page.locator("#flash")).to_have_text("Job paused.")
        page.click("form[data-action=cancel] button")
        ex(page.locator("#job-status")).to_have_text("canceled")
        assert api.get(f"/api/v1/jobs/{jid}").json()["status"] == "canceled"
    finally:
        other.post(f"/api/v1/jobs/{blocker}/cancel")
        if jid:
            api.post(f"/api/v1/jobs/{jid}/cancel")


@pytest.fixture
def hand_moved(redis_url: str, log_dir: Path) -> Iterator[tuple[Web, Any]]:
    """A web on a database no worker serves, splitting even a small count, and an app on the same database
    whose service moves the parts by hand (each step publishes the whole job's event, as a worker does)."""
    from jobs.settings import Settings
    from rest import create_app

    url = f"{redis_url.rpartition('/')[0]}/15"
    conn = Redis.from_url(url)
    conn.flushdb()
    w = Web(url, log_dir, FANOUT_MIN_SECONDS=0.001, WEB_PROCESSES=1)
    w.log_path = log_dir / "web-browser-split.log"
    w.start()
    try:
        yield w, create_app(settings=Settings(redis_url=url, fanout_min_seconds=0.001))
    finally:
        w.stop()
        conn.flushdb()


def test_the_page_holds_started_between_two_parts_and_shows_queued_when_no_part_follows(
        hand_moved: tuple[Web, Any], page: Any) -> None:
    """job.js's side of presenting.shown(): a `queued` between two parts stays `started` on the page; only
    a `queued` that lasts (no part follows, e.g. a shutdown sent them back) shows, after the hold."""
    from jobs.store.events import publish
    from jobs.store.status import JobStatus
    from rest.extensions import service

    ex = expect()
    web, app = hand_moved
    lo = rng.randrange(10**9, 10**11)
    page.goto(f"{web.url}/primes?start={lo}&end={lo + 5 * 10**8}&output=count")
    page.wait_for_url(JOB_PATH)
    jid = job_id(page)
    hold = int(page.locator("#job").get_attribute("data-between-parts-ms"))
    page.evaluate(WATCH_PAGE)
    wait_js(page, "window.crunchJobPage.live === 'events'")
    with app.app_context():
        svc = service()
        first, second = [p.id for p in svc.fanout.parts(svc.get(jid))][:2]

        def part(pid: str, from_: JobStatus, to: JobStatus, field: str) -> None:
            assert svc.life.transition(pid, (from_,), to, {field: repr(time.time())})
            publish(svc.conn, jid, "started", kind="progress")  # a part's progress wakes the page's stream

        part(first, JobStatus.QUEUED, JobStatus.STARTED, "started_at")
        svc.fanout.started(jid)
        ex(page.locator("#job-status")).to_have_text("started")
        part(first, JobStatus.STARTED, JobStatus.FINISHED, "ended_at")  # the API reads `queued` now
        wait_js(page, "window.crunchJobPage.apiStatus === 'queued'")
        assert page.evaluate("[window.crunchJobPage.held, window.crunchJobPage.status]") == [1, "started"]
        part(second, JobStatus.QUEUED, JobStatus.STARTED, "started_at")  # the next part, within the hold
        wait_js(page, "window.crunchJobPage.apiStatus === 'started'")
        time.sleep(hold / 1000 + 1)
        ex(page.locator("#job-status")).to_have_text("started", timeout=1)  # the hold ended with the flip

        part(second, JobStatus.STARTED, JobStatus.FINISHED, "ended_at")  # and no part follows this time
        wait_js(page, "window.crunchJobPage.held === 2")
        held_at = time.monotonic()
        ex(page.locator("#job-status")).to_have_text("queued", timeout=hold + 20_000)
        assert time.monotonic() - held_at > hold / 1000 - 1, "shown once the hold is over, not before"
    badge = page.evaluate("window.__shown")
    assert [b for i, b in enumerate(badge) if i == 0 or b != badge[i - 1]] == ["queued", "started", "queued"]
    ex(page.locator("#job-run")).to_have_count(0)  # the details followed: no "Running ..." line
    assert page.evaluate(TAGS) == [["pause", "pause"], ["cancel", "cancel"], ["delete", "delete"]]
    state = page.evaluate("window.crunchJobPage")
    assert state["fragments"] >= 2 and state["actionsKept"] == state["fragments"], state
    page.click("form[data-action=cancel] button")
    ex(page.locator("#job-status")).to_have_text("canceled")
    ex(page.locator("#flash")).to_have_text("Job canceled.")


def test_without_javascript_the_page_refreshes_itself_and_the_buttons_still_work(
        web: Web, api: Api, browser: Any) -> None:
    ex = expect()
    ctx = browser.new_context(java_script_enabled=False)
    try:
        page = ctx.new_page()
        page.set_default_timeout(20_000)
        navs = main_frame_navigations(page)
        lo, hi = fresh_range(6 * 10**9)
        page.goto(f"{web.url}/primes?start={lo}&end={hi}&output=count")
        page.wait_for_url(JOB_PATH)
        jid = job_id(page)
        ex(page.locator("#job-status")).to_have_text("finished", timeout=45_000)
        count = api.get(f"/api/v1/jobs/{jid}").json()["result"]["count"]
        ex(page.locator("#result-summary")).to_have_text(f"{count:,} primes")
        assert len(navs) >= 2, "the page reloaded itself (meta refresh) until the job finished"
        reloads = len(navs)
        assert 'http-equiv="refresh"' not in page.content()
        time.sleep(2.5)
        assert len(navs) == reloads, "a finished job's page stops refreshing"

        lo, hi = fresh_range(4 * 10**10)
        page.goto(f"{web.url}/primes?start={lo}&end={hi}&output=count")
        page.wait_for_url(JOB_PATH)
        jid = job_id(page)
        page.click("form[action$='/cancel'] button")
        page.wait_for_url(JOB_PATH)
        ex(page.locator(".flash")).to_have_text("Job canceled.")
        ex(page.locator("#job-status")).to_have_text("canceled")
        assert api.get(f"/api/v1/jobs/{jid}").json()["status"] == "canceled"
    finally:
        ctx.close()


@pytest.fixture(scope="module")
def auth_web(redis_url: str, log_dir: Path, workers: Any) -> Iterator[tuple[Web, str]]:
    """A second gunicorn with API_TOKENS set: one owner, "carol", and her token."""
    from rest.auth import hash_token

    token = os.urandom(24).hex()
    w = Web(redis_url, log_dir, API_TOKENS=f"carol:{hash_token(token)}", **WEB_ENV)
    w.log_path = log_dir / "web-browser-auth.log"
    w.start()
    yield w, token
    w.stop()


def test_a_batch_page_refreshes_itself_pages_its_items_and_cancels(web: Web, api: Api, page: Any) -> None:
    """The batch page in Chromium: while items run it reloads itself and its counts move, its items are paged
    50 at a time in submission order, and its cancel button (a plain form with the CSRF token) ends every
    live item, after which the page stops reloading."""
    ex = expect()
    navs = main_frame_navigations(page)
    lo, _ = fresh_range(4 * 10**11)
    salt = rng.randrange(10**6)
    # Two wide counts (minutes of sieving on two workers) keep the batch live; 53 Fibonacci items end at once.
    items = [{"type": "primes", "params": {"start": lo + k * 2 * 10**11, "end": lo + (k + 1) * 2 * 10**11,
                                           "output": "count"}} for k in range(2)]
    items += [{"type": "fibonacci", "params": {"n": 30_000 + salt % 10_000 + i}} for i in range(53)]
    r = api.post("/api/v1/batches", json={"jobs": items})
    assert r.status_code == 202, r.text
    batch_id = r.json()["id"]
    try:
        page.goto(f"{web.url}/batches/{batch_id}")
        ex(page.locator("#batch-status")).not_to_have_text("finished")
        assert page.locator("meta[http-equiv=refresh]").count() == 1
        ex(page.locator("#items-title")).to_contain_text("Jobs 1\u201350 of 55")
        ex(page.locator("table.jobs tbody tr")).to_have_count(50)
        assert page.locator("table.jobs tbody tr").first.locator("td").nth(2).text_content() == "primes"
        # The counts move by the page's own reloads: the 53 Fibonacci items show as finished.
        finished = page.locator("table.counts tbody td").nth(3)
        ex(finished).to_have_text("53", timeout=60_000)
        assert len(navs) >= 2, "the page reloaded itself while the batch ran"
        assert float(page.locator("#batch-progress").get_attribute("value")) < 100

        page.click("a[rel=next]")
        ex(page.locator("#items-title")).to_contain_text("Jobs 51\u201355 of 55")
        ex(page.locator("table.jobs tbody tr")).to_have_count(5)
        page.click("a[rel=prev]")
        ex(page.locator("#items-title")).to_contain_text("Jobs 1\u201350 of 55")

        page.click("#batch form button[type=submit]")
        ex(page.locator("#batch-status")).to_have_text("finished", timeout=30_000)
        batch = api.get(f"/api/v1/batches/{batch_id}").json()
        assert batch["counts"]["finished"] >= 53 and batch["counts"]["canceled"] >= 1, batch["counts"]
        assert batch["counts"]["finished"] + batch["counts"]["canceled"] == 55, batch["counts"]
        ex(page.locator("#batch-progress")).to_have_attribute("value", "100.00")
        ex(page.locator("#batch form")).to_have_count(0)
        assert page.locator("meta[http-equiv=refresh]").count() == 0
        reloads = len(navs)
        time.sleep(2.5)
        assert len(navs) == reloads, "an ended batch's page stops reloading"
    finally:
        api.post(f"/api/v1/batches/{batch_id}/cancel")


def test_with_api_tokens_the_pages_sign_in_and_the_buttons_still_work(auth_web: tuple[Web, str], page: Any) -> None:
    ex = expect()
    web, token = auth_web
    lo, hi = fresh_range(4 * 10**10)
    page.goto(f"{web.url}/primes?start={lo}&end={hi}&output=count")
    page.wait_for_url(re.compile(r"/login\?next="))
    page.fill("#login-token", "not-the-token")
    page.click("#login-form button[type=submit]")
    ex(page.locator("#login-token-error")).to_contain_text("not valid")
    page.fill("#login-token", token)
    page.click("#login-form button[type=submit]")
    page.wait_for_url(JOB_PATH)  # back to the link, which made the job
    ex(page.locator(".signed-in")).to_contain_text("carol")
    wait_js(page, "document.getElementById('job-progress').value > 0")
    # The buttons call the API with the session cookie and the page's CSRF token.
    page.click("form[data-action=pause] button")
    ex(page.locator("#job-status")).to_have_text("paused")
    page.click("form[data-action=cancel] button")
    ex(page.locator("#job-status")).to_have_text("canceled")
    ex(page.locator("#flash")).to_have_text("Job canceled.")
    page.click(".signout button")
    page.wait_for_url(re.compile(r"/login$"))


# -- the operations page, the list pages, and the job page's newer parts (issue 19) ----------------

AXE = ROOT / "tests" / "vendor" / "axe-core" / "axe.min.js"  # axe-core 4.14.1 from the npm registry (MPL-2.0)


def shot(pg: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    pg.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def canvas_fingerprint(pg: Any, selector: str) -> list[int]:
    """How many pixels of the chart's canvas are drawn, and a checksum of them (changes when the chart does)."""
    return pg.evaluate("""sel => {
        const c = document.querySelector(sel + ' canvas');
        if (!c || !c.width || !c.height) return [0, 0];
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let drawn = 0, sum = 0;
        for (let i = 3; i < d.length; i += 4) {
            if (d[i]) { drawn++; sum = (sum * 31 + d[i - 3] + d[i - 2] * 7 + i) % 1000000007; }
        }
        return [drawn, sum];
    }""", selector)


def submit(api: Api, kind: str, body: dict[str, Any], **kw: Any) -> dict[str, Any]:
    r = api.post(f"/api/v1/{kind}", json=body, **kw)
    assert r.status_code in (200, 202), r.text
    return r.json()


def test_operations_page_draws_live_charts_and_links_running_jobs(web: Web, api: Api, page: Any) -> None:
    ex = expect()
    navs = main_frame_navigations(page)
    page.goto(web.url + "/")
    page.click("nav >> text=Queues and workers")
    page.wait_for_url(web.url + "/queues")
    wait_js(page, "window.crunchOps && window.crunchOps.drawn")
    ex(page.locator("#queue-table tr[data-queue=fast]")).to_be_visible()
    for chart in ("#chart-finished", "#chart-depth"):
        drawn, _ = canvas_fingerprint(page, chart)
        assert drawn > 1000, f"{chart} has axes and series drawn ({drawn} pixels)"
    depth_before = canvas_fingerprint(page, "#chart-depth")
    # Work arrives: long counts fill both workers and wait in the queue; fast jobs finish.
    for _ in range(20):
        submit(api, "fibonacci", {"n": rng.randrange(10**5, 10**6)})
    long_jobs = [submit(api, "primes", {"start": lo, "end": hi, "output": "count"})
                 for lo, hi in (fresh_range(6 * 10**10) for _ in range(4))]
    try:
        wait_js(page, "window.crunchOps.updates >= 2 && window.crunchOps.lastDepth &&"
                      " window.crunchOps.lastDepth.slice(1).some(n => n > 0)", timeout=45)
        wait_js(page, "window.crunchOps.lastFinished > 0 || window.crunchOps.finishedPoints > 0", timeout=45)
        ex(page.locator("#worker-table a").first).to_be_visible()
        assert canvas_fingerprint(page, "#chart-depth") != depth_before, "the depth chart was redrawn"
        assert int(page.locator("#queue-table tr[data-queue=default] td[data-col=queued]").text_content()) >= 1
        ex(page.locator("#chart-finished-text")).to_contain_text("finished in the last hour")
        assert page.evaluate("window.crunchPages.liveUpdates") >= 2
        shot(page, "queues-page")
        assert navs == [web.url + "/", web.url + "/queues"], "the page updated in place"
        link = page.locator("#worker-table a").first
        href = link.get_attribute("href")
        link.click()
        page.wait_for_url(web.url + href)
        ex(page.locator("#job-status")).to_have_text(re.compile("started|finished"))
    finally:
        for j in long_jobs:
            api.post(f"/api/v1/jobs/{j['id']}/cancel")


def test_list_pages_refresh_themselves_with_local_times(web: Web, api: Api, page: Any) -> None:
    ex = expect()
    navs = main_frame_navigations(page)
    page.goto(web.url + "/jobs")
    first_time = page.locator("#job-list time").first
    if first_time.count():
        assert "UTC" in (first_time.get_attribute("title") or "")
        assert "T" not in first_time.text_content() and "Z" not in first_time.text_content()
    n = rng.randrange(2 * 10**5, 3 * 10**5)
    submit(api, "fibonacci", {"n": n})
    ex(page.locator("#job-list", has_text=f"F({n:,})")).to_be_visible(timeout=15_000)
    stamp = page.locator("#job-list tr", has_text=f"F({n:,})").locator("time")
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", stamp.get_attribute("title"))
    shot(page, "jobs-page-live")

    page.goto(web.url + "/")
    page.fill("#fibonacci-n", "12345")
    n = rng.randrange(3 * 10**5, 4 * 10**5)
    submit(api, "fibonacci", {"n": n})
    ex(page.locator("#recent", has_text=f"F({n:,})")).to_be_visible(timeout=15_000)
    assert page.input_value("#fibonacci-n") == "12345", "what the user typed stays"
    assert navs == [web.url + "/jobs", web.url + "/"]


def test_a_running_job_shows_its_worker_elapsed_time_eta_and_unit(web: Web, api: Api, page: Any) -> None:
    ex = expect()
    lo, hi = fresh_range(6 * 10**10)
    page.goto(f"{web.url}/primes?start={lo}&end={hi}&output=count")
    page.wait_for_url(JOB_PATH)
    jid = job_id(page)
    try:
        ex(page.locator("#job-run")).to_be_visible(timeout=30_000)
        wait_js(page, "document.getElementById('job-progress').value > 2")
        # Waited for, not read once: a split job between two parts has no worker for a moment.
        workers = [w["name"] for w in api.get("/api/v1/workers").json()]
        ex(page.locator("#job-worker")).to_have_text(re.compile("^(" + "|".join(map(re.escape, workers)) + ")$"))
        first = page.locator("#job-elapsed").text_content()
        ex(page.locator("#job-elapsed")).not_to_have_text(first, timeout=5_000)
        ex(page.locator("#job-eta")).to_contain_text(re.compile(r"about \d+:\d\d left"))
        ex(page.locator("#job-done")).to_contain_text("numbers of the range")
        shot(page, "job-page-eta")
    finally:
        api.post(f"/api/v1/jobs/{jid}/cancel")


def test_delete_run_again_and_search_by_id(web: Web, api: Api, page: Any) -> None:
    ex = expect()
    n = rng.randrange(10**4, 10**5)
    page.goto(f"{web.url}/?n={n}")  # the Fibonacci server's URL: submit, then the job page
    page.wait_for_url(JOB_PATH)
    jid = job_id(page)
    ex(page.locator("#job-status")).to_have_text("finished")
    assert page.locator("h1").text_content() == f"F({n:,})"

    page.click("#run-again")
    page.wait_for_url(re.compile(rf"/\?again={jid}#fibonacci-title$"))
    assert page.input_value("#fibonacci-n") == str(n)
    ex(page.locator("#again-notice")).to_contain_text(jid)
    shot(page, "home-run-again")
    page.click("#fibonacci-form button[type=submit]")
    page.wait_for_url(JOB_PATH)
    ex(page.locator("#job-status")).to_have_text("finished")

    page.goto(web.url + "/jobs")
    page.fill("#search-id", "  " + jid.upper() + " ")
    page.click(".search button")
    page.wait_for_url(f"{web.url}/jobs/{jid}")
    page.goto(web.url + "/jobs")
    page.fill("#search-id", "0" * 32)
    page.click(".search button")
    ex(page.locator("#search-id-error")).to_contain_text("No job has the id")
    ex(page.locator("#job-list table")).to_be_visible()
    assert page.get_attribute("#search-id", "aria-invalid") == "true"

    page.goto(f"{web.url}/jobs/{jid}")
    page.click("form[data-action=delete] button")
    page.wait_for_url(re.compile(rf"/jobs\?deleted={jid}$"))
    ex(page.locator("#deleted-notice")).to_contain_text(jid)
    assert api.get(f"/api/v1/jobs/{jid}").status_code == 404
    shot(page, "jobs-page-deleted")


def test_csv_result_reads_as_lists_and_progress_says_bytes(web: Web, page: Any) -> None:
    ex = expect()
    page.goto(web.url + "/")
    page.set_input_files("#csv-file", str(ROOT / "examples" / "sales.csv"))
    page.fill("#csv-date_column", "date")
    page.fill("#csv-from", "2024-01-01")
    page.fill("#csv-till", "2024-03-31")
    page.fill("#csv-sort_by", "amount")
    page.click("#csv-form button[type=submit]")
    page.wait_for_url(JOB_PATH)
    ex(page.locator("#job-status")).to_have_text("finished")
    ex(page.locator("#result-summary")).to_contain_text("9 rows kept, sorted as numbers")
    assert page.locator("#result-columns li").all_text_contents() == ["date", "region", "product", "amount"]
    ex(page.locator("#result-skipped")).to_contain_text("row 14: unknown")
    ex(page.locator("#job-done")).to_contain_text("bytes")
    assert "{" not in page.locator("#result-summary").text_content(), "no raw JSON"
    shot(page, "job-page-csv")


def test_home_forms_sit_two_by_two_with_clear_placeholders_and_date_hints(web: Web, page: Any) -> None:
    page.goto(web.url + "/")
    boxes = [page.locator(f"#{t}-form").locator("xpath=..").bounding_box()
             for t in ("primes", "fibonacci", "sort", "csv")]
    assert boxes[0]["y"] == boxes[1]["y"] and boxes[2]["y"] == boxes[3]["y"], "two rows"
    assert boxes[0]["x"] == boxes[2]["x"] and boxes[1]["x"] == boxes[3]["x"], "two columns, no empty cell"
    for sel in ("#primes-start", "#primes-end", "#fibonacci-n", "#sort-numbers"):
        assert page.get_attribute(sel, "placeholder").startswith("e.g. ")
        assert page.eval_on_selector(sel, "e => getComputedStyle(e, '::placeholder').fontStyle") == "italic"
    for sel in ("#csv-from", "#csv-till"):
        assert page.get_attribute(sel, "type") == "date"
        hint = page.locator(f"{sel}-hint").text_content()
        assert "YYYY" not in hint, "the hint names no format the date field may not show"
    shot(page, "home-page")


def test_rq_and_crunch_pages_link_both_ways(web: Web, page: Any) -> None:
    ex = expect()
    page.goto(web.url + "/jobs")
    page.click("nav >> text=RQ dashboard")
    page.wait_for_url(web.url + "/rq/")
    ex(page.locator(".crunch-banner")).to_contain_text("fast")
    shot(page, "rq-dashboard-banner")
    page.click(".crunch-banner >> text=Queues and workers")
    page.wait_for_url(web.url + "/queues")


def test_every_page_passes_axe_with_no_serious_or_critical_violation(web: Web, api: Api, browser: Any) -> None:
    fib = submit(api, "fibonacci", {"n": rng.randrange(10**4, 10**5)}, headers={"Prefer": "wait=20"})
    with open(ROOT / "examples" / "sales.csv", "rb") as f:
        csv_job = api.post("/api/v1/csv", files={"file": f}, data={"date_column": "date", "sort_by": "amount"},
                           headers={"Prefer": "wait=20"}).json()
    lo, hi = fresh_range(6 * 10**10)
    running = submit(api, "primes", {"start": lo, "end": hi, "output": "count"})
    pages = {
        "home": "/", "jobs": "/jobs", "queues": "/queues", "job-fibonacci": f"/jobs/{fib['id']}",
        "job-csv": f"/jobs/{csv_job['id']}", "job-running": f"/jobs/{running['id']}",
        "home-run-again": f"/?again={fib['id']}", "jobs-search-miss": "/jobs?id=nothing",
        "home-form-errors": "/primes?start=9&end=1", "not-found": "/jobs/" + "0" * 32,
    }
    # axe is injected as an inline script: this context alone bypasses the pages' CSP to run it.
    ctx = browser.new_context(viewport={"width": 1200, "height": 900}, bypass_csp=True)
    report = []
    try:
        pg = ctx.new_page()
        for name, path in pages.items():
            pg.goto(web.url + path)
            if name == "queues":
                wait_js(pg, "window.crunchOps && window.crunchOps.drawn")
            pg.add_script_tag(path=str(AXE))
            result = pg.evaluate("axe.run(document, {resultTypes: ['violations']})")
            bad = [(v["id"], v["impact"], len(v["nodes"]), v["nodes"][0]["target"]) for v in result["violations"]
                   if v["impact"] in ("serious", "critical")]
            report.append(f"{name:18} {len(result['violations'])} violations, {len(bad)} serious or critical")
            assert not bad, f"{path}: {bad}"
            shot(pg, f"axe-{name}")
    finally:
        ctx.close()
        api.post(f"/api/v1/jobs/{running['id']}/cancel")
    print("\naxe-core 4.14.1:\n" + "\n".join(report))


def test_without_javascript_the_operations_and_list_pages_still_show_everything(web: Web, browser: Any) -> None:
    ex = expect()
    ctx = browser.new_context(java_script_enabled=False)
    try:
        page = ctx.new_page()
        page.goto(web.url + "/queues")
        ex(page.locator("#queue-table tr[data-queue=default]")).to_be_visible()
        assert page.locator("noscript meta[http-equiv=refresh]").count() == 1, "reloads itself every 10 s"
        assert "The charts need JavaScript" in page.content()
        page.goto(web.url + "/jobs")
        stamp = page.locator("#job-list time").first
        if stamp.count():
            assert stamp.text_content().endswith(" UTC"), "without JavaScript times say they are UTC"
    finally:
        ctx.close()
