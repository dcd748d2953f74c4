"""Fan-out end to end: a wide primes job runs as parts on both workers at once, and is still one job.

A real gunicorn and a real `worker.py` with two workers on their own Redis database. FANOUT_MIN_SECONDS
is 0.05 here, so lists of a few segments split too and the list checks stay quick; counts use known
values of pi(x) (OEIS A006880) and, for grid-aligned bounds, the sieve library run in this process
on the whole range at once (one run, no parts). MAX_PRIMES_END is 2^64 - 1, and jobs at the top of
the range are checked against Debian's `primesieve` (or, without it, a gmpy2.next_prime walk).
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gmpy2
import numpy as np
import orjson
import pytest
from redis import Redis
from rq.worker import Worker

from infra.processes import Api, Web, Workers
from jobs.types.primes import SEGMENT_SPAN, PrimesJob

WORKERS = 2
PI_1E10, PI_1E9 = 455_052_511, 50_847_534
PI_3E10 = 1_300_005_926  # `primesieve 0 3e10 -c` (Debian's primesieve 12)
S = SEGMENT_SPAN
TOP = 2**64 - 1  # MAX_PRIMES_END here, so the top of the 64-bit range splits too


@pytest.fixture(scope="module")
def stack(redis_url: str, log_dir: Path) -> Iterator[Api]:
    url = f"{redis_url.rpartition('/')[0]}/11"
    workers = Workers(url, log_dir, count=WORKERS, name="workers-fanout", HEARTBEAT_TIMEOUT=5,
                      MAX_PRIMES_END=TOP).start()
    web = Web(url, log_dir, FANOUT_MIN_SECONDS=0.05, MAX_PRIMES_END=TOP).start()
    api = Api(web.url)
    try:
        wait_for("the workers", lambda: len(api.get("/api/v1/workers").json()) >= WORKERS, 60)
        api.workers = workers  # type: ignore[attr-defined]
        yield api
    finally:
        web.stop()
        workers.stop()


@pytest.fixture(scope="module")
def conn(redis_url: str) -> Redis:
    return Redis.from_url(f"{redis_url.rpartition('/')[0]}/11")


def rq_run(conn: Redis, name: str) -> str | None:
    """The run rq's record of a worker says it executes ("<part id>-<run>")."""
    w = next((w for w in Worker.all(connection=conn) if w.name == name), None)
    return w.get_current_job_id() if w is not None else None


def wait_for(what: str, pred: Any, timeout: float = 120, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every)


def submit(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    r = api.post("/api/v1/primes", json=body)
    assert r.status_code in (200, 202), r.text
    return r.json()


def job(api: Api, job_id: str) -> dict[str, Any]:
    r = api.get(f"/api/v1/jobs/{job_id}")
    assert r.status_code == 200, r.text
    return r.json()


def done(api: Api, job_id: str, timeout: float = 240) -> dict[str, Any]:
    return wait_for(f"job {job_id} to finish",
                    lambda: (j := job(api, job_id))["status"] in ("finished", "failed", "canceled") and j, timeout, 0.3)


def reference_primes(lo: int, hi: int) -> np.ndarray:
    """The primes in [lo, hi] by a plain numpy sieve of Eratosthenes over the range (independent of the kernel)."""
    root = int(hi ** 0.5) + 1
    small = np.ones(root + 1, dtype=bool)
    small[:2] = False
    for i in range(2, int(root ** 0.5) + 1):
        if small[i]:
            small[i * i::i] = False
    mark = np.ones(hi - lo + 1, dtype=bool)
    for p in np.flatnonzero(small):
        first = max(p * p, -(-lo // p) * p)
        mark[first - lo::p] = False
    if lo < 2:
        mark[:2 - lo] = False
    return np.flatnonzero(mark) + lo


def all_result(api: Api, job_id: str) -> list[int]:
    r = api.get(f"/api/v1/jobs/{job_id}/result")
    assert r.status_code == 200, r.text
    body = r.json()
    return body["result"] if isinstance(body, dict) and "result" in body else body


def test_the_split_covers_the_range_on_the_segment_grid() -> None:
    import primes

    assert SEGMENT_SPAN == primes.SEGMENT_SPAN
    spec = PrimesJob()
    assert spec.split({"start": 0, "end": 10**6, "output": "count"}, 0.5, 64) == []  # trivial: whole
    rng = np.random.default_rng(15)
    for _ in range(200):
        start = int(rng.integers(0, 10**12))
        width = int(rng.choice([S - 1, S, 5 * S, 10**10, 2 * 10**11, int(rng.integers(1, 10**11))]))
        params = {"start": start, "end": start + width, "output": "count"}
        parts = spec.split(params, 0.5, 64)
        if width >= 10**10:
            assert len(parts) >= 4  # a 10^10-wide count splits
        if not parts:
            continue
        assert parts[0][0] == start and parts[-1][1] == start + width and len(parts) <= 64
        for (_, hi), (lo, _) in itertools.pairwise(parts):
            assert hi + 1 == lo and lo % S == 0


def test_a_split_count_equals_pi_and_runs_on_both_workers(stack: Api) -> None:
    j = submit(stack, {"start": 0, "end": 10**10, "output": "count"})
    seen: set[str] = set()

    def both_busy() -> bool:
        busy = [w for w in stack.get("/api/v1/workers").json() if w.get("current_job")]
        seen.update(w["name"] for w in busy)
        return len(busy) >= WORKERS

    wait_for("both workers busy with parts of the job", both_busy, 120, 0.05)
    mid = wait_for("the job started", lambda: (m := job(stack, j["id"]))["status"] in ("started", "finished") and m,
                   60)
    assert mid["progress"]["total"] == 10**10 + 1
    got = done(stack, j["id"])
    assert got["status"] == "finished", got
    assert got["result"] == {"count": PI_1E10}
    assert got["progress"]["percent"] == 100.0
    assert got["stats"]["parts"] >= 4
    print(f"\nsplit count of [0, 10^10]: {got['stats']['parts']} parts, {got['duration_ms']:.0f} ms of work, "
          f"workers seen busy: {len(seen)}")


def test_split_counts_with_bounds_on_part_boundaries(stack: Api) -> None:
    import primes

    for lo, hi in ((3 * S, 40 * S - 1), (3 * S + 1, 40 * S), (10**9, 10**9 + 37 * S)):
        parts = PrimesJob().split({"start": lo, "end": hi, "output": "count"}, 0.05, 64)
        assert len(parts) >= 2
        got = done(stack, submit(stack, {"start": lo, "end": hi, "output": "count"})["id"])
        assert got["status"] == "finished", got
        assert got["result"]["count"] == primes.count_primes(lo, hi), (lo, hi)
    got = done(stack, submit(stack, {"start": 10**9, "end": 10**10, "output": "count"})["id"])
    assert got["result"]["count"] == PI_1E10 - PI_1E9


def test_a_split_list_equals_a_plain_sieve_and_pages_exactly(stack: Api) -> None:
    lo, hi = 2 * S, 5 * S - 1  # bounds on the grid: three one-segment parts
    assert len(PrimesJob().split({"start": lo, "end": hi, "output": "list"}, 0.05, 64)) >= 2
    want = reference_primes(lo, hi)
    got = done(stack, submit(stack, {"start": lo, "end": hi, "output": "list"})["id"])
    assert got["status"] == "finished", got
    assert got["result_inline"] is False
    result = all_result(stack, got["id"])
    assert len(result) == len(want) and result == want.tolist()
    # A page straddling the first part boundary.
    first = int(np.searchsorted(want, 3 * S)) - 5
    r = stack.get(f"/api/v1/jobs/{got['id']}/result?offset={first}&limit=10")
    assert r.status_code == 200, r.text
    page = r.json()
    items = page["result"] if isinstance(page, dict) else page
    assert items == want[first:first + 10].tolist()
    # Off the grid too.
    lo2, hi2 = 7 * S + 12345, 9 * S + 777
    got2 = done(stack, submit(stack, {"start": lo2, "end": hi2, "output": "list"})["id"])
    assert all_result(stack, got2["id"]) == reference_primes(lo2, hi2).tolist()


def test_pause_resume_and_cancel_of_a_split_job(stack: Api) -> None:
    start = 3 * 10**11
    j = submit(stack, {"start": start, "end": start + 4 * 10**10, "output": "count"})
    wait_for("a part to start", lambda: job(stack, j["id"])["status"] == "started", 120)
    r = stack.post(f"/api/v1/jobs/{j['id']}/pause")
    assert r.status_code == 200, r.text
    wait_for("the job paused", lambda: job(stack, j["id"])["status"] == "paused", 30)
    wait_for("no worker on it", lambda: not any(w.get("current_job") for w in stack.get("/api/v1/workers").json()),
             60, 0.2)
    before = job(stack, j["id"])["progress"]["done"]
    time.sleep(1.0)
    assert job(stack, j["id"])["progress"]["done"] == before  # nothing runs while paused
    r = stack.post(f"/api/v1/jobs/{j['id']}/resume")
    assert r.status_code in (200, 202), r.text
    wait_for("the job running again", lambda: job(stack, j["id"])["status"] == "started", 60)
    wait_for("progress past the pause", lambda: job(stack, j["id"])["progress"]["done"] > before, 60)
    r = stack.post(f"/api/v1/jobs/{j['id']}/cancel")
    assert r.status_code == 200, r.text
    assert wait_for("canceled", lambda: job(stack, j["id"])["status"] == "canceled", 30)
    wait_for("every part stopped", lambda: not any(w.get("current_job") for w in stack.get("/api/v1/workers").json()),
             60, 0.2)


def _horses_on(api: Api, conn: Redis, job_id: str) -> list[tuple[int, str]]:
    """The work horses (pid) running a part of the job, with the part's id."""
    got = []
    for w in api.get("/api/v1/workers").json():
        run = rq_run(conn, w["name"]) if w.get("current_job") == job_id else None
        if run:
            worker = int(w["name"].rsplit(".", 1)[1])
            got += [(int(p), run.rsplit("-", 1)[0]) for p in os.popen(f"pgrep -P {worker}").read().split()]
    return got


def test_a_split_job_retried_while_its_parts_still_stop_finishes(stack: Api, conn: Redis) -> None:
    """Cancel a split count while its parts run and retry it before they have stopped: it finishes with the
    right count. A running part stops on a cancel only at its next checkpoint, so for a moment after the
    cancel answers it still runs; here its work horse is held (SIGSTOP) across the cancel and the retry, so
    every round is in that moment whatever the machine's load. Before the fix the held part, let go, ended
    `canceled` under the retried job and failed it ("part [...]: canceled"). Each round counts a fresh range
    (stored segment counts would make a repeat too quick to catch running)."""
    width, caught = 10**10, 0
    for k in range(3):
        lo = 2 * 10**12 + k * 10**11
        jid = submit(stack, {"start": lo, "end": lo + width, "output": "count"})["id"]
        horses = wait_for("both workers on its parts", lambda jid=jid: len(h := _horses_on(stack, conn, jid)) >= WORKERS
                          and h, 120, 0.02)
        try:
            for pid, _ in horses:
                with contextlib.suppress(ProcessLookupError):  # its part just ended: not held
                    os.kill(pid, signal.SIGSTOP)
            held = [part for _, part in horses if job(stack, part)["status"] == "started"]
            r = stack.post(f"/api/v1/jobs/{jid}/cancel")
            assert r.status_code == 200 and r.json()["status"] == "canceled", r.text
            r = stack.post(f"/api/v1/jobs/{jid}/retry")
            assert r.status_code in (200, 202), r.text
            caught += bool(held) and all(job(stack, part)["status"] == "started" for part in held)
        finally:
            for pid, _ in horses:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
        got = done(stack, jid, 120)
        assert got["status"] == "finished", (k, got["status"], got["error"])
        want = int(subprocess.run(["primesieve", str(lo), str(lo + width), "-c", "-q"], capture_output=True,
                                  text=True, check=True, timeout=120).stdout)
        assert got["result"]["count"] == want, (lo, got["result"])
    # A part can end between the look at the workers and the SIGSTOP, but not in every round.
    assert caught >= 2, f"only {caught} of 3 rounds held a running part across the retry"


def _kill_worker_of_a_part(api: Api, conn: Redis, job_id: str) -> str:
    """SIGKILL a worker (and its work horse) that runs a part of the job; returns the part's id."""
    def running() -> tuple[str, str] | None:
        for w in api.get("/api/v1/workers").json():
            run = rq_run(conn, w["name"]) if w.get("current_job") == job_id else None
            part = job(api, run.rsplit("-", 1)[0]) if run else None
            if part and part["status"] == "started" and 5 < (part["progress"] or {}).get("percent", 0) < 50:
                return w["name"], run
        return None

    name, run = wait_for("a worker on a part", running, 120, 0.05)
    pid = int(name.rsplit(".", 1)[1])
    children = [int(p) for p in os.popen(f"pgrep -P {pid}").read().split()]
    for p in [pid, *children]:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return run.rsplit("-", 1)[0]


def test_a_worker_killed_while_it_runs_a_part_leaves_the_job_right(stack: Api, conn: Redis) -> None:
    j = submit(stack, {"start": 0, "end": 3 * 10**10, "output": "count"})
    wait_for("a part to start", lambda: job(stack, j["id"])["status"] == "started", 120)
    part = _kill_worker_of_a_part(stack, conn, j["id"])
    assert part != j["id"]
    got = done(stack, j["id"], 300)
    assert got["status"] == "finished", got
    assert got["result"]["count"] == PI_3E10
    lost = job(stack, part)  # a part is visible by its id: it ran again from its checkpoint
    assert lost["status"] == "finished" and lost["attempt"] >= 1 and lost["runs"] >= 2, lost


def count_small(lo: int, hi: int) -> int:
    return int(reference_primes(lo, hi).size)


def test_workers_list_shows_both_busy_with_one_split_job(stack: Api, conn: Redis) -> None:
    start = 5 * 10**11
    j = submit(stack, {"start": start, "end": start + 4 * 10**10, "output": "count"})
    try:
        def on_it() -> list[dict[str, Any]]:
            r = stack.get("/api/v1/workers")
            assert r.status_code == 200, r.text
            ws = [w for w in r.json() if w["current_job"] == j["id"]]
            return ws if len(ws) >= WORKERS else []
        ws = wait_for("both workers busy with the job", on_it, 120, 0.05)
        # Each runs its own part of it (rq's own record of the worker names the part's run).
        runs = {rq_run(conn, w["name"]) for w in ws}
        assert len(runs) == WORKERS and all(r and not r.startswith(j["id"]) for r in runs), runs
    finally:
        stack.post(f"/api/v1/jobs/{j['id']}/cancel")


def test_the_job_list_shows_a_split_jobs_summed_progress(stack: Api, conn: Redis) -> None:
    """GET /api/v1/jobs shows a split job as GET /api/v1/jobs/{id} does: its parts' progress summed and
    `started` while a part runs (its own stored hash keeps the 0 of its claim: no worker runs it)."""
    start = 7 * 10**11
    j = submit(stack, {"start": start, "end": start + 4 * 10**10, "output": "count"})
    try:
        def listed() -> dict[str, Any] | None:
            r = stack.get("/api/v1/jobs?type=primes&status=started&limit=50")
            assert r.status_code == 200, r.text
            row = next((x for x in r.json()["jobs"] if x["id"] == j["id"]), None)
            return row if row and row["progress"]["done"] > 0 else None

        row = wait_for("the job listed as started with progress", listed, 120, 0.1)
        stored = orjson.loads(conn.hget(f"crunch:job:{j['id']}", "progress") or b"{}")
        assert stored.get("done", 0) == 0, stored  # what the list showed before: the whole job's own field
        assert row["status"] == "started"
        assert row["progress"]["total"] == 4 * 10**10 + 1
        assert 0 < row["progress"]["done"] <= job(stack, j["id"])["progress"]["done"]
        assert row["progress"]["percent"] == round(100.0 * row["progress"]["done"] / (4 * 10**10 + 1), 2)
    finally:
        stack.post(f"/api/v1/jobs/{j['id']}/cancel")
    got = wait_for("canceled", lambda: (m := job(stack, j["id"]))["status"] == "canceled" and m, 30)
    r = stack.get("/api/v1/jobs?type=primes&limit=50")
    row = next(x for x in r.json()["jobs"] if x["id"] == j["id"])
    assert row["status"] == "canceled" and row["progress"] == got["progress"]


def independent_primes(lo: int, hi: int) -> list[int]:
    """The primes in [lo, hi] by Debian's primesieve CLI when installed, else by walking gmpy2.next_prime
    (GMP's BPSW test: no known counterexample below 2^64, where it is proven exact); neither is our sieve."""
    exe = shutil.which("primesieve")
    if exe is not None:
        out = subprocess.run([exe, str(lo), str(hi), "--print"], capture_output=True, text=True, check=True,
                             timeout=300).stdout
        return [int(x) for x in out.split()]
    got, p = [], int(gmpy2.next_prime(lo - 1)) if lo > 0 else 2
    while p <= hi:
        got.append(p)
        p = int(gmpy2.next_prime(p))
    return got


def test_split_jobs_at_the_top_of_the_64_bit_range(stack: Api) -> None:
    """A count and a list ending at 2^64 - 1 split into parts; their results equal an independent sieve's,
    and every integer in params, result and pages is exact (JSON integers up to 2^64 - 1)."""
    lo, hi = TOP - 5 * S - 12345, TOP  # off the grid at the start, the last integer at the end
    parts = PrimesJob().split({"start": lo, "end": hi, "output": "count"}, 0.05, 64)
    assert len(parts) >= 2 and parts[-1][1] == TOP  # 2: each part sets up the 2e8 sieving primes below 2^32
    want = independent_primes(lo, hi)
    got = done(stack, submit(stack, {"start": lo, "end": hi, "output": "count"})["id"], 600)
    assert got["status"] == "finished", got
    assert got["stats"]["parts"] == len(parts)
    assert got["params"] == {"start": lo, "end": hi, "output": "count"}
    assert got["result"] == {"count": len(want)}
    # A list over the top two segments and a bit.
    llo = TOP - 2 * S - 777
    lparts = PrimesJob().split({"start": llo, "end": TOP, "output": "list"}, 0.05, 64)
    assert len(lparts) >= 2
    got = done(stack, submit(stack, {"start": llo, "end": TOP, "output": "list"})["id"], 600)
    assert got["status"] == "finished", got
    assert got["stats"]["parts"] == len(lparts)
    lwant = [p for p in want if p >= llo]
    r = stack.get(f"/api/v1/jobs/{got['id']}/result")
    assert r.status_code == 200, r.text
    assert int(r.headers["X-Total-Count"]) == len(lwant)
    body = orjson.loads(r.content)  # orjson: exact integers up to 2^64 - 1
    assert (body["result"] if isinstance(body, dict) else body) == lwant
    # Pages across each part boundary, and the last page ending at the largest prime below 2^64.
    for _, bound in lparts[:-1]:
        at = bisect.bisect_right(lwant, bound) - 3
        r = stack.get(f"/api/v1/jobs/{got['id']}/result?offset={at}&limit=6")
        page = orjson.loads(r.content)
        assert (page["result"] if isinstance(page, dict) else page) == lwant[at:at + 6]
    assert lwant[-1] == 2**64 - 59  # the largest prime below 2^64


def test_a_wide_batch_item_splits_as_its_own_post_would(stack: Api) -> None:
    """POST /api/v1/batches submits each item "exactly as its own POST would": a wide count splits into
    parts on both workers, a small one runs whole; the batch counts the whole job, not its parts."""
    lo, hi = 10**9 + 1, 10**10  # not a range another test submits: this one must be created by the batch
    body = {"jobs": [{"type": "primes", "params": {"start": lo, "end": hi, "output": "count"}},
                     {"type": "primes", "params": {"start": 0, "end": 10**6, "output": "count"}}]}
    r = stack.post("/api/v1/batches", json=body)
    assert r.status_code in (200, 202), r.text
    batch = r.json()
    assert batch["total"] == 2
    ids = [j["id"] for j in stack.get(f"/api/v1/batches/{batch['id']}/jobs").json()["jobs"]]
    wide, small = (done(stack, i) for i in ids)
    assert wide["status"] == small["status"] == "finished", (wide, small)
    assert wide["result"] == {"count": PI_1E10 - PI_1E9}
    assert wide["stats"]["parts"] == len(PrimesJob().split(body["jobs"][0]["params"], 0.05, 64)) >= 4
    assert small["result"] == {"count": 78_498} and "parts" not in (small["stats"] or {})
    b = wait_for("the batch finished", lambda: (x := stack.get(f"/api/v1/batches/{batch['id']}").json())["status"]
                 == "finished" and x, 30)
    assert b["counts"]["finished"] == 2 and sum(b["counts"].values()) == 2, b  # parts are not items


def test_canceling_a_batch_stops_every_part_of_its_split_item(stack: Api) -> None:
    start = 9 * 10**11
    body = {"jobs": [{"type": "primes", "params": {"start": start, "end": start + 4 * 10**10, "output": "count"}}]}
    r = stack.post("/api/v1/batches", json=body)
    assert r.status_code == 202, r.text
    batch = r.json()
    job_id = stack.get(f"/api/v1/batches/{batch['id']}/jobs").json()["jobs"][0]["id"]
    wait_for("both workers on the item's parts",
             lambda: sum(w["current_job"] == job_id for w in stack.get("/api/v1/workers").json()) >= WORKERS, 120, 0.05)
    # A split job reads `queued` in the moment no part runs (a worker between two parts): poll for it.
    listed = wait_for("the item listed as started", lambda: (x := stack.get(
        f"/api/v1/batches/{batch['id']}/jobs").json()["jobs"][0])["status"] == "started" and x, 30, 0.05)
    assert listed["progress"]["total"] == 4 * 10**10 + 1
    r = stack.post(f"/api/v1/batches/{batch['id']}/cancel")
    assert r.status_code == 200, r.text
    assert wait_for("the item canceled", lambda: job(stack, job_id)["status"] == "canceled", 30)
    wait_for("every part stopped", lambda: not any(w.get("current_job") for w in stack.get("/api/v1/workers").json()),
             60, 0.2)
    b = wait_for("the batch finished", lambda: (x := stack.get(f"/api/v1/batches/{batch['id']}").json())["status"]
                 == "finished" and x, 30)
    assert b["counts"]["canceled"] == 1, b


def test_a_split_lists_copy_goes_in_bounded_steps_and_a_copy_that_lost_the_race_leaves_nothing(
        redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The parts' results are copied a few chunks per script (COPY_STEP) into the copy's own scratch lists,
    then swapped in at once: the whole job's lists are the parts' in order, and no scratch list is left. A
    copy that finds the whole job ended (another settle finished it) stops and drops its lists. In-process,
    on a database no worker serves."""
    import types
    import uuid

    from jobs.settings import Settings
    from jobs.store import fanout
    from jobs.store.keys import JOB_KEY, RESULT_CHUNKS_KEY, RESULT_COUNTS_KEY
    from jobs.store.lifecycle import Lifecycle
    from jobs.store.request_cache import request_cache_for

    conn = Redis.from_url(f"{redis_url.rpartition('/')[0]}/8")
    conn.flushdb()
    monkeypatch.setattr(fanout, "COPY_STEP", 2)
    fan = fanout.Fanout(Lifecycle(conn, request_cache_for(conn), Settings()))
    whole = types.SimpleNamespace(id=uuid.uuid4().hex)
    parts = [types.SimpleNamespace(id=uuid.uuid4().hex) for _ in range(3)]
    sizes = (5, 0, 2)  # chunks per part: two full steps and a short one, none, one full step and an empty one
    for p, size in zip(parts, sizes, strict=True):
        for k in range(size):
            conn.rpush(RESULT_CHUNKS_KEY.format(id=p.id), f"{p.id}:{k}")
            conn.rpush(RESULT_COUNTS_KEY.format(id=p.id), k)
    try:
        conn.hset(JOB_KEY.format(id=whole.id), "status", "started")
        conn.rpush(RESULT_CHUNKS_KEY.format(id=whole.id), "stale")  # an earlier, cut-short settle's leftovers
        assert fan.copy_parts(whole, parts)
        want = [f"{p.id}:{k}" for p, size in zip(parts, sizes, strict=True) for k in range(size)]
        assert [c.decode() for c in conn.lrange(RESULT_CHUNKS_KEY.format(id=whole.id), 0, -1)] == want
        assert [int(c) for c in conn.lrange(RESULT_COUNTS_KEY.format(id=whole.id), 0, -1)] == [
            k for size in sizes for k in range(size)]
        assert conn.ttl(RESULT_CHUNKS_KEY.format(id=whole.id)) == -1
        assert not list(conn.scan_iter(f"*:job:{whole.id}:copy:*"))
        conn.hset(JOB_KEY.format(id=whole.id), "status", "finished")  # another settle's finish came first
        assert not fan.copy_parts(whole, parts)
        assert not list(conn.scan_iter(f"*:job:{whole.id}:copy:*"))
        assert conn.llen(RESULT_CHUNKS_KEY.format(id=whole.id)) == len(want)
    finally:
        conn.flushdb()
