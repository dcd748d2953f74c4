"""The README's quick start, followed literally from a fresh clone: `make run`, then every curl line.

The repository at HEAD is cloned into a temporary directory (so only committed files count,
examples/ included), `make run` starts there on free ports with its own DATA_DIR, and each
command of the README's "Quick start with curl" block runs in bash from the clone's root,
exactly as written except that `localhost:5000` becomes the test's port. Every command must
have a check below, so a line added to the README without one fails here.

The clone reuses this checkout's virtualenv instead of installing again (`make -o` marks the
install step done): the code that runs is the clone's, since `python -m` and `python worker.py`
put the clone's root first on sys.path. `make test`, the other line of "Two commands", is this
suite itself and is not run from inside it.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from infra.embedded_redis import free_port
from infra.processes import ROOT

pytestmark = pytest.mark.e2e

VENV = Path(sys.executable).parent.parent
ID = re.compile(r"^[0-9a-f]{32}$")
HEX_ID = re.compile(r"/api/v1/jobs/([0-9a-f]{32})")


def sh_block(readme: str, heading: str) -> str:
    section = readme[readme.index(heading):]
    return re.search(r"```sh\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]


def commands(block: str, quoted: bool = False) -> list[str]:
    """Logical command lines: continuations joined, comments and blank lines dropped. quoted: a line inside an
    open single-quoted string (a JSON body over several lines, as bash reads it when pasted) continues the
    command too."""
    out, pending = [], ""
    for line in block.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1]
            continue
        pending += line
        if quoted and pending.count("'") % 2:
            pending += "\n"
            continue
        out.append(pending.strip())
        pending = ""
    assert not pending, f"an unterminated command: {pending!r}"
    return out


class Clone:
    def __init__(self, tmp: Path) -> None:
        self.dir = tmp / "crunch"
        subprocess.run(["git", "clone", "--quiet", str(ROOT), str(self.dir)], check=True, timeout=120)
        self.port, self.redis_port = free_port(), free_port()
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith("PYTEST") and k not in ("REDIS_URL", "HOST", "PORT", "REDIS_PORT")}
        # WEBHOOK_ALLOW_PRIVATE: the README's webhook examples are sent to a receiver on 127.0.0.1 here.
        self.env.update({"PORT": str(self.port), "REDIS_PORT": str(self.redis_port), "WORKERS": "2",
                         "WEB_PROCESSES": "1", "WEB_THREADS": "32", "PYTHONUNBUFFERED": "1",
                         "WEBHOOK_ALLOW_PRIVATE": "1"})
        self.log = tmp / "make-run.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def make_run(self) -> None:
        """`make run`, with the install step marked done (the virtualenv is this checkout's)."""
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(["make", "-o", f"{VENV}/.run-deps", "run", f"VENV={VENV}"], cwd=self.dir,
                                         env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                r = requests.get(f"http://127.0.0.1:{self.port}/readyz", timeout=2)
                if r.status_code == 200 and r.json()["workers"] >= 2:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise AssertionError(f"make run did not come up:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clone]:
    c = Clone(tmp_path_factory.mktemp("quickstart"))
    c.make_run()
    yield c
    c.stop()


class Shell:
    """Runs README lines one at a time, keeping the shell functions and `$id` between them."""

    def __init__(self, clone: Clone) -> None:
        self.clone = clone
        self.prelude: list[str] = []
        self.id = ""

    def run(self, command: str) -> tuple[int, str, str]:
        line = command.replace("localhost:5000", f"127.0.0.1:{self.clone.port}")
        if re.match(r"^(\w+\(\) \{|\. )", line):  # a definition or `. activate`: kept for the next lines
            self.prelude.append(line)
        script = "\n".join([*self.prelude, f"id={self.id}" if self.id else "", line,
                            'rc=$?; printf "\\n@@id=%s@@rc=%s" "$id" "$rc"'])
        done = subprocess.run(["bash", "-c", script], cwd=self.clone.dir, env=self.clone.env, capture_output=True,
                              text=True, timeout=120)
        out, _, tail = done.stdout.rpartition("\n@@id=")
        new_id, _, rc = tail.partition("@@rc=")
        self.id = new_id
        return int(rc), out, done.stderr


def job(out: str) -> dict[str, Any]:
    return json.loads(out)


def api(clone: Clone, path: str) -> requests.Response:
    return requests.get(f"http://127.0.0.1:{clone.port}{path}", timeout=60)


def test_the_quick_start_works_from_a_fresh_clone(clone: Clone) -> None:
    readme = (clone.dir / "README.md").read_text()
    assert sh_block(readme, "## Two commands").splitlines()[0].startswith("make run"), "make run comes first"
    lines = commands(sh_block(readme, "## Quick start with curl"))
    shell = Shell(clone)
    seen_ids: list[str] = []

    def expect_id(out: str, sh: Shell) -> None:
        assert ID.match(sh.id), f"the snippet captured a real job id, got {sh.id!r}"
        seen_ids.append(sh.id)

    def check_fib_headers(out: str, sh: Shell) -> None:
        status = out.splitlines()[0]
        assert re.match(r"HTTP/1\.1 (202|200)", status), out[:300]
        if "202" in status:
            assert HEX_ID.search(out) and "Retry-After:" in out

    def check_job(out: str, sh: Shell) -> None:
        j = job(out)
        assert j["id"] == sh.id and j["type"] == "fibonacci"
        assert j["result_inline"] is (True if j["status"] == "finished" else None)

    def check_long_poll(out: str, sh: Shell) -> None:
        j = job(out)
        assert j["status"] == "finished" and j["result"]["value"] == "354224848179261915075"
        assert j["result_inline"] is True

    def check_fib_1000(out: str, sh: Shell) -> None:
        j = job(out)
        assert j["status"] == "finished" and j["result"]["digits"] == 209

    def check_primes_100(out: str, sh: Shell) -> None:
        assert job(out)["result"][:5] == [2, 3, 5, 7, 11] and len(job(out)["result"]) == 25

    def check_primes_count(out: str, sh: Shell) -> None:
        assert job(out)["result"] == {"count": 50847534}

    def check_sort_json(out: str, sh: Shell) -> None:
        j = job(out)
        assert j["status"] in ("queued", "started", "finished")
        done = api(clone, f"/api/v1/jobs/{j['id']}?wait=30").json()
        assert done["result"] == [123456789012345678901234567890, 3, 2.5, 1]

    def check_sort_file(out: str, sh: Shell) -> None:
        assert job(out)["result"] == [-17, -3, 0.125, 2.5, 3, 7, 8, 19, 42, 1000000000000000000000000000001]

    def check_csv(out: str, sh: Shell) -> None:
        expect_id(out, sh)
        j = api(clone, f"/api/v1/jobs/{sh.id}").json()
        assert j["status"] == "finished" and j["result"]["rows"] == 9 and j["result"]["skipped"] == 1

    def check_csv_download(out: str, sh: Shell) -> None:
        saved = clone.dir / f"csv-{sh.id}.csv"
        rows = list(csv.reader(io.StringIO(saved.read_text())))
        assert rows[0] == ["date", "region", "product", "amount"] and len(rows) == 10
        amounts = [float(r[3]) for r in rows[1:]]
        assert amounts == sorted(amounts, reverse=True) and all("2024-01-01" <= r[0] <= "2024-03-31" for r in rows[1:])

    def check_big_primes(out: str, sh: Shell) -> None:
        expect_id(out, sh)
        j = api(clone, f"/api/v1/jobs/{sh.id}").json()
        assert j["status"] == "finished" and j["result"] is None, "78,498 primes are not inlined"
        assert j["result_inline"] is False, "and the resource says so"

    def check_page(out: str, sh: Shell) -> None:
        page = json.loads(out)
        assert len(page) == 100 and page[0] == 7927, page[:3]  # the 1001st prime

    def check_primes_csv(out: str, sh: Shell) -> None:
        lines = (clone.dir / "primes.csv").read_text().split()
        assert len(lines) >= 78498 and "999983" in lines[-3:]

    def check_long_job(out: str, sh: Shell) -> None:
        expect_id(out, sh)

    def check_pause(out: str, sh: Shell) -> None:
        assert job(out)["id"] == sh.id
        deadline = time.monotonic() + 10
        while api(clone, f"/api/v1/jobs/{sh.id}").json()["status"] != "paused":
            assert time.monotonic() < deadline, "paused within seconds"
            time.sleep(0.1)

    def check_resume(out: str, sh: Shell) -> None:
        assert job(out)["status"] in ("queued", "started")

    def check_events(out: str, sh: Shell) -> None:
        events = re.findall(r"^event: (\w+)", out, re.M)
        assert events and events[-1] == "status", out[-500:]
        last = json.loads(re.findall(r"^data: (.*)$", out, re.M)[-1])
        assert last["status"] == "finished" and last["result"] == {"count": 4118054813}

    def check_delete(out: str, sh: Shell) -> None:
        assert out.strip() == "204"
        assert api(clone, f"/api/v1/jobs/{sh.id}").status_code == 404

    def check_list(out: str, sh: Shell) -> None:
        jobs = job(out)["jobs"]
        assert jobs and all(j["type"] == "primes" and j["status"] == "finished" for j in jobs)

    def check_queues_workers(out: str, sh: Shell) -> None:
        queues_text, _, workers_text = out.partition("][")
        queues = json.loads(queues_text + "]")
        workers = json.loads("[" + workers_text)
        assert {q["name"] for q in queues} == {"fast", "default"}
        assert sum(q["finished"] for q in queues) >= 8 and len(workers) == 2

    checks: list[tuple[str, Callable[[str, Shell], None]]] = [
        (r"^jobid\(\) \{", lambda out, sh: None),  # a definition: the lines using it check it
        (r"^curl -si -X POST \S+/api/v1/fibonacci", check_fib_headers),
        (r"^id=\$\(curl .*/fibonacci", expect_id),
        (r"^curl -s \S+/api/v1/jobs/\$id$", check_job),
        (r'^curl -s "\S+/api/v1/jobs/\$id\?wait=30"$', check_long_poll),
        (r"Prefer: wait=10' -d '\{\"n\": 1000\}'$", check_fib_1000),
        (r"\"end\": 100\}'$", check_primes_100),
        (r"\"output\": \"count\"\}'$", check_primes_count),
        (r"/api/v1/sort -H 'Content-Type: application/json'", check_sort_json),
        (r"file=@examples/numbers.txt", check_sort_file),
        (r"^id=\$\(curl .*/api/v1/csv", check_csv),
        (r"^curl -sOJ ", check_csv_download),
        (r"^id=\$\(curl .*\"end\": 1000000\}'", check_big_primes),
        (r"offset=1000&limit=100", check_page),
        (r"format=csv\" -o primes.csv$", check_primes_csv),
        (r"^id=\$\(curl .*\"end\": 100000000000, \"output\": \"count\"", check_long_job),
        (r"/\$id/pause", check_pause),
        (r"/\$id/resume$", check_resume),
        (r"/\$id/events", check_events),
        (r"-X DELETE", check_delete),
        (r"status=finished&type=primes", check_list),
        (r"/api/v1/queues ; curl", check_queues_workers),
    ]
    ran = []
    for command in lines:
        matched = [check for pattern, check in checks if re.search(pattern, command)]
        assert len(matched) == 1, f"README line without exactly one check here: {command!r} ({len(matched)})"
        began = time.monotonic()
        rc, out, err = shell.run(command)
        assert rc == 0, f"{command!r} exited {rc}: {err or out[:500]}"
        matched[0](out, shell)
        ran.append(f"{time.monotonic() - began:6.2f} s  {command[:110]}")
    assert len(ran) == len(lines) and len(set(seen_ids)) == len(seen_ids) >= 4
    print("\nREADME quick start, every line run and checked:\n" + "\n".join(ran))


def test_the_cli_examples_work_from_the_same_clone(clone: Clone) -> None:
    """The README's `crunch` block, line by line; CRUNCH_URL (the documented setting) names the test's port."""
    venv_link = clone.dir / ".venv"
    if not venv_link.exists():
        venv_link.symlink_to(VENV)  # `make run` would have made .venv here; the test reuses this checkout's
    readme = (clone.dir / "README.md").read_text()
    lines = commands(sh_block(readme, "## From a terminal: `crunch`"))
    shell = Shell(clone)
    clone.env["CRUNCH_URL"] = f"http://127.0.0.1:{clone.port}"
    fib_1000_prefix = "43466557686937456435688527675040625802564660517371780402481729089536555417949051890403"
    checks: list[tuple[str, Callable[[str, Shell], None]]] = [
        (r"^\. \.venv/bin/activate$", lambda out, sh: None),
        (r"^crunch primes 1 100", lambda out, sh: assert_eq([*out.split()[:5], str(len(out.split()))],
                                                             ["2", "3", "5", "7", "11", "25"])),
        (r"^crunch primes 0 1e10 --count", lambda out, sh: assert_eq(out.strip(), "455052511")),
        (r"^crunch fib 1000$", lambda out, sh: assert_eq(out.strip()[:len(fib_1000_prefix)], fib_1000_prefix)),
        (r"^crunch sort 3 1 2.5 --desc", lambda out, sh: assert_eq(out.split(), ["3", "2.5", "1"])),
        (r"^crunch csv examples/sales.csv", lambda out, sh: assert_eq(
            len((clone.dir / "q1.csv").read_text().splitlines()), 10)),
        (r"^id=\$\(crunch primes 2e11 22e10", lambda out, sh: assert_eq(bool(ID.match(sh.id)), True)),
        (r"^crunch jobs --status started ; crunch status", lambda out, sh: assert_eq(sh.id in out, True)),
        # primesieve 200000000000 220000000000 -q: 767160305
        (r"^crunch retry \$id ; crunch wait", lambda out, sh: assert_eq('{"count":767160305}' in out.replace(" ", ""),
                                                                        True)),
    ]
    ran = []
    for command in lines:
        matched = [check for pattern, check in checks if re.search(pattern, command)]
        assert len(matched) == 1, f"README line without exactly one check here: {command!r}"
        began = time.monotonic()
        rc, out, err = shell.run(command)
        assert rc == 0, f"{command!r} exited {rc}: {err[-800:] or out[-500:]}"
        matched[0](out, shell)
        ran.append(f"{time.monotonic() - began:6.2f} s  {command[:110]}")
    assert api(clone, f"/api/v1/jobs/{shell.id}").status_code == 404, "the last line deleted the job"
    print("\nREADME crunch examples, every line run and checked:\n" + "\n".join(ran))


def assert_eq(got: Any, want: Any) -> None:
    assert got == want, f"{got!r} != {want!r}"


def section(readme: str, heading: str) -> str:
    start = readme.index(heading)
    end = readme.find("\n## ", start + len(heading))
    return readme[start:end if end > 0 else len(readme)]


def test_the_batch_and_webhook_examples_work_from_the_same_clone(clone: Clone) -> None:
    """README "Batches and webhooks": both curl blocks, line by line, and the receiver's verification snippet
    run on what those lines made the server send. Only the placeholder receiver (hooks.example.com) becomes
    a receiver on 127.0.0.1 (the clone runs with WEBHOOK_ALLOW_PRIVATE=1 for it), and "whsec_..." the key
    that `python -m jobs.webhooks secret`, as the README says, prints."""
    from tests.test_webhooks import Receiver

    text = section((clone.dir / "README.md").read_text(), "## Batches and webhooks")
    blocks = re.findall(r"```(sh|python)\n(.*?)```", text, re.S)
    assert [kind for kind, _ in blocks] == ["sh", "sh", "python"], "two curl blocks and the receiver's snippet"
    receiver = Receiver()
    shell = Shell(clone)

    def batch_of(out: str) -> dict[str, Any]:
        return api(clone, f"/api/v1/batches/{shell.id}").json() if shell.id else {}

    def check_batch_id(out: str, sh: Shell) -> None:
        assert ID.match(sh.id) and batch_of(out)["total"] == 3, sh.id

    def check_batch_done(out: str, sh: Shell) -> None:
        b = job(out)
        assert b["id"] == sh.id and b["status"] == "finished" and b["counts"]["finished"] == 3, b

    def check_batch_jobs(out: str, sh: Shell) -> None:
        page = job(out)
        assert [j["result"] for j in page["jobs"]][1:] == [{"count": 25}, [1, 2, 3]], page
        assert page["jobs"][0]["result"]["digits"] == 209 and page["next_cursor"] is None

    def check_batch_events(out: str, sh: Shell) -> None:
        last = json.loads(re.findall(r"^data: (.*)$", out, re.M)[-1])
        assert last["id"] == sh.id and last["status"] == "finished", out[-300:]

    def check_batch_cancel(out: str, sh: Shell) -> None:
        body = job(out)  # every item ended (the ?wait=30 line waited for that): the README's 409
        assert body["status"] == 409 and "already ended" in body["detail"], body

    def check_json_submit(kind: str) -> Callable[[str, Shell], None]:
        def check(out: str, sh: Shell) -> None:
            sent.append((kind, job(out)["id"]))
            assert job(out)["type"] == kind, out[:300]
        return check

    def check_batch_submit(out: str, sh: Shell) -> None:
        b = job(out)
        assert b["total"] == 2 and b["webhooks"][0]["url"] == receiver.url("/batch"), b
        items = api(clone, f"/api/v1/batches/{b['id']}/jobs").json()["jobs"]
        sent.extend([("batch", b["id"]), ("fibonacci", items[0]["id"])])

    sent: list[tuple[str, str]] = []
    checks: list[tuple[str, Callable[[str, Shell], None]]] = [
        (r"^id=\$\(curl -s -X POST \S+/api/v1/batches ", check_batch_id),
        (r'/batches/\$id\?wait=30"', check_batch_done),
        (r"/batches/\$id/jobs\?limit=100", check_batch_jobs),
        (r"/batches/\$id/events", check_batch_events),
        (r"/batches/\$id/cancel", check_batch_cancel),
        (r"/api/v1/fibonacci .*webhook", check_json_submit("fibonacci")),
        (r"/api/v1/csv .*webhook=", check_json_submit("csv")),
        (r"^curl -s -X POST \S+/api/v1/batches .*\"webhook\"", check_batch_submit),
    ]
    ran = []
    for _kind, block in blocks[:2]:
        for command in commands(block, quoted=True):
            matched = [check for pattern, check in checks if re.search(pattern, command, re.S)]
            assert len(matched) == 1, f"README line without exactly one check here: {command!r} ({len(matched)})"
            line = re.sub(r"https://hooks\.example\.com(/\w+)", lambda m: receiver.url(m.group(1)), command)
            began = time.monotonic()
            rc, out, err = shell.run(line)
            assert rc == 0, f"{command!r} exited {rc}: {err or out[:500]}"
            matched[0](out, shell)
            ran.append(f"{time.monotonic() - began:6.2f} s  {command[:110]}")
    # The operator reads the generated key as the README says, and the receiver's snippet verifies every call.
    key = subprocess.run([str(VENV / "bin" / "python"), "-m", "jobs.webhooks", "secret"], cwd=clone.dir,
                         env={**clone.env, "REDIS_URL": f"redis://127.0.0.1:{clone.redis_port}/0"},
                         capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    assert key.startswith("whsec_")
    snippet = blocks[2][1]
    assert snippet.count('"whsec_..."') == 1
    scope: dict[str, Any] = {}
    exec(compile(snippet.replace('"whsec_..."', repr(key)), "README.md", "exec"), scope)
    got: dict[str, str] = {}
    deadline = time.monotonic() + 90
    while len(got) < len(sent):
        with receiver.lock:
            calls = list(receiver.calls)
        got = {}
        for call in calls:
            event = scope["receive"](call["body"], call["headers"])
            got[event["data"]["id"]] = event["type"]
        assert time.monotonic() < deadline, (sent, got)
        time.sleep(0.2)
    assert got == {i: "batch.finished" if kind == "batch" else "job.finished" for kind, i in sent}, (sent, got)
    from standardwebhooks.webhooks import WebhookVerificationError

    with pytest.raises(WebhookVerificationError):
        scope["receive"](calls[0]["body"].replace(b"finished", b"failed"), calls[0]["headers"])
    receiver.server.shutdown()
    print("\nREADME batches and webhooks, every line run and checked:\n" + "\n".join(ran))
