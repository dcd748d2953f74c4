"""`make run`: embedded Redis (unless REDIS_URL is set), gunicorn and the workers, stopped in order.

Every child runs in its own session so Ctrl-C reaches only this supervisor, which then stops
workers first (running jobs checkpoint and re-queue), then the web, then Redis (flushing its
append-only file), so the next `make run` finds every job where it was.

Supervision: the embedded Redis is restarted on the same port when it dies (the web answers 503
and the workers reconnect meanwhile; the append-only file brings every job back). A dead web or
worker supervisor stops the whole stack instead: worker.py already restarts its own workers and
gunicorn its own processes, so their supervisor dying means something is wrong that a loop of
restarts would only hide. Every child gets SIGTERM if this supervisor is SIGKILLed (PDEATHSIG),
so no orphan keeps the ports or the append-only file.

Ports are checked before anything starts, with the SO_REUSEADDR bind servers use, so the sockets
of a server that just stopped (TIME_WAIT) never count as taken; a port really taken is said
plainly, with the setting that picks another.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from infra.embedded_redis import EmbeddedRedis, die_with_parent, free_port, port_in_use

#: The embedded server's default port, and the address `make run` serves on (HOST=0.0.0.0 opens it up).
DEFAULT_REDIS_PORT = 6379
DEFAULT_HOST = "127.0.0.1"
#: valkey's size notation for REDIS_MAXMEMORY ("0" = no limit).
_SIZE = re.compile(r"^[0-9]+(b|k|kb|m|mb|g|gb)?$", re.I)
#: Seconds between attempts to bring a dead Redis back (then doubling, up to the cap).
RESTART_BACKOFF, RESTART_BACKOFF_MAX = 0.5, 8.0


def say(text: str) -> None:
    print(f"crunch: {text}", flush=True)


def default_maxmemory() -> str:
    """Half the machine's RAM (at least 256 MiB): room for the web and the workers' own memory."""
    half = psutil.virtual_memory().total // 2
    return f"{max(256 << 20, half) >> 20}mb"


def redis_maxmemory(env: dict[str, str]) -> str | None:
    raw = (env.get("REDIS_MAXMEMORY") or "").strip().lower()
    if not raw:
        return default_maxmemory()
    if not _SIZE.match(raw):
        raise SystemExit(f"crunch: REDIS_MAXMEMORY must be a size like 512mb or 2gb (0: no limit), got {raw!r}")
    return None if raw == "0" else raw


def int_setting(env: dict[str, str], name: str, default: int) -> int:
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise SystemExit(f"crunch: {name} must be a port number (1-65535), got {raw!r}")
    return int(raw)


def choose_redis_port(env: dict[str, str]) -> int:
    """REDIS_PORT when free; a port named by the user and taken is an error, never a silent move."""
    port = int_setting(env, "REDIS_PORT", DEFAULT_REDIS_PORT)
    if not port_in_use("127.0.0.1", port):
        return port
    if env.get("REDIS_PORT"):
        raise SystemExit(
            f"crunch: REDIS_PORT={port} is taken: another program listens on 127.0.0.1:{port}. Stop it, "
            f"choose a free port (REDIS_PORT={port + 1} make run), or use that server (REDIS_URL=redis://127.0.0.1:{port}/0).")
    other = free_port()
    say(f"port {port} is taken (another Redis?), so the embedded server listens on port {other} instead. "
        f"Set REDIS_PORT to choose the port, or REDIS_URL to use the server on {port}.")
    return other


def check_web_port(host: str, port: int) -> None:
    if port_in_use(host, port):
        raise SystemExit(
            f"crunch: port {port} is taken: another program listens on {host}:{port}, so the web cannot start. "
            f"Stop it, or choose another port: PORT={port + 1} make run")


class RedisSupervisor:
    """The embedded server, restarted on its own port whenever it dies until the stack stops."""

    def __init__(self, server: EmbeddedRedis) -> None:
        self.server = server
        self.restarts = 0
        self._next_try = 0.0
        self._backoff = RESTART_BACKOFF

    def check(self) -> None:
        proc = self.server.proc
        if proc is None or proc.poll() is None or time.monotonic() < self._next_try:
            return
        if self._backoff == RESTART_BACKOFF:
            how = (f"was killed by signal {-proc.returncode}" if proc.returncode < 0
                   else f"exited with {proc.returncode} ({self.server.last_log_line()})")
            say(f"Redis {how}; restarting it on port {self.server.port}")
        began = time.monotonic()
        try:
            self.server.start(timeout=120)  # a large append-only file answers LOADING for a while
        except Exception as exc:  # noqa: BLE001 - e.g. the port was taken meanwhile: say so, try again
            say(f"Redis did not restart: {exc}; trying again in {self._backoff:.1f} s")
            self._next_try = time.monotonic() + self._backoff
            self._backoff = min(self._backoff * 2, RESTART_BACKOFF_MAX)
            return
        self.restarts += 1
        self._backoff, self._next_try = RESTART_BACKOFF, 0.0
        say(f"Redis is back on port {self.server.port} after {time.monotonic() - began:.2f} s "
            f"(restart {self.restarts})")


def main() -> int:
    env = dict(os.environ)
    host = env["HOST"] = (env.get("HOST") or "").strip() or DEFAULT_HOST
    port = int_setting(env, "PORT", 5000)
    env["PORT"] = str(port)
    check_web_port(host, port)
    data_dir = Path(env.get("DATA_DIR") or "./var").resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    redis_server: EmbeddedRedis | None = None
    supervisor: RedisSupervisor | None = None
    if not env.get("REDIS_URL"):
        maxmemory = redis_maxmemory(env)
        redis_server = EmbeddedRedis(data_dir / "redis", port=choose_redis_port(env), maxmemory=maxmemory,
                                     tie_to_parent=True)
        try:
            redis_server.start(timeout=120)
        except RuntimeError as exc:
            raise SystemExit(f"crunch: the embedded Redis did not start: {exc}") from None
        supervisor = RedisSupervisor(redis_server)
        env["REDIS_URL"] = redis_server.url
        say(f"embedded Redis-compatible server on {redis_server.url} (append-only file in {data_dir / 'redis'}, "
            f"maxmemory {maxmemory or 'unlimited'}, noeviction)")
    metrics_dir = data_dir / "metrics"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    workers = env.get("WORKERS") or str(os.cpu_count() or 1)
    py = sys.executable
    procs = {
        "workers": subprocess.Popen([py, "worker.py", "--workers", workers], env=env, start_new_session=True,
                                    preexec_fn=die_with_parent),
        "web": subprocess.Popen([py, "-m", "gunicorn", "-c", "python:rest.gunicorn_conf", "rest.wsgi:app"],
                                env=env, start_new_session=True, preexec_fn=die_with_parent),
    }
    shown = "localhost" if host in ("127.0.0.1", "::1") else host
    reach = ("this machine only; HOST=0.0.0.0 opens it to the network" if host in ("127.0.0.1", "::1", "localhost")
             else "open to the network")
    say(f"web on http://{shown}:{port}/ ({reach})  workers: {workers}  (Ctrl-C stops everything)")
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    die_with_parent()  # SIGTERM us when make dies, so `kill <make>` does not leave the stack running
    code = 0
    while not stopping:
        time.sleep(0.25)
        for name, p in procs.items():
            if p.poll() is not None and not stopping:
                say(f"{name} exited with {p.returncode}; stopping everything")
                stopping, code = True, 1
        if supervisor is not None and not stopping:
            supervisor.check()
    for name in ("workers", "web"):
        p = procs[name]
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            say(f"{name} did not stop in 30 s; killing")
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    if redis_server is not None:
        redis_server.stop()
    say("stopped")
    return code


if __name__ == "__main__":
    sys.exit(main())
