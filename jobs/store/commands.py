"""Sending Lua scripts and recording the commands they replay: the runner (LuaScript, send), the
command recorder (Commands, packed) and a chain's held-back counters (Tally).

The scripts themselves are jobs.store.scripts', each headed by what its KEYS and ARGV hold. This is
the machinery around them, written here rather than taken from redis-py because of what each part
below measured.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Sequence
from typing import Any

from redis import Redis
from redis.exceptions import NoScriptError

log = logging.getLogger("crunch.scripts")


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

    def after(self, deferred: list[Call], keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> Any:
        """This script's call, sent in one round trip behind the `deferred` calls (which are sent, and the
        list emptied): a worker's chain of fast runs sends a run's finish with the next run's start."""
        calls = [*deferred, (self, keys, args)]
        deferred.clear()
        reply = send(calls)[-1]
        if isinstance(reply, Exception):
            raise reply
        return reply


#: A script call held back to ride with a later one: (script, keys, args).
Call = tuple[LuaScript, Sequence[Any], Sequence[Any]]


def send(calls: Sequence[Call], first: Sequence[Sequence[Any]] = ()) -> list[Any]:
    """Script calls in one round trip (a pipeline, each call atomic on its own, in order); returns their
    replies, an error as its exception. A call that meets NOSCRIPT (a restarted server) is loaded and sent
    again on its own; any other error of a call but the last is logged here (each call is a job's own
    step: its job stays where it was, and the reaper's checks take it from there). first: plain commands
    sent ahead of the calls in the same round trip (a chain's Tally), their replies not returned."""
    if not calls:
        return []
    conn = calls[0][0].conn
    pipe = conn.pipeline(transaction=False)
    for cmd in first:
        pipe.execute_command(*cmd)
    for script, keys, args in calls:
        pipe.evalsha(script.sha, len(keys), *keys, *args)
    replies = pipe.execute(raise_on_error=False)[len(first):]
    for i, ((script, keys, args), reply) in enumerate(zip(calls, replies, strict=True)):
        if isinstance(reply, NoScriptError):
            try:
                replies[i] = script(keys, args)
            except Exception as exc:  # noqa: BLE001 - reported like any other failed call
                replies[i] = reply = exc
        if isinstance(replies[i], Exception) and i < len(calls) - 1:
            log.warning("a deferred script call failed: %s (keys %s)", replies[i], list(keys)[:1])
    return replies


class Commands:
    """Records Redis commands for a replay script (see packed()), with the method names and
    argument order of redis-py's, as a never-executed pipeline did at several times the CPU per command."""

    def __init__(self) -> None:
        #: The recorded commands, each as its arguments (name first).
        self.commands: list[tuple[Any, ...]] = []

    def _add(self, *args: Any) -> None:
        self.commands.append(args)

    def add(self, *args: Any) -> None:
        """Record one raw command (name first)."""
        self.commands.append(args)

    def extend(self, commands: Iterable[Sequence[Any]]) -> None:
        """Record raw commands (each name first)."""
        self.commands.extend(tuple(c) for c in commands)

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

    # Also what rq's Queue.enqueue_call sends through the pipeline it is given (see jobs.compat.rq).

    def hset(self, key: Any, field: Any = None, value: Any = None, mapping: dict[Any, Any] | None = None) -> None:
        pairs = [field, value] if field is not None else []
        for item in (mapping or {}).items():
            pairs.extend(item)
        last = self.commands[-1] if self.commands else None
        if last is not None and last[0] == "HSET" and last[1] == key:  # rq sets a new job's status, then the rest
            self.commands[-1] = (*last, *pairs)
        else:
            self._add("HSET", key, *pairs)

    def sadd(self, key: Any, *members: Any) -> None:
        self._add("SADD", key, *members)

    def rpush(self, key: Any, *values: Any) -> None:
        self._add("RPUSH", key, *values)

    def lpush(self, key: Any, *values: Any) -> None:
        self._add("LPUSH", key, *values)

    def persist(self, key: Any) -> None:
        self._add("PERSIST", key)


class Tally:
    """Counter increments held back across a worker's chain of fast runs and written once, at the chain's
    end (Lifecycle.flush): the statistics every finish keeps (per queue, per type, per minute, the
    duration histogram) and rq's per-worker count are 8 commands a run inside its finish step; a chain of
    up to FAST_TAKE runs writes each distinct counter once instead. Measured (`python -m bench --only
    batches`, 10,000 trivial jobs, idle machine): Redis commands per job 80 -> 61 with the other cuts of
    that commit. What it costs: those counters trail the jobs' own states by at most one chain (a few ms);
    a worker killed in the middle of a chain loses that chain's increments (never a job's state); and a
    finish that loses its compare-and-set (the job deleted in the same milliseconds) is still counted.
    Methods as Commands' (hincrby, incrby, hincrbyfloat, expire, add), so terminal_commands writes to either."""

    def __init__(self) -> None:
        self._ints: dict[tuple[Any, ...], int] = {}
        self._floats: dict[tuple[Any, ...], float] = {}
        self._expire: dict[Any, int] = {}

    def __bool__(self) -> bool:
        return bool(self._ints or self._floats)

    def hincrby(self, key: Any, field: Any, amount: int = 1) -> None:
        self._ints[("HINCRBY", key, field)] = self._ints.get(("HINCRBY", key, field), 0) + amount

    def incrby(self, key: Any, amount: int = 1) -> None:
        self._ints[("INCRBY", key)] = self._ints.get(("INCRBY", key), 0) + amount

    def hincrbyfloat(self, key: Any, field: Any, amount: float) -> None:
        self._floats[("HINCRBYFLOAT", key, field)] = self._floats.get(("HINCRBYFLOAT", key, field), 0.0) + amount

    def expire(self, key: Any, seconds: int) -> None:
        """The key's expiry, set after its increments."""
        self._expire[key] = seconds

    def add(self, *args: Any) -> None:
        """One raw increment (name first): HINCRBY key field n or INCRBY key n."""
        if args[0] == "HINCRBY":
            self.hincrby(*args[1:])
        elif args[0] == "INCRBY":
            self.incrby(*args[1:])
        else:
            raise ValueError(f"not an increment: {args[0]}")

    def take(self) -> list[tuple[Any, ...]]:
        """The held increments as commands (then forgotten)."""
        out = [(*k, v) for k, v in self._ints.items()] + [(*k, v) for k, v in self._floats.items()]
        out += [("EXPIRE", k, s) for k, s in self._expire.items()]
        self._ints.clear()
        self._floats.clear()
        self._expire.clear()
        return out


def recorded(pipe: Commands) -> list[tuple[Any, ...]]:
    """The commands recorded on a Commands recorder."""
    return pipe.commands


def packed(commands: Iterable[Sequence[Any]]) -> list[Any]:
    """ARGV tail for the replay scripts: each command as its argument count, then its arguments."""
    out: list[Any] = []
    for args in commands:
        out.append(len(args))
        out.extend(args)
    return out
