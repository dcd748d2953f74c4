"""Lua scripts run with EVALSHA, loaded on the first NOSCRIPT, as redis-py's Script does."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from redis import Redis
from redis.exceptions import NoScriptError


class LuaScript:
    """redis-py's Script minus its per-call `isinstance(client, Pipeline)`: Pipeline derives from a
    typing.Protocol, so that check takes the slow protocol path, about 2 % of the web's CPU per submit."""

    def __init__(self, conn: Redis, source: str) -> None:
        self.conn = conn
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def __call__(self, keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> Any:
        try:
            return self.conn.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:  # a restarted or failed-over server: load it, once
            self.sha = self.conn.script_load(self.source)
            return self.conn.evalsha(self.sha, len(keys), *keys, *args)


class Commands:
    """Records Redis commands for a replay script (see jobs.service.packed), with the method names and
    argument order of redis-py's, as a never-executed pipeline did at several times the CPU per command."""

    def __init__(self) -> None:
        #: (args, options) pairs, the shape of a redis-py pipeline's command_stack.
        self.command_stack: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def _add(self, *args: Any) -> None:
        self.command_stack.append((args, {}))

    def delete(self, *keys: Any) -> None:
        self._add("DEL", *keys)

    def expire(self, key: Any, seconds: int) -> None:
        self._add("EXPIRE", key, seconds)

    def zadd(self, key: Any, mapping: dict[Any, float]) -> None:
        self._add("ZADD", key, *(x for member, score in mapping.items() for x in (score, member)))

    def zrem(self, key: Any, *members: Any) -> None:
        self._add("ZREM", key, *members)

    def hincrby(self, key: Any, field: Any, amount: int = 1) -> None:
        self._add("HINCRBY", key, field, amount)

    def hincrbyfloat(self, key: Any, field: Any, amount: float) -> None:
        self._add("HINCRBYFLOAT", key, field, amount)

    def incrby(self, key: Any, amount: int = 1) -> None:
        self._add("INCRBY", key, amount)

    def ltrim(self, key: Any, start: int, end: int) -> None:
        self._add("LTRIM", key, start, end)

    def publish(self, channel: Any, message: Any) -> None:
        self._add("PUBLISH", channel, message)

    # What rq's Queue.enqueue_call sends through the pipeline it is given (rq 3.0).

    #: rq asks before it calls multi(); a replay script is atomic already.
    explicit_transaction = True

    def multi(self) -> None:
        """Nothing to open: a replay script is atomic already."""

    def hset(self, key: Any, field: Any = None, value: Any = None, mapping: dict[Any, Any] | None = None) -> None:
        pairs = [field, value] if field is not None else []
        for item in (mapping or {}).items():
            pairs.extend(item)
        self._add("HSET", key, *pairs)

    def sadd(self, key: Any, *members: Any) -> None:
        self._add("SADD", key, *members)

    def rpush(self, key: Any, *values: Any) -> None:
        self._add("RPUSH", key, *values)

    def lpush(self, key: Any, *values: Any) -> None:
        self._add("LPUSH", key, *values)

    def persist(self, key: Any) -> None:
        self._add("PERSIST", key)
