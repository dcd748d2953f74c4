"""Deployment: the Compose file resolves, the Dockerfile is sane, and Crunch runs across hosts.

The multi-host test builds a small network on this one machine out of Linux network
namespaces: a switch namespace holding a bridge, and one namespace per "host" (Redis, the
web, two worker hosts, a client), each joined to the bridge by a veth pair and given an
address in 10.77.0.0/24. Those addresses exist only inside the namespaces this test
creates; the namespaces have no route anywhere else, so no packet can leave them. Every
namespace, link and process is removed at the end, pass or fail.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from infra.embedded_redis import server_binary
from jobs.types.spec import Limits
from rest.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
NGINX_CONF = ROOT / "deploy" / "nginx.conf"

GUNICORN_CMD = ["python", "-m", "gunicorn", "-c", "python:rest.gunicorn_conf", "rest.wsgi:app"]
WORKER_CMD = ["python", "worker.py"]

#: Variables that would change what the Compose file resolves to; cleared to see its defaults.
SETTING_VARS = ("PORT", "REDIS_URL", "RESULT_TTL", "HEARTBEAT_TIMEOUT", "MAX_BODY_BYTES", "MAX_FIB_N",
                "MAX_PRIMES_END", "MAX_PRIMES_LIST_WIDTH", "MAX_SORT_LENGTH", "WORKERS", "WEB_PROCESSES",
                "WEB_THREADS", "WAIT_SLOTS", "ACCESS_LOG", "WEB_CONNECTIONS", "REQUEST_HEADER_TIMEOUT",
                "RATE_LIMIT_SUBMIT", "RATE_LIMIT_CONTROL", "RATE_LIMIT_ENABLED", "MAX_QUEUED_PER_CLIENT",
                "API_TOKENS", "SECRET_KEY", "RQ_DASHBOARD", "RQ_DASHBOARD_OWNERS", "JOB_TIMEOUTS",
                "REDIS_MAXMEMORY", "PUBLISH_ADDRESS", "TRUSTED_PROXIES", "PYTHON_IMAGE", "REDIS_IMAGE", "NGINX_IMAGE",
                "CRUNCH_IMAGE", "MAX_PRIMES_COUNT_WIDTH", "MAX_BATCH_JOBS", "MAX_STORED_BYTES_PER_CLIENT", "PAUSED_TTL",
                "PREEMPT_QUANTUM", "FANOUT_MIN_SECONDS", "FANOUT_MAX_PARTS", "WEBHOOK_SECRET", "WEBHOOK_ALLOW_PRIVATE")


# --------------------------------------------------------------------------------------
# docker-compose.yml
# --------------------------------------------------------------------------------------

def compose_command() -> list[str]:
    """`docker compose` (v2 plugin), else the standalone `docker-compose` (v1); skip if neither."""
    docker = shutil.which("docker")
    if docker is None and shutil.which("docker-compose") is None:
        pytest.skip("no docker client on PATH: cannot check docker-compose.yml with `docker compose config`")
    if docker is not None:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    if legacy is not None:
        return [legacy]
    pytest.skip("the docker client has no compose plugin (`docker compose version` fails) and "
                "docker-compose is not installed: cannot run `docker compose config`")


def yaml_to_data(text: str, compose: list[str]) -> Any:
    """Parse YAML with PyYAML, or with the interpreter of docker-compose v1 (which always has it)."""
    try:
        import yaml  # type: ignore[import-untyped]
    except ImportError:
        pass
    else:
        return yaml.safe_load(text)
    script = Path(compose[-1])
    first = script.read_bytes()[:200].split(b"\n", 1)[0] if script.is_file() else b""
    if not first.startswith(b"#!"):
        pytest.skip("no YAML parser: pip install pyyaml")
    interpreter = shlex.split(first[2:].decode())
    out = subprocess.run([*interpreter, "-c", "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), "
                          "sys.stdout)"], input=text, capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        pytest.skip(f"no YAML parser: pip install pyyaml ({out.stderr.strip()[-200:]})")
    return json.loads(out.stdout)


def compose_config(tmp_path: Path, **env: str) -> dict[str, Any]:
    """The resolved configuration (`docker compose config`), with only the given settings set."""
    compose = compose_command()
    clean = {k: v for k, v in os.environ.items() if k not in SETTING_VARS and not k.startswith("COMPOSE_")}
    clean.update(env)
    empty_env_file = tmp_path / "empty.env"
    empty_env_file.write_text("")
    base = [*compose, "-f", str(COMPOSE_FILE), "--project-directory", str(ROOT),
            "--env-file", str(empty_env_file), "config"]
    v2 = compose[-1] == "compose"
    out = subprocess.run([*base, "--format", "json"] if v2 else base,
                         capture_output=True, text=True, env=clean, cwd=ROOT, timeout=60)
    assert out.returncode == 0, f"`{' '.join(base)}` failed:\n{out.stderr}"
    return json.loads(out.stdout) if v2 else yaml_to_data(out.stdout, compose)


def volume_sources(service: dict[str, Any]) -> dict[str, str]:
    """target -> source of a service's volumes, from the short (v1) or long (v2) syntax."""
    found = {}
    for v in service.get("volumes", []):
        if isinstance(v, str):
            source, target = v.split(":")[:2]
        else:
            source, target = v.get("source"), v["target"]
        found[target] = source
    return found


def published_ports(service: dict[str, Any]) -> list[tuple[str, str, int]]:
    """(host address, published port, container port) from the short (v1) or long (v2) syntax."""
    found = []
    for p in service.get("ports") or []:
        if isinstance(p, str):
            *host, target = p.split(":")
            host_ip, published = (["0.0.0.0", *host] if len(host) == 1 else host)[-2:]
        else:
            host_ip, published, target = p.get("host_ip") or "0.0.0.0", p["published"], p["target"]
        found.append((str(host_ip), str(published), int(str(target).split("/")[0])))
    return found


def healthcheck_text(service: dict[str, Any]) -> str:
    test = service["healthcheck"]["test"]
    return " ".join(test) if isinstance(test, list) else str(test)


def command_args(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    return command if isinstance(command, list) else shlex.split(command)


def test_compose_config_resolves_four_services_with_health_and_defaults(tmp_path: Path) -> None:
    cfg = compose_config(tmp_path)
    services = cfg["services"]
    assert set(services) == {"redis", "web", "worker", "proxy"}

    redis_svc, web, worker, proxy = services["redis"], services["web"], services["worker"], services["proxy"]
    # Redis: persistent append-only file on a named volume, and a real health check.
    assert "redis-data" in cfg["volumes"]
    assert volume_sources(redis_svc).get("/data") == "redis-data"
    command = command_args(redis_svc)
    assert command[command.index("--appendonly") + 1] == "yes"
    # Bounded memory that never evicts a job record or a queue (issue 17).
    assert command[command.index("--maxmemory") + 1] == "2gb"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert "ping" in healthcheck_text(redis_svc) and "PONG" in healthcheck_text(redis_svc)
    assert redis_svc["image"] == "valkey/valkey:8"

    # Web and workers wait for a healthy Redis; the web is healthy only when /readyz says so.
    for svc in (web, worker):
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "/readyz" in healthcheck_text(web)
    # Only the proxy is published, on every address by default; the web stays inside (and scales).
    assert not web.get("ports")
    assert published_ports(proxy) == [("0.0.0.0", "5000", 80)]
    assert proxy["depends_on"]["web"]["condition"] == "service_healthy"
    assert proxy["image"] == "nginx:1.28"
    assert str(proxy["environment"]["MAX_BODY_BYTES"]) == str(Limits().max_body_bytes)
    assert any(str(v).endswith(":/etc/crunch/nginx.conf:ro") or (isinstance(v, dict) and
               v.get("target") == "/etc/crunch/nginx.conf") for v in proxy["volumes"])

    # One image for both, from the official Python image unless PYTHON_IMAGE says otherwise;
    # the worker runs `python worker.py` and can be scaled.
    assert web["image"] == worker["image"] == "crunch:latest" and "build" in web and "build" in worker
    for svc in (web, worker):
        assert svc["build"]["args"]["PYTHON_IMAGE"] == "python:3.11-slim"
    assert str(web["environment"]["HOST"]) == "0.0.0.0", "gunicorn must listen on the Compose network"
    assert str(web["environment"]["TRUSTED_PROXIES"]) == "1", "behind nginx the client is X-Forwarded-For's"
    assert "command" not in web or web["command"] in (None, GUNICORN_CMD)
    assert worker["command"] == WORKER_CMD
    assert "container_name" not in worker and not worker.get("ports")

    # The settings table's defaults, taken from the code so the two cannot drift apart.
    limits, settings = Limits(), Settings()
    shared = {
        "REDIS_URL": "redis://redis:6379/0",
        "RESULT_TTL": str(settings.result_ttl),
        "HEARTBEAT_TIMEOUT": "30",
        "MAX_BODY_BYTES": str(limits.max_body_bytes),
        "MAX_FIB_N": str(limits.max_fib_n),
        "MAX_PRIMES_END": str(limits.max_primes_end),
        "MAX_PRIMES_LIST_WIDTH": str(limits.max_primes_list_width),
        "MAX_SORT_LENGTH": str(limits.max_sort_length),
    }
    for svc in (web, worker):
        env = {k: str(v) for k, v in svc["environment"].items()}
        assert {k: env.get(k) for k in shared} == shared
    web_env = {k: str(v) for k, v in web["environment"].items()}
    assert web_env["PORT"] == "5000" and web_env["WEB_PROCESSES"] == "2" and web_env["WEB_THREADS"] == "256"
    assert (web_env["RATE_LIMIT_SUBMIT"], web_env["RATE_LIMIT_CONTROL"]) == (settings.rate_limit_submit,
                                                                           settings.rate_limit_control)
    assert web_env["RATE_LIMIT_ENABLED"] == "1", "rate limits are on unless turned off"
    assert web_env["API_TOKENS"] in ("", "None") and web_env["SECRET_KEY"] in ("", "None")
    # Empty means "one per CPU" to worker.py.
    assert str(worker["environment"]["WORKERS"]) in ("", "None")


def test_compose_settings_come_from_the_environment(tmp_path: Path) -> None:
    cfg = compose_config(tmp_path, PORT="8088", WORKERS="3", RESULT_TTL="600", HEARTBEAT_TIMEOUT="7",
                         MAX_FIB_N="5000", PUBLISH_ADDRESS="127.0.0.1", REDIS_MAXMEMORY="512mb",
                         MAX_BODY_BYTES="1048576", PYTHON_IMAGE="crunch-offline/python:3.11",
                         REDIS_IMAGE="crunch-offline/valkey:8", NGINX_IMAGE="crunch-offline/nginx:1.22",
                         CRUNCH_IMAGE="crunch-test:x")
    web, worker, proxy, redis_svc = (cfg["services"][k] for k in ("web", "worker", "proxy", "redis"))
    assert published_ports(proxy) == [("127.0.0.1", "8088", 80)]
    assert str(web["environment"]["PORT"]) == "5000", "the container port stays 5000; PORT moves the host side"
    assert str(proxy["environment"]["MAX_BODY_BYTES"]) == "1048576"
    command = command_args(redis_svc)
    assert command[command.index("--maxmemory") + 1] == "512mb"
    # The offline stand-ins (make offline-images) replace the three base images.
    assert redis_svc["image"] == "crunch-offline/valkey:8" and proxy["image"] == "crunch-offline/nginx:1.22"
    assert web["image"] == worker["image"] == "crunch-test:x"
    assert web["build"]["args"]["PYTHON_IMAGE"] == "crunch-offline/python:3.11"
    assert str(worker["environment"]["WORKERS"]) == "3"
    for svc in (web, worker):
        env = svc["environment"]
        assert (str(env["RESULT_TTL"]), str(env["HEARTBEAT_TIMEOUT"]), str(env["MAX_FIB_N"])) == ("600", "7", "5000")


# --------------------------------------------------------------------------------------
# Dockerfile and .dockerignore
# --------------------------------------------------------------------------------------

def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, with line continuations joined and comments dropped."""
    out, buf = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not buf):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        instruction, _, args = buf.partition(" ")
        out.append((instruction.upper(), args.strip()))
        buf = ""
    return out


def env_assignments(args: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in shlex.split(args))


def test_dockerfile_runs_as_non_root_with_a_cached_dependency_layer() -> None:
    steps = dockerfile_instructions(DOCKERFILE.read_text())
    names = [s[0] for s in steps]
    # The base is a build argument defaulting to the official image (make offline-images passes a stand-in).
    assert steps[0] == ("ARG", "PYTHON_IMAGE=python:3.11-slim")
    assert steps[1] == ("FROM", "${PYTHON_IMAGE}")

    # Dependencies from requirements.txt in their own layer, before the code is copied.
    copy_reqs = next(i for i, (n, a) in enumerate(steps) if n == "COPY" and "requirements.txt" in a.split())
    pip = next(i for i, (n, a) in enumerate(steps) if n == "RUN" and "pip install" in a and "requirements.txt" in a)
    copy_code = next(i for i, (n, a) in enumerate(steps) if n == "COPY" and a.split()[0] == ".")
    assert steps[copy_reqs][1].split()[:-1] == ["requirements.txt"], "copy only requirements.txt first"
    assert copy_reqs < pip < copy_code

    # Runs as an unprivileged user, set before the command.
    users = [i for i, n in enumerate(names) if n == "USER"]
    assert users, "no USER: the container would run as root"
    user = steps[users[-1]][1].split(":")[0]
    assert user not in ("root", "0")
    cmd = names.index("CMD")
    assert users[-1] < cmd
    assert json.loads(steps[cmd][1]) == GUNICORN_CMD

    # numba caches compiled kernels on disk: that directory must be the user's to write.
    env: dict[str, str] = {}
    for n, a in steps:
        if n == "ENV":
            env.update(env_assignments(a))
    cache = env.get("NUMBA_CACHE_DIR", "")
    useradd = next(a for n, a in steps if n == "RUN" and "useradd" in a)
    home = shlex.split(useradd)[shlex.split(useradd).index("--home-dir") + 1]
    assert cache.startswith(home + "/") or cache.startswith("/tmp/"), (cache, home)
    assert "--create-home" in useradd


def test_dockerignore_keeps_local_state_out_and_the_code_in() -> None:
    patterns = {line.strip().strip("/") for line in DOCKERIGNORE.read_text().splitlines()
                if line.strip() and not line.startswith("#")}
    assert {".venv", "var", ".git"} <= patterns
    for needed in ("requirements.txt", "worker.py", "rest", "jobs", "primes", "infra", "*.py", "*"):
        assert needed not in patterns, f".dockerignore drops {needed}, which the image needs"
    # What the running image never uses stays out of it.
    assert {"tests", "bench", "requirements-dev.txt", "infra/images"} <= patterns


@pytest.mark.parametrize(("trusted", "seen"), [(1, "203.0.113.7"), (0, "10.0.0.2")])
def test_the_client_address_is_the_proxys_x_forwarded_for_only_when_trusted(
        redis_url: str, trusted: int, seen: str) -> None:
    """Rate budgets, queue bounds and quotas are per client address: behind Compose's nginx
    (TRUSTED_PROXIES=1) that is the last X-Forwarded-For entry, the one nginx appended; a
    client's own entries before it, or the header without a trusted proxy, change nothing."""
    from flask import request

    from rest import create_app

    app = create_app(settings=Settings(redis_url=redis_url, trusted_proxies=trusted))
    app.add_url_rule("/_test/remote", "test_remote", lambda: request.remote_addr or "")
    got = app.test_client().get("/_test/remote", environ_base={"REMOTE_ADDR": "10.0.0.2"},
                                headers={"X-Forwarded-For": "198.51.100.1, 203.0.113.7"})
    assert got.status_code == 200 and got.get_data(as_text=True) == seen


def nginx_directives(text: str) -> list[list[str]]:
    """Every `name args...;` statement of an nginx config, comments dropped (blocks flattened)."""
    body = "\n".join("" if line.lstrip().startswith("#") else line.split(" #", 1)[0] for line in text.splitlines())
    out = []
    for stmt in body.replace("{", ";").replace("}", ";").split(";"):
        words = stmt.split()
        if words:
            out.append(words)
    return out


def test_the_proxy_buffers_bodies_bounds_them_and_streams_events() -> None:
    text = NGINX_CONF.read_text()
    directives = nginx_directives(text)
    first = {d[0]: d[1:] for d in reversed(directives)}  # the first (server-wide) value of each
    # Bodies are read whole by nginx, within a per-read timeout, and bounded by MAX_BODY_BYTES.
    assert first["proxy_request_buffering"] == ["on"]
    assert first["client_max_body_size"] == ["@MAX_BODY_BYTES@"]
    assert first["client_body_timeout"] and first["client_header_timeout"]
    # Long-polls wait up to 30 s: the proxy must wait longer for the answer.
    assert int(first["proxy_read_timeout"][0].rstrip("s")) > 30
    # Event streams are not buffered and outlive their 15 s keep-alives.
    events = text[text.index("location ~ ^/api/v1/(jobs|batches)/[^/]+/events$"):]
    events = events[:events.index("}")]
    assert "proxy_buffering off;" in events and "proxy_read_timeout 1h;" in events
    # The web is found by its Compose service name, re-resolved so a recreated web is found again.
    assert ["set", "$web", "http://web:5000"] in directives and first["resolver"][0] == "127.0.0.11"

# --------------------------------------------------------------------------------------
# Several hosts out of network namespaces
# --------------------------------------------------------------------------------------

SUBNET = "10.77.0"  # /24, assigned only inside the namespaces made below
HOSTS = {"redis": 1, "web": 2, "w1": 3, "w2": 4, "cli": 10}
NS_PREFIX = "crunchdeploy"
CLONE_NEWNET = 0x40000000

#: pi(10**9) and pi(10**10): what the jobs' counts must add up to.
PI_1E9, PI_1E10 = 50_847_534, 455_052_511


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if check and out.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {out.stderr.strip()}")
    return out


def netns_pids(ns: str) -> set[int]:
    out = ip("netns", "pids", ns, check=False)
    return {int(p) for p in out.stdout.split()} if out.returncode == 0 else set()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def kill_netns_processes(ns: str) -> None:
    for _ in range(50):
        pids = netns_pids(ns)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def remove_stale_namespaces() -> None:
    """Namespaces left by an earlier run of this test that was itself killed (its pid is in the name)."""
    listing = ip("netns", "list", check=False).stdout.split("\n")
    for line in listing:
        name = line.split(" ")[0]
        if not name.startswith(NS_PREFIX):
            continue
        owner = name[len(NS_PREFIX):].split("-")[0]
        if owner.isdigit() and not pid_alive(int(owner)):
            kill_netns_processes(name)
            ip("netns", "del", name, check=False)


def enter_netns(ns: str) -> None:
    """Move the calling thread (setns is per thread) into network namespace ns."""
    fd = os.open(f"/var/run/netns/{ns}", os.O_RDONLY)
    try:
        if hasattr(os, "setns"):
            os.setns(fd, CLONE_NEWNET)
        else:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))
    finally:
        os.close(fd)


class Client:
    """A client on its own host: every socket is opened by one thread that joined the client namespace."""

    def __init__(self, ns: str, web_url: str, redis_url: str) -> None:
        self.pool = ThreadPoolExecutor(1, initializer=enter_netns, initargs=(ns,))
        self.web_url = web_url
        self.http = requests.Session()
        self.redis = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.pool.submit(fn, *args).result(timeout=60)

    def get(self, path: str, headers: dict[str, str] | None = None) -> requests.Response:
        return self.run(lambda: self.http.get(self.web_url + path, headers=headers, timeout=15))

    def post(self, path: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> requests.Response:
        return self.run(lambda: self.http.post(self.web_url + path, json=body, headers=headers, timeout=15))

    def job_fields(self, job_id: str) -> dict[str, str]:
        raw = self.run(self.redis.hgetall, f"crunch:job:{job_id}")
        return {k.decode(): v.decode() for k, v in raw.items()}

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.run(self.redis.close)
        with contextlib.suppress(Exception):
            self.run(self.http.close)
        self.pool.shutdown(wait=False, cancel_futures=True)


class Lab:
    """The namespaces, links and processes of one run; close() removes all of them."""

    def __init__(self, log_dir: Path) -> None:
        self.tag = f"{NS_PREFIX}{os.getpid()}"
        self.log_dir = log_dir
        self.namespaces: list[str] = []
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.switch = ""

    def ns(self, host: str) -> str:
        return f"{self.tag}-{host}"

    def addr(self, host: str) -> str:
        return f"{SUBNET}.{HOSTS[host]}"

    def add_namespace(self, name: str) -> None:
        ip("netns", "add", name)
        self.namespaces.append(name)
        ip("-n", name, "link", "set", "lo", "up")

    def build(self) -> None:
        """A bridge in the switch namespace, and one veth from it to each host namespace."""
        self.switch = self.ns("sw")
        self.add_namespace(self.switch)
        ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        ip("-n", self.switch, "link", "set", "br0", "up")
        for host in HOSTS:
            ns = self.ns(host)
            self.add_namespace(ns)
            # Both ends are created directly inside their namespaces: nothing appears on this host.
            ip("link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", f"v-{host}", "netns", self.switch)
            ip("-n", self.switch, "link", "set", f"v-{host}", "master", "br0", "up")
            ip("-n", ns, "addr", "add", f"{self.addr(host)}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
            routes = ip("-n", ns, "route", "show").stdout
            assert "default" not in routes and routes.strip().startswith(f"{SUBNET}.0/24"), routes

    def spawn(self, host: str, name: str, argv: list[str], **env: Any) -> subprocess.Popen[bytes]:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
        full_env.update({"PYTHONUNBUFFERED": "1", **{k: str(v) for k, v in env.items()}})
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - the child keeps it
        try:
            # `ip netns exec` execs in place: the Popen pid is the process itself.
            p = subprocess.Popen(["ip", "netns", "exec", self.ns(host), *argv], env=full_env, cwd=ROOT,
                                 stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        finally:
            log.close()
        self.procs[name] = p
        return p

    def cut_off(self, host: str) -> None:
        """The host vanishes: its cable is pulled, then its processes die without a word."""
        ip("-n", self.switch, "link", "del", f"v-{host}")
        kill_netns_processes(self.ns(host))
        self.procs[host].wait(timeout=10)

    def logs(self, n: int = 25) -> str:
        parts = []
        for path in sorted(self.log_dir.glob("*.log")):
            lines = path.read_text(errors="replace").splitlines()[-n:]
            parts.append(f"--- {path.name}\n" + "\n".join(lines))
        return "\n".join(parts)

    def close(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:  # not reaped yet, so its pid (and group) cannot have been reused
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(p.pid, signal.SIGKILL)
        for ns in self.namespaces:
            kill_netns_processes(ns)
        for p in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=5)
        for ns in reversed(self.namespaces):
            ip("netns", "del", ns, check=False)
        left = [line for line in ip("netns", "list", check=False).stdout.splitlines()
                if line.startswith(self.tag + "-")]
        assert not left, f"namespaces left behind: {left}"


def namespaces_allowed() -> str | None:
    """None if this process may make network namespaces, else why not."""
    if not sys.platform.startswith("linux"):
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "not root: `ip netns add` needs CAP_SYS_ADMIN"
    if shutil.which("ip") is None:
        return "iproute2 is not installed (`ip` not on PATH)"
    probe = f"{NS_PREFIX}{os.getpid()}-probe"
    out = ip("netns", "add", probe, check=False)
    ip("netns", "del", probe, check=False)
    if out.returncode != 0:
        err = out.stderr.strip()
        if "ermission" in err or "not permitted" in err:
            return f"the kernel forbids network namespaces here: {err}"
        raise RuntimeError(f"ip netns add failed: {err}")
    return None


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    reason = namespaces_allowed()
    if reason:
        pytest.skip(reason)
    remove_stale_namespaces()
    lab = Lab(tmp_path)
    try:
        lab.build()
        yield lab
    finally:
        lab.close()


def wait_until(what: str, pred: Callable[[], Any], timeout: float, lab: Lab, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = pred()
        except (requests.RequestException, redis.RedisError):
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{lab.logs()}")
        time.sleep(every)


def start_redis(lab: Lab, appendonly: bool) -> tuple[str, Client]:
    """Redis on the lab's `redis` host (its data in the lab's log dir), and a client in the `cli` namespace
    for the web on the `web` host and that Redis; wait for Redis with web_on()."""
    redis_url = f"redis://{lab.addr('redis')}:6379/0"
    data = lab.log_dir / "redis-data"
    data.mkdir()
    lab.spawn("redis", "redis", [server_binary(), "--bind", lab.addr("redis"), "--port", "6379",
                                 "--dir", str(data), "--appendonly", "yes" if appendonly else "no", "--save", "",
                                 "--protected-mode", "no", "--daemonize", "no"])
    return redis_url, Client(lab.ns("cli"), f"http://{lab.addr('web')}:5000", redis_url)


def web_on(lab: Lab, cli: Client, redis_url: str, **env: Any) -> None:
    """Once Redis answers, gunicorn (one process, 32 threads) on the `web` host, with these settings."""
    wait_until("Redis on its host", lambda: cli.run(cli.redis.ping), 15, lab)
    lab.spawn("web", "web", [sys.executable, "-m", "gunicorn", "-c", "python:rest.gunicorn_conf", "rest.wsgi:app"],
              REDIS_URL=redis_url, HOST=lab.addr("web"), PORT=5000, WEB_PROCESSES=1, WEB_THREADS=32, ACCESS_LOG=0,
              **env)


def submit_counts(cli: Client, ranges: list[tuple[int, int]]) -> list[str]:
    ids = []
    for lo, hi in ranges:
        r = cli.post("/api/v1/primes", {"start": lo, "end": hi, "output": "count"})
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])
    return ids


def split(lo: int, hi: int, parts: int) -> list[tuple[int, int]]:
    """[lo, hi] as `parts` adjacent inclusive ranges."""
    edges = [lo + (hi - lo + 1) * i // parts for i in range(parts + 1)]
    return [(edges[i], edges[i + 1] - 1) for i in range(parts)]


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.timeout(180)
def test_jobs_spread_over_worker_hosts_and_survive_losing_one(lab: Lab) -> None:
    t0 = time.monotonic()
    redis_url, cli = start_redis(lab, appendonly=True)
    try:
        web_on(lab, cli, redis_url, HEARTBEAT_TIMEOUT=5, FANOUT_MIN_SECONDS=0)  # whole jobs: one host runs each
        for host in ("w1", "w2"):
            lab.spawn(host, host, [sys.executable, "worker.py", "--workers", "1", "--url", redis_url],
                      HEARTBEAT_TIMEOUT=5)

        wait_until("the web to answer the client", lambda: cli.get("/readyz").ok, 30, lab)

        def two_workers() -> list[dict[str, Any]] | None:
            listed = cli.get("/api/v1/workers").json()
            return listed if len(listed) == 2 else None

        workers = wait_until("both worker hosts to register", two_workers, 60, lab)

        def live_host_of(worker_name: str) -> str:
            """Worker names are <hostname>.<pid>; the namespaces share the hostname, so go by pid."""
            pid = int(worker_name.rsplit(".", 1)[1])
            hosts = [h for h in ("w1", "w2") if pid in netns_pids(lab.ns(h))]
            assert len(hosts) == 1, (worker_name, hosts)
            return hosts[0]

        # Taken while every worker lives: once w2 is gone its pids are nowhere.
        known = {w["name"]: live_host_of(w["name"]) for w in workers}
        assert sorted(known.values()) == ["w1", "w2"]

        def host_of(worker_name: str) -> str:
            return known.get(worker_name) or live_host_of(worker_name)
        startup = time.monotonic() - t0

        # 1. Spread: short jobs, all queued at once, finish on both hosts.
        first = submit_counts(cli, split(0, 10**9, 8))

        def all_finished(ids: list[str]) -> list[dict[str, str]] | None:
            fields = [cli.job_fields(i) for i in ids]
            bad = [f for f in fields if f.get("status") in ("failed", "canceled")]
            assert not bad, bad
            return fields if all(f.get("status") == "finished" for f in fields) else None

        done = wait_until("the first jobs to finish", lambda: all_finished(first), 60, lab, every=0.2)
        ran_on = [host_of(f["worker"]) for f in done]
        assert set(ran_on) == {"w1", "w2"}, f"all jobs ran on one host: {ran_on}"
        counts = [cli.get(f"/api/v1/jobs/{i}").json()["result"]["count"] for i in first]
        assert sum(counts) == PI_1E9

        # 2. Losing a host: longer jobs; once each host runs one, cut w2 off mid-job.
        second = submit_counts(cli, split(10**9 + 1, 10**10, 2))

        def one_running_on_each() -> dict[str, str] | None:
            running = {}
            for job_id in second:
                f = cli.job_fields(job_id)
                if f.get("status") == "started" and f.get("worker"):
                    running[host_of(f["worker"])] = job_id
            return running if set(running) == {"w1", "w2"} else None

        running = wait_until("a job running on each worker host", one_running_on_each, 60, lab, every=0.05)
        victim = running["w2"]

        def victim_checkpointed() -> bool:
            f = cli.job_fields(victim)
            assert f["status"] == "started", f"the job on w2 ended before it could be cut off: {f}"
            return json.loads(f.get("progress") or "null") is not None and json.loads(f["progress"])["done"] > 0

        wait_until("the job on w2 to make progress", victim_checkpointed, 30, lab, every=0.02)
        lab.cut_off("w2")
        cut_at = time.monotonic()
        before = cli.get(f"/api/v1/jobs/{victim}").json()
        assert before["status"] == "started", before

        done = wait_until("every job to finish on the remaining host", lambda: all_finished(second), 120, lab,
                          every=0.25)
        recovered_in = time.monotonic() - cut_at
        jobs = {i: cli.get(f"/api/v1/jobs/{i}").json() for i in second}
        assert all(j["status"] == "finished" for j in jobs.values()), jobs
        assert sum(j["result"]["count"] for j in jobs.values()) == PI_1E10 - PI_1E9
        by_id = dict(zip(second, done, strict=True))
        assert host_of(by_id[victim]["worker"]) == "w1", "the lost host's job must finish on the other host"
        assert jobs[victim]["attempt"] == 1, jobs[victim]
        print(f"\nmulti-host: startup {startup:.1f} s, job lost with w2 finished on w1 "
              f"{recovered_in:.1f} s after the cut (progress at the cut: {before['progress']}), "
              f"durations {[j['duration_ms'] for j in jobs.values()]} ms, "
              f"total {time.monotonic() - t0:.1f} s")
    finally:
        cli.close()


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_scheduling_holds_across_two_worker_hosts(lab: Lab) -> None:
    """tests/test_scheduling.py's claims with one worker on each of two hosts: with both on a long sieve,
    cheap jobs finish within Prefer: wait; a second client's job is next; position and the queue's
    listing agree. Two clients are two token owners."""
    from rest.auth import hash_token

    tokens = {"alice": "a-" + os.urandom(16).hex(), "bob": "b-" + os.urandom(16).hex()}
    alice, bob = ({"Authorization": f"Bearer {tokens[o]}"} for o in ("alice", "bob"))
    redis_url, cli = start_redis(lab, appendonly=False)
    try:
        web_on(lab, cli, redis_url, API_TOKENS=",".join(f"{o}:{hash_token(t)}" for o, t in tokens.items()),
               FANOUT_MIN_SECONDS=0)  # whole jobs: this test checks the order whole runs start in
        for host in ("w1", "w2"):  # no preemption here: the order checked below must hold still
            lab.spawn(host, host, [sys.executable, "worker.py", "--workers", "1", "--url", redis_url],
                      PREEMPT_QUANTUM=0)
        wait_until("the web to answer the client", lambda: cli.get("/readyz").ok, 30, lab)
        wait_until("both worker hosts to register", lambda: len(cli.get("/api/v1/workers", alice).json()) == 2,
                   60, lab)

        def post(headers: dict[str, str], path: str, body: dict[str, Any], wait: int = 0) -> dict[str, Any]:
            r = cli.post(path, body, {**headers, **({"Prefer": f"wait={wait}"} if wait else {})})
            assert r.status_code in (200, 202), r.text
            return r.json()

        def status(headers: dict[str, str], job_id: str) -> dict[str, Any]:
            return cli.get(f"/api/v1/jobs/{job_id}", headers).json()

        base = 3 * 10**11
        longs = [post(alice, "/api/v1/primes", {"start": base + k * 10**11, "end": base + k * 10**11 + 5 * 10**10,
                                                "output": "count"})["id"] for k in range(2)]
        wait_until("a long sieve on each host", lambda: all(status(alice, i)["status"] == "started" for i in longs),
                   60, lab)
        for n in range(5):
            job = post(bob, "/api/v1/fibonacci", {"n": 20_000 + n}, wait=10)
            assert job["status"] == "finished", f"a cheap job waited behind the long ones: {job}"
        backlog = [post(alice, "/api/v1/primes", {"start": k * 10**9, "end": (k + 1) * 10**9 - 1,
                                                  "output": "count"})["id"] for k in range(4)]
        bobs = post(bob, "/api/v1/primes", {"start": 0, "end": 10**7, "output": "count"})["id"]
        assert all(status(alice, i)["status"] == "started" for i in longs)
        listed = [j["id"] for j in cli.get("/api/v1/queues/default/jobs", alice).json()["jobs"]]
        assert listed == backlog, listed  # Bob's job is not Alice's to see, but it goes first:
        assert status(bob, bobs)["position"] == 0
        assert [status(alice, i)["position"] for i in backlog] == [1, 2, 3, 4]
        # One worker comes free: Bob runs none, Alice one, so Bob's job is next (when both came free at once,
        # both clients would run none and Alice's older job would go first, as the rule says).
        cli.post(f"/api/v1/jobs/{longs[0]}/cancel", {}, alice)
        b = wait_until("Bob's job to finish", lambda: (j := status(bob, bobs))["status"] == "finished" and j, 60, lab)
        # Alice's backlog goes through the one free worker, one job after another: with two free workers,
        # two dispatches a moment apart could record their starts the other way round (8 ms seen at load).
        ends = [wait_until("Alice's backlog to finish", lambda i=i: (j := status(alice, i))["status"] == "finished"
                           and j, 90, lab) for i in backlog]
        assert status(alice, longs[1])["status"] == "started", "the other host was busy throughout"
        cli.post(f"/api/v1/jobs/{longs[1]}/cancel", {}, alice)
        assert b["started_at"] <= min(j["started_at"] for j in ends), (b, ends)
        assert [j["started_at"] for j in ends] == sorted(j["started_at"] for j in ends)  # Alice's, in her order
    finally:
        cli.close()


#: pi(3 * 10**10), by `primesieve 0 3e10 -c` (Debian's primesieve 11 and 12 agree).
PI_3E10 = 1_300_005_926


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_one_wide_job_runs_on_both_worker_hosts_at_once(lab: Lab) -> None:
    """Fan-out across hosts: with splitting on (FANOUT_MIN_SECONDS at its default), one wide count runs as
    parts on the worker of each host at the same time, and its client sees one job with the right count."""
    redis_url, cli = start_redis(lab, appendonly=False)
    try:
        web_on(lab, cli, redis_url)  # FANOUT_MIN_SECONDS unset: wide jobs split, as deployed
        for host in ("w1", "w2"):
            lab.spawn(host, host, [sys.executable, "worker.py", "--workers", "1", "--url", redis_url])
        wait_until("the web to answer the client", lambda: cli.get("/readyz").ok, 30, lab)
        workers = wait_until("both worker hosts to register",
                             lambda: ws if len(ws := cli.get("/api/v1/workers").json()) == 2 else None, 60, lab)
        host_by_pid = {pid: h for h in ("w1", "w2") for pid in netns_pids(lab.ns(h))}
        # Worker names are <hostname>.<pid>, and the namespaces share the hostname: go by pid.
        hosts = {w["name"]: host_by_pid.get(int(w["name"].rsplit(".", 1)[1])) for w in workers}
        assert sorted(hosts.values()) == ["w1", "w2"], hosts

        r = cli.post("/api/v1/primes", {"start": 0, "end": 3 * 10**10, "output": "count"})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        seen_together = False

        def finished() -> dict[str, Any] | None:
            nonlocal seen_together
            busy = {hosts.get(w["name"]) for w in cli.get("/api/v1/workers").json() if w["current_job"] == job_id}
            seen_together = seen_together or busy == {"w1", "w2"}
            j = cli.get(f"/api/v1/jobs/{job_id}").json()
            assert j["status"] not in ("failed", "canceled"), j
            return j if j["status"] == "finished" else None

        got = wait_until("the wide job to finish", finished, 240, lab, every=0.05)
        assert got["result"] == {"count": PI_3E10}, got
        part_ids = cli.job_fields(job_id)["parts"].split(",")
        assert got["stats"]["parts"] == len(part_ids) >= 4
        parts = [cli.job_fields(p) for p in part_ids]
        assert all(p["status"] == "finished" for p in parts), parts
        runs = [(hosts.get(p["worker"]) or host_by_pid.get(int(p["worker"].rsplit(".", 1)[1])),
                 float(p["started_at"]), float(p["ended_at"])) for p in parts]
        assert {h for h, _, _ in runs} == {"w1", "w2"}, f"every part ran on one host: {runs}"
        # At once: a part on w1 and a part on w2 were running at the same moment (their runs overlap).
        overlap = max(min(e1, e2) - max(s1, s2) for h1, s1, e1 in runs for h2, s2, e2 in runs if h1 < h2)
        assert overlap > 0, f"the hosts ran their parts one after the other: {runs}"
        span = max(e for _, _, e in runs) - min(s for _, s, _ in runs)
        print(f"\nwide job over two hosts: {len(parts)} parts, "
              f"{sum(h == 'w1' for h, _, _ in runs)} on w1 and {sum(h == 'w2' for h, _, _ in runs)} on w2, "
              f"work {sum(e - s for _, s, e in runs):.1f} s in {span:.1f} s of wall time, longest overlap "
              f"{overlap:.1f} s, both hosts seen busy with it at one poll: {seen_together}")
    finally:
        cli.close()
