"""The `crunch` command line client, run as a real subprocess against a real gunicorn and real workers."""

from __future__ import annotations

import json
import queue
import random
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from client.http import Backoff, GaveUp, MultipartBody, Unavailable
from infra.embedded_redis import free_port
from infra.processes import ROOT, Api, Web
from tests.conftest import fib_reference
from tests.ranges import fresh_range

pytestmark = pytest.mark.e2e
rng = random.Random()

#: pi(10**11), the number of primes up to 10^11: a count that takes the sieve several seconds.
PI_1E11 = 4_118_054_813


def crunch(web: Web, *args: str, timeout: float = 60, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "client", "--url", web.url, *args], cwd=ROOT, text=True,
                          capture_output=True, timeout=timeout, input=stdin)


def small_primes(lo: int, hi: int) -> list[int]:
    sieve = bytearray([1]) * (hi + 1)
    sieve[:2] = b"\0\0"
    for i in range(2, int(hi**0.5) + 1):
        if sieve[i]:
            sieve[i * i::i] = bytearray(len(range(i * i, hi + 1, i)))
    return [i for i in range(lo, hi + 1) if sieve[i]]


def job_status(web: Web, job_id: str) -> dict:
    out = crunch(web, "status", job_id, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def wait_status(web: Web, job_id: str, pred, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = job_status(web, job_id)
        if pred(job):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.2)


def test_backoff_doubles_to_its_cap_and_gives_up_after_the_outage_budget() -> None:
    now = [0.0]
    slept: list[float] = []
    notices: list[tuple[str, float]] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    b = Backoff(20, on_retry=lambda r, d: notices.append((r, d)), sleep=sleep, clock=lambda: now[0])
    calls = iter([Unavailable("connection refused")] * 3 + ["ok"])

    def flaky() -> str:
        x = next(calls)
        if isinstance(x, Exception):
            raise x
        return x

    assert b.call(flaky) == "ok" and slept == [0.5, 1.0, 2.0]
    assert notices[0] == ("connection refused", 0.5)
    assert b.down_since is None, "a success ends the outage and resets the delay"
    slept.clear()
    with pytest.raises(GaveUp):
        b.call(lambda: (_ for _ in ()).throw(Unavailable("connection refused")))
    assert slept[:5] == [0.5, 1.0, 2.0, 4.0, 5.0] and max(slept) == 5.0 and sum(slept) == 20


def test_multipart_body_streams_with_a_known_length(tmp_path: Path) -> None:
    f = tmp_path / "n.txt"
    f.write_bytes(b"3 1 2\n" * 10_000)
    body = MultipartBody([("descending", "true")], [("file", f, "n.txt")])
    data = b"".join(iter(lambda: body.read(777), b""))
    assert len(data) == len(body) and b"\r\n\r\n" + f.read_bytes() + b"\r\n--" in data
    assert b'name="descending"\r\n\r\ntrue\r\n' in data


def test_primes_fib_and_sort_print_their_results(web: Web, tmp_path: Path) -> None:
    # The submit waits up to 30 s (the server's cap), not the default 1 s: at load 10-20 even this
    # trivial job took up to 12 s from queue to end, and the property is about a job that ends in time.
    out = crunch(web, "primes", "1", "100", "--submit-wait", "30")
    assert out.returncode == 0, out.stderr
    assert [int(x) for x in out.stdout.split()] == small_primes(1, 100)
    assert out.stderr == "", "a job that ends within the submit draws no progress"
    out = crunch(web, "primes", "1", "100", "--submit-wait", "31")
    assert out.returncode == 2 and "from 0 to 30" in out.stderr, out.stderr

    lo = rng.randrange(10**6, 10**7)
    out = crunch(web, "primes", str(lo), str(lo + 1000), "--count")
    assert out.returncode == 0 and out.stdout == f"{len(small_primes(lo, lo + 1000))}\n", out.stderr

    n = rng.randrange(1000, 2000)
    out = crunch(web, "fib", str(n))
    assert out.returncode == 0 and out.stdout == f"{fib_reference(n)}\n", out.stderr

    big = 123456789012345678901234567890123
    out = crunch(web, "sort", "3", "1.5", str(big), "2,0", "--", "-7")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["-7", "0", "1.5", "2", "3", str(big)], "ints exact, floats stay floats"

    numbers = tmp_path / "numbers.txt"
    values = [rng.randrange(-10**6, 10**6) for _ in range(500)]
    numbers.write_text("\n".join(map(str, values)))
    out = crunch(web, "sort", "--file", str(numbers), "--desc")
    assert out.returncode == 0, out.stderr
    assert [int(x) for x in out.stdout.split()] == sorted(values, reverse=True)

    out = crunch(web, "sort", "--file", "-", stdin="10, 9.5\n-1e3 8")
    assert out.returncode == 0 and out.stdout.split() == ["-1000.0", "8", "9.5", "10"], out


def test_json_output_is_machine_readable(web: Web) -> None:
    n = rng.randrange(2000, 3000)
    out = crunch(web, "fib", str(n), "--json")
    assert out.returncode == 0, out.stderr
    job = json.loads(out.stdout)
    assert job["status"] == "finished" and job["result"]["value"] == str(fib_reference(n))

    out = crunch(web, "--json", "primes", "0", "30")
    assert json.loads(out.stdout)["result"] == small_primes(0, 30), "--json before the command works too"

    out = crunch(web, "jobs", "--type", "fibonacci", "--limit", "3", "--json")
    listed = json.loads(out.stdout)
    assert out.returncode == 0 and job["id"] in [j["id"] for j in listed["jobs"]]
    assert 1 <= len(listed["jobs"]) <= 3


def test_no_wait_then_status_wait_result_file_and_jobs(web: Web, tmp_path: Path) -> None:
    hi = rng.randrange(200_000, 300_000)
    out = crunch(web, "primes", "0", str(hi), "--no-wait")
    job_id = out.stdout.strip()
    assert out.returncode == 0 and re.fullmatch(r"[0-9a-f]{32}", job_id), out

    expected = small_primes(0, hi)
    out = crunch(web, "wait", job_id, "-q")
    assert out.returncode == 0, out.stderr
    assert [int(x) for x in out.stdout.split()] == expected

    out = crunch(web, "status", job_id)
    assert out.returncode == 0 and "finished" in out.stdout and f"Primes in [0, {hi:,}]" in out.stdout, out.stdout

    out = crunch(web, "result", job_id, "--format", "csv", "-o", str(tmp_path / "primes.csv"))
    assert out.returncode == 0, out.stderr
    rows = (tmp_path / "primes.csv").read_text().splitlines()
    assert rows[0] == "prime" and [int(x) for x in rows[1:]] == expected
    assert not list(tmp_path.glob(".*.part")), "no partial file left behind"

    out = crunch(web, "result", job_id, "-o", str(tmp_path / "primes.json"))
    assert json.loads((tmp_path / "primes.json").read_text()) == expected, "format from the extension"

    out = crunch(web, "result", job_id, "--offset", "10", "--limit", "5")
    assert [int(x) for x in out.stdout.split()] == expected[10:15]

    out = crunch(web, "jobs", "--type", "primes", "--limit", "50")
    assert out.returncode == 0 and out.stdout.startswith("ID")
    assert any(line.startswith(job_id) and "finished" in line for line in out.stdout.splitlines())


def test_csv_filters_by_date_and_sorts(web: Web, tmp_path: Path) -> None:
    data = tmp_path / "sales.csv"
    data.write_text("day,amount,name\n2024-01-02,5,a\n2024-03-05,1,b\nnot a date,3,c\n2024-02-01,7,d\n")
    out = crunch(web, "csv", str(data), "--date-column", "day", "--from", "2024-01-01", "--till", "2024-02-28",
                 "--sort-by", "amount", "--desc", "-o", str(tmp_path / "kept.csv"))
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "kept.csv").read_text().splitlines() == ["day,amount,name", "2024-02-01,7,d", "2024-01-02,5,a"]
    assert "2 rows" in out.stderr and "1 skipped" in out.stderr, out.stderr

    out = crunch(web, "csv", str(data), "--date-column", "nope")
    assert out.returncode == 2 and "date_column" in out.stderr, out


def test_cancel_pause_resume_a_long_count_job(web: Web) -> None:
    lo, hi = fresh_range(30 * 10**9)
    out = crunch(web, "primes", str(lo), str(hi), "--count", "--no-wait")
    job_id = out.stdout.strip()
    assert out.returncode == 0 and job_id, out.stderr
    wait_status(web, job_id, lambda j: j["status"] == "started")

    out = crunch(web, "pause", job_id)
    assert out.returncode == 0 and out.stdout == f"job {job_id}: paused\n", out
    out = crunch(web, "status", job_id)
    assert re.search(r"^status\s+paused", out.stdout, re.M), out.stdout

    out = crunch(web, "resume", job_id)
    assert out.returncode == 0 and re.fullmatch(rf"job {job_id}: (queued|started)\n", out.stdout), out

    out = crunch(web, "cancel", job_id)
    assert out.returncode == 0 and out.stdout == f"job {job_id}: canceled\n", out

    out = crunch(web, "cancel", job_id)
    assert out.returncode == 1 and "409" in out.stderr and "canceled" in out.stderr, out
    out = crunch(web, "wait", job_id)
    assert out.returncode == 1 and "was canceled" in out.stderr, out
    out = crunch(web, "result", job_id)
    assert out.returncode == 1 and "no result" in out.stderr, out


def test_usage_and_validation_errors_exit_2_with_readable_messages(web: Web) -> None:
    out = crunch(web, "primes", "100", "1")
    assert out.returncode == 2, out
    assert "Validation failed (422)" in out.stderr and "end must be greater than or equal to start" in out.stderr

    out = crunch(web, "fib", "--", "-5")
    assert out.returncode == 2 and "\n  n: " in out.stderr, out.stderr

    out = crunch(web, "--json", "primes", "100", "1")
    assert out.returncode == 2 and json.loads(out.stdout)["errors"][0]["loc"][-1] == "end"

    out = crunch(web, "sort", "1", "two")
    assert out.returncode == 2 and "'two' is not a number" in out.stderr

    out = crunch(web, "primes", "1")
    assert out.returncode == 2 and "usage:" in out.stderr

    out = crunch(web, "status", "0" * 32)
    assert out.returncode == 1 and "404" in out.stderr, out


def test_gives_up_on_a_server_that_never_answers(web: Web) -> None:
    out = subprocess.run([sys.executable, "-m", "client", "--url", f"http://127.0.0.1:{free_port()}",
                          "--give-up", "1.5", "jobs"], cwd=ROOT, text=True, capture_output=True, timeout=30)
    assert out.returncode == 3, out
    assert "server unreachable (connection refused), retrying in 0.5 s" in out.stderr
    assert "gave up" in out.stderr


def test_waiting_survives_a_server_restart(web: Web, api: Api) -> None:
    """The CLI waits through a web restart: it retries with backoff, then follows the job again.

    The job is paused while the web restarts (a graceful gunicorn stop lets open event streams
    run for up to 10 s), so the restart falls inside the wait whatever the machine's speed.
    """
    lo = rng.randrange(2, 1000)
    expected = PI_1E11 - len(small_primes(0, lo - 1))
    proc = subprocess.Popen([sys.executable, "-m", "client", "--url", web.url, "primes", str(lo), str(10**11),
                             "--count"], cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines: queue.Queue[str] = queue.Queue()
    stderr: list[str] = []

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            stderr.append(line)
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    try:
        job_id = None
        deadline = time.monotonic() + 90
        while not job_id:  # the CLI announced the job (queued or started) and is waiting on it
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"the CLI never announced its job: {''.join(stderr)!r}") from None
            if m := re.search(r"job ([0-9a-f]{32})", line):
                job_id = m.group(1)
        assert api.post(f"/api/v1/jobs/{job_id}/pause").json()["status"] == "paused"
        web.stop()
        time.sleep(2)
        web.start(timeout=120)  # gunicorn's boot took tens of seconds at load 15
        assert api.post(f"/api/v1/jobs/{job_id}/resume").status_code == 202
        # The count to 10^11 takes several seconds idle and minutes' share of 2 busy CPUs: the bound is
        # generous (under the 300 s test timeout), the CLI reports as soon as the job ends.
        proc.wait(timeout=220)
        assert proc.stdout is not None
        stdout = proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    text = "".join(stderr)
    assert proc.returncode == 0, text
    assert stdout == f"{expected}\n"
    assert "server unreachable" in text and "retrying in" in text, text
    assert "server is back" in text, text
