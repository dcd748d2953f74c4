"""Redis Sentinel in REDIS_URL: the URL parses one way for every component, and a real primary,
replica and sentinel (valkey-server from the wheel) carry Crunch's web and workers through a failover
(the primary is killed; the sentinel promotes the replica)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from redis import Redis
from redis.exceptions import RedisError

from infra.embedded_redis import free_port, server_binary
from infra.processes import Api, Web, Workers
from jobs.store.connection import SentinelConnection, SentinelURL, parse_sentinel_url, redis_from_url
from jobs.store.keys import JOB_KEY

SERVICE = "mymaster"

# -- the URL ------------------------------------------------------------------------------------------


def test_a_sentinel_url_names_hosts_service_db_and_passwords() -> None:
    s = parse_sentinel_url("redis+sentinel://:p%40ss@10.0.0.1:26379,sentinel-b,[::1]:26380/mymaster/3"
                           "?sentinel_password=s%3Acret")
    assert s == SentinelURL([("10.0.0.1", 26379), ("sentinel-b", 26379), ("::1", 26380)], "mymaster", 3,
                            None, "p@ss", "s:cret")
    assert (s.password, s.sentinel_password) == ("p@ss", "s:cret")
    bare = parse_sentinel_url("redis+sentinel://h:1/svc")
    assert (bare.db, bare.username, bare.password, bare.sentinel_password) == (0, None, None, None)
    assert parse_sentinel_url("redis+sentinel://me:pw@h:1/svc/").username == "me"
    assert "pw" not in repr(parse_sentinel_url("redis+sentinel://me:pw@h:1/svc/"))


@pytest.mark.parametrize(("url", "why"), [
    ("redis+sentinel:///mymaster", "sentinel host is missing"),
    ("redis+sentinel://a:1,,b:2/mymaster", "sentinel host is missing"),
    ("redis+sentinel://a:port/mymaster", "port of sentinel 'a:port'"),
    ("redis+sentinel://a:99999/mymaster", "port of sentinel 'a:99999'"),
    ("redis+sentinel://:secret@a:1", "service name"),
    ("redis+sentinel://a:1/mymaster/zero", "database 'zero' is not a number"),
    ("redis+sentinel://a:1/mymaster/0/extra", "more than a service name"),
    ("redis+sentinel://a:1/mymaster?password=x", "unknown query option 'password'"),
    ("redis://a:1/0", "scheme"),
])
def test_a_malformed_sentinel_url_says_what_is_wrong(url: str, why: str) -> None:
    with pytest.raises(ValueError, match="expected redis\\+sentinel://") as info:
        parse_sentinel_url(url)
    assert why in str(info.value)
    assert "secret" not in str(info.value)


def test_the_factory_builds_a_sentinel_client_or_a_plain_one() -> None:
    client = redis_from_url("redis+sentinel://:pw@a:1/mymaster/4?sentinel_password=sp", socket_timeout=3)
    pool: Any = client.connection_pool
    assert pool.service_name == "mymaster" and pool.is_master and pool.connection_class is SentinelConnection
    assert pool.connection_kwargs["db"] == 4 and pool.connection_kwargs["password"] == "pw"
    sentinel = pool.sentinel_manager.sentinels[0].connection_pool.connection_kwargs
    assert (sentinel["host"], sentinel["port"], sentinel["password"], sentinel["socket_timeout"]) == ("a", 1, "sp", 3)
    plain = redis_from_url("redis://:pw@h:7/5").connection_pool.connection_kwargs
    assert (plain["host"], plain["port"], plain["db"], plain["password"]) == ("h", 7, 5, "pw")


# -- a primary, a replica and a sentinel ----------------------------------------------------------------


def _until(what: str, check: Callable[[], Any], timeout: float = 20, every: float = 0.1) -> Any:
    """Poll check() until it returns something truthy (errors count as not yet)."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except (RedisError, requests.RequestException, AssertionError) as exc:
            last = exc
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what} (last error: {last!r})")


class Cluster:
    """valkey-server processes: a primary, a replica of it, and one sentinel (quorum 1) watching them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ports = {"a": free_port(), "b": free_port()}
        self.sentinel_port = free_port()
        self.procs: list[subprocess.Popen[bytes]] = []
        self.servers: dict[str, subprocess.Popen[bytes]] = {}

    def _server(self, name: str, *extra: str) -> subprocess.Popen[bytes]:
        d = self.root / name
        d.mkdir(exist_ok=True)
        proc = subprocess.Popen([server_binary(), "--port", str(self.ports[name]), "--bind", "127.0.0.1",
                                 "--dir", str(d), "--appendonly", "no", "--save", "", "--protected-mode", "no",
                                 "--repl-diskless-sync-delay", "0",
                                 "--logfile", str(d / "server.log"), *extra], start_new_session=True)
        self.procs.append(proc)
        self.servers[name] = proc
        return proc

    def start(self) -> Cluster:
        self._server("a")
        self._server("b", "--replicaof", "127.0.0.1", str(self.ports["a"]))
        # Synced before the sentinel starts, so its first look at the primary already lists the replica.
        _until("the replica to sync", lambda: self.node("b").info("replication")["master_link_status"] == "up")
        conf = self.root / "sentinel.conf"  # sentinel rewrites its own config: a file of ours
        conf.write_text(f"port {self.sentinel_port}\nbind 127.0.0.1\ndir {self.root}\n"
                        f"logfile {self.root / 'sentinel.log'}\n"
                        f"sentinel monitor {SERVICE} 127.0.0.1 {self.ports['a']} 1\n"
                        f"sentinel down-after-milliseconds {SERVICE} 1000\n"
                        f"sentinel failover-timeout {SERVICE} 5000\n")
        proc = subprocess.Popen([server_binary(), str(conf), "--sentinel"], start_new_session=True)
        self.procs.append(proc)
        try:
            _until("the sentinel to answer", lambda: self.sentinel().ping(), timeout=5)
        except AssertionError:
            self.stop()
            if proc.poll() is not None:
                pytest.skip(f"{server_binary()} cannot run in sentinel mode (exit {proc.returncode})")
            raise
        _until("the sentinel to see a healthy replica", self._replica_ready)
        return self

    def _replica_ready(self) -> bool:
        replicas = self.sentinel().execute_command("SENTINEL", "REPLICAS", SERVICE)
        return any(r[b"flags"] == b"slave" and r[b"master-link-status"] == b"ok" for r in replicas)

    def kill(self, name: str) -> None:
        """SIGKILL one data node: nothing flushed, no goodbye to its clients."""
        proc = self.servers[name]
        proc.kill()
        proc.wait()

    def node(self, name: str) -> Redis:
        return Redis(port=self.ports[name], socket_timeout=5)

    def sentinel(self) -> Redis:
        return Redis(port=self.sentinel_port, socket_timeout=5)

    def master_port(self) -> int:
        return int(self.sentinel().execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)[1])

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel_port}/{SERVICE}/0"

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("sentinel")).start()
    yield c
    c.stop()


def test_the_factory_follows_the_sentinel_to_the_primary(cluster: Cluster) -> None:
    conn = redis_from_url(cluster.url)
    assert conn.set("crunch:sentinel-probe", "1")
    assert conn.info("server")["tcp_port"] == cluster.master_port() == cluster.ports["a"]
    pubsub = conn.pubsub()
    pubsub.subscribe("crunch:sentinel-probe")  # the event hub and rq's command listener subscribe like this
    assert _until("the subscription", lambda: pubsub.get_message(timeout=1))["type"] == "subscribe"
    pubsub.close()


@pytest.mark.e2e
def test_jobs_run_across_a_sentinel_failover(cluster: Cluster, tmp_path: Path) -> None:
    workers = Workers(cluster.url, tmp_path, count=1, name="sentinel-workers", HEARTBEAT_TIMEOUT=5).start()
    web = Web(cluster.url, tmp_path, WEB_PROCESSES=1)
    try:
        web.start()
        api = Api(web.url)
        ready = api.get("/readyz")
        assert ready.status_code == 200 and ready.json()["redis"] == "ok", ready.text
        r = api.post("/api/v1/fibonacci", json={"n": 90}, headers={"Prefer": "wait=20"})
        assert r.status_code == 200 and r.json()["status"] == "finished", r.text
        before = r.json()
        assert before["result"]["value"] == "2880067194370816120"
        old, new = cluster.ports["a"], cluster.ports["b"]
        assert cluster.master_port() == old
        # Replication is asynchronous: make sure the replica has the job before promoting it.
        assert cluster.node("a").execute_command("WAIT", 1, 5000) >= 1

        # The primary dies (SIGKILL, as a lost host would); the sentinel sees it down after 1 s and promotes.
        cluster.kill("a")
        _until("the sentinel to name the replica primary", lambda: cluster.master_port() == new)
        _until("the new primary to take writes", lambda: cluster.node("b").info("replication")["role"] == "master")

        # In-flight requests may see one error while clients reconnect; then the old job is still there.
        def read_before() -> dict[str, Any]:
            got = api.get(f"/api/v1/jobs/{before['id']}")
            assert got.status_code == 200, got.text
            return got.json()

        again = _until("the old job to be readable", read_before)
        assert again["status"] == "finished" and again["result"] == before["result"]

        def submit_after() -> dict[str, Any]:
            got = api.post("/api/v1/fibonacci", json={"n": 91}, headers={"Prefer": "wait=10"})
            assert got.status_code in (200, 202), got.text
            return got.json()

        after = _until("a job submitted after the failover to be accepted", submit_after)
        after = api.wait_done(after["id"], timeout=30)
        assert after["status"] == "finished" and after["result"]["value"] == "4660046610375530309", after
        assert cluster.node("b").exists(JOB_KEY.format(id=after["id"])), "the new job is not on the new primary"
        ready = _until("readyz after the failover", lambda: (r := api.get("/readyz")).status_code == 200 and r)
        assert ready.json()["redis"] == "ok"
        assert workers.alive and web.alive
        # A worker idle in BLPOP on a Sentinel connection stops promptly on SIGTERM (see SentinelConnection).
        workers.stop()
        assert "did not stop in time" not in workers.log_path.read_text(errors="replace"), workers.tail()
    finally:
        web.stop()
        workers.stop()
