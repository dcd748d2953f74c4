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
