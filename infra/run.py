"""`make run`: embedded Redis (unless REDIS_URL is set), gunicorn and the workers, stopped in order.

Every child runs in its own session so Ctrl-C reaches only this supervisor, which then stops
workers first (running jobs checkpoint and re-queue), then the web, then Redis (flushing its
append-only file), so the next `make run` finds every job where it was.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from infra.embedded_redis import EmbeddedRedis, free_port


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def stop_with_parent() -> None:
    """SIGTERM us when our parent (make) dies, so `kill <make>` does not leave the stack running."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not fatal: Ctrl-C and SIGTERM to the process group still stop everything


def main() -> int:
    env = dict(os.environ)
    data_dir = Path(env.get("DATA_DIR") or "./var").resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    redis_server: EmbeddedRedis | None = None
    if not env.get("REDIS_URL"):
        port = int(env.get("REDIS_PORT") or 6379)
        if not port_free(port):
            port = free_port()
        redis_server = EmbeddedRedis(data_dir / "redis", port=port).start()
        env["REDIS_URL"] = redis_server.url
        print(f"crunch: embedded Redis-compatible server on {redis_server.url} "
              f"(append-only file in {data_dir / 'redis'})", flush=True)
    metrics_dir = data_dir / "metrics"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    workers = env.get("WORKERS") or str(os.cpu_count() or 1)
    py = sys.executable
    procs = {
        "workers": subprocess.Popen([py, "worker.py", "--workers", workers], env=env, start_new_session=True),
        "web": subprocess.Popen([py, "-m", "gunicorn", "-c", "python:rest.gunicorn_conf", "rest.wsgi:app"],
                                env=env, start_new_session=True),
    }
    print(f"crunch: web on http://localhost:{env.get('PORT', '5000')}  workers: {workers}  "
          "(Ctrl-C stops everything)", flush=True)
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    stop_with_parent()
    code = 0
    while not stopping:
        time.sleep(0.5)
        for name, p in procs.items():
            if p.poll() is not None and not stopping:
                print(f"crunch: {name} exited with {p.returncode}; stopping everything", flush=True)
                stopping, code = True, 1
    for name in ("workers", "web"):
        p = procs[name]
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            print(f"crunch: {name} did not stop in 30 s; killing", flush=True)
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    if redis_server is not None:
        redis_server.stop()
    print("crunch: stopped", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
