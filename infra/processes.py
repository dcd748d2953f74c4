"""Real Crunch processes (gunicorn, worker supervisors) started and stopped for tests and benchmarks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import requests

from infra.embedded_redis import free_port

ROOT = Path(__file__).resolve().parent.parent


class Proc:
    """A child process in its own session, so it and its children can be signalled as a group."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name, self.argv, self.env = name, argv, env
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the child's lifetime
        self.proc = subprocess.Popen(self.argv, env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 30) -> None:
        """Graceful: SIGTERM to the process, which stops its own children."""
        if not self.alive:
            return
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def session(self) -> list[int]:
        """Pids in this child's session: it, its workers and their work horses (own groups)."""
        if self.proc is None:
            return []
        pids = []
        for p in psutil.process_iter():
            try:
                if os.getsid(p.pid) == self.proc.pid:
                    pids.append(p.pid)
            except (ProcessLookupError, PermissionError):
                continue
        return pids

    def kill(self) -> None:
        """SIGKILL to every process of the session at once: a crash, nothing gets to clean up."""
        if self.proc is None:
            return
        for pid in self.session():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()

    def tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def base_env(redis_url: str, **extra: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update({"REDIS_URL": redis_url, "PYTHONUNBUFFERED": "1", "ACCESS_LOG": "0"})
    # Tests and benchmarks send everything from 127.0.0.1: keep the limits on (their cost included),
    # but out of reach. tests/test_ratelimit.py proves they bite.
    for name, high in (("RATE_LIMIT_SUBMIT", "1000000/minute"), ("RATE_LIMIT_CONTROL", "1000000/minute"),
                       ("MAX_QUEUED_PER_CLIENT", "1000000")):
        env.setdefault(name, high)
    env.update({k: str(v) for k, v in extra.items()})
    return env


class Workers(Proc):
    """`python worker.py` supervising N workers, as `make run` starts it."""

    def __init__(self, redis_url: str, log_dir: Path, count: int = 2, name: str = "workers", **env: Any) -> None:
        # The URL goes by REDIS_URL in the environment, not argv: it may hold a password, and argv is public.
        super().__init__(name, [sys.executable, "worker.py", "--workers", str(count)],
                         base_env(redis_url, **env), log_dir)


class Web(Proc):
    """gunicorn with gthread workers on a free port, as `make run` starts it."""

    def __init__(self, redis_url: str, log_dir: Path, port: int | None = None, **env: Any) -> None:
        self.port = port or free_port()
        env.setdefault("WEB_PROCESSES", 2)
        super().__init__("web", [sys.executable, "-m", "gunicorn", "-c", "python:rest.gunicorn_conf",
                                 "rest.wsgi:app"],
                         base_env(redis_url, PORT=self.port, HOST="127.0.0.1", **env), log_dir)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> Web:
        super().start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if requests.get(self.url + "/healthz", timeout=2).ok:
                    return self
            except requests.RequestException:
                pass  # not listening yet, or slow to answer while booting
            if not self.alive:
                raise RuntimeError(f"gunicorn exited:\n{self.tail()}")
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"gunicorn did not come up:\n{self.tail()}")


class Api:
    """A requests session bound to the live server's base URL."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.s = requests.Session()

    def __getattr__(self, method: str) -> Any:
        def call(path: str, **kw: Any) -> requests.Response:
            kw.setdefault("timeout", 60)
            return self.s.request(method.upper(), self.base + path, **kw)
        return call

    def wait_done(self, job_id: str, timeout: float = 120) -> dict[str, Any]:
        """Long-poll until the job is terminal (or paused)."""
        deadline = time.monotonic() + timeout
        while True:
            r = self.get(f"/api/v1/jobs/{job_id}?wait=10")
            assert r.status_code == 200, r.text
            job = r.json()
            if job["status"] in ("finished", "failed", "canceled", "paused"):
                return job
            assert time.monotonic() < deadline, f"job {job_id} still {job['status']}"
