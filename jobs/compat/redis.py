"""redis-py internals Crunch overrides, written for redis-py 8.1.0 (requirements.txt).

- LeanConnectionPool / LeanSentinelConnectionPool: three per-command costs removed (see there):
  `get_connection.__wrapped__`, `_checkpid`, and connect()'s retry closure on an open `_sock`.
  Measured when written: 7 % + 4 % of a web process's CPU on the submit path, 7 % of a worker's on
  trivial jobs. Fallback: redis-py's own ConnectionPool and SentinelConnectionPool.
- FixedSentinelConnection: read_response(disconnect_on_error=True), a fix for redis-py 8.1's Sentinel
  connection kept open after an interrupted read. Fallback: redis-py's SentinelManagedConnection.
- pubsub_reader: replies read straight off the subscribed connection (`can_read`, `read_response`),
  ~30 us less per event than get_message in every web process. Fallback: PubSub.get_message.
- pipeline_commands: the commands queued on a never-executed pipeline (`command_stack`), for tests
  that compare Crunch's command recorder with redis-py's. No fallback (tests only; raises when called).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import redis
import redis.sentinel
from redis.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.sentinel import SentinelManagedConnection

from jobs.compat import IncompatibleVersion, written_for

VERSION = "8.1.0"
#: Whether the overrides below are in use (the installed redis-py is the one they were written for).
ACTIVE = written_for("redis", VERSION, "the lean connection pool and pub/sub reader (jobs.compat.redis)",
                     fallback="redis-py's own pool, Sentinel connection and PubSub.get_message")


class FixedSentinelConnection(SentinelManagedConnection):
    """redis-py's Sentinel connection, closed when a read is interrupted (a signal in BLPOP) as a plain one is:
    redis-py 8.1 keeps it, with the reply still due, and the next command (rq's stop) then waits out the BLPOP."""

    def read_response(self, *args: Any, disconnect_on_error: bool = True, **kw: Any) -> Any:
        return super().read_response(*args, disconnect_on_error=disconnect_on_error, **kw)


class _ConnectedShortcut:
    """connect() that returns at once on an open socket, as redis-py's does only after building a retry
    closure for it (on every command: 4 % of a web process's CPU on the submit path)."""

    _sock: Any

    def connect(self) -> None:
        if self._sock is None:
            super().connect()  # type: ignore[misc]


class LeanConnection(_ConnectedShortcut, Connection):
    pass


class LeanSSLConnection(_ConnectedShortcut, SSLConnection):
    pass


class LeanUnixDomainSocketConnection(_ConnectedShortcut, UnixDomainSocketConnection):
    pass


_LEAN_CONNECTIONS = {Connection: LeanConnection, SSLConnection: LeanSSLConnection,
                     UnixDomainSocketConnection: LeanUnixDomainSocketConnection}


#: This process's id, kept current across os.fork() (gunicorn, multiprocessing and rq's work horses
#: all fork through it), so the pool's fork check needs no getpid() system call per command.
_pid = os.getpid()


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


class LeanConnectionPool(redis.ConnectionPool):
    """redis-py 8.1's pool minus three per-command costs: the deprecated-arguments check wrapped around
    get_connection, which inspects the call's arguments (7 % of a web process's CPU on the submit path);
    connect()'s retry closure on an open socket (see _ConnectedShortcut); and a getpid() system call in
    each get and release of a connection (7 % of a worker's CPU on trivial jobs)."""

    get_connection = getattr(redis.ConnectionPool.get_connection, "__wrapped__", redis.ConnectionPool.get_connection)

    def _checkpid(self) -> None:
        """redis-py's fork check (which resets the pool in a forked child), taken only after a fork."""
        if self.pid != _pid:
            super()._checkpid()

    def __init__(self, connection_class: type[Connection] = Connection, **kwargs: Any) -> None:
        super().__init__(connection_class=_LEAN_CONNECTIONS.get(connection_class, connection_class), **kwargs)


class LeanSentinelConnectionPool(redis.sentinel.SentinelConnectionPool):
    """SentinelConnectionPool minus the same per-command check (see LeanConnectionPool)."""

    get_connection = getattr(redis.sentinel.SentinelConnectionPool.get_connection, "__wrapped__",
                             redis.sentinel.SentinelConnectionPool.get_connection)


#: What jobs.store.connection builds clients with.
ConnectionPool: type[redis.ConnectionPool] = LeanConnectionPool if ACTIVE else redis.ConnectionPool
SentinelConnectionPool: type[redis.sentinel.SentinelConnectionPool] = (
    LeanSentinelConnectionPool if ACTIVE else redis.sentinel.SentinelConnectionPool)
SentinelConnection: type[SentinelManagedConnection] = FixedSentinelConnection if ACTIVE else SentinelManagedConnection


def pubsub_reader(pubsub: redis.client.PubSub) -> Callable[[float], list[Any] | None]:
    """read(timeout): the next reply of a subscribed PubSub as [kind, channel, data] (kind: b"message",
    b"subscribe", ...), or None when none came within timeout."""
    if ACTIVE:
        conn = pubsub.connection

        def read(timeout: float) -> list[Any] | None:
            if not conn.can_read(timeout=timeout):
                return None
            return conn.read_response(disconnect_on_error=False, push_request=True, timeout=timeout)

        return read

    def read_public(timeout: float) -> list[Any] | None:
        msg = pubsub.get_message(timeout=timeout)
        if msg is None:
            return None
        kind = msg["type"]
        return [kind.encode() if isinstance(kind, str) else kind, msg["channel"], msg["data"]]

    return read_public


def pipeline_commands(pipe: Any) -> list[tuple[Any, ...]]:
    """The commands queued on a redis-py pipeline that was never executed."""
    if not ACTIVE:
        raise IncompatibleVersion(f"pipeline_commands reads redis-py {VERSION}'s Pipeline.command_stack")
    return [args for args, _options in pipe.command_stack]
