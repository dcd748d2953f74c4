"""The request cache (canonical request -> job id) with a JSON serializer instead of pickle.

The web process reaches it through Flask-Caching; workers use the same cachelib class
directly, so both agree on key prefix and encoding.
"""

from __future__ import annotations

from typing import Any

import orjson
from cachelib import RedisCache
from cachelib.serializers import BaseSerializer

from jobs.compat.cachelib import expiry_seconds, key_prefix, write_client
from jobs.store.keys import REQUEST_CACHE_PREFIX
from jobs.store.scripts import RELEASE_LUA


class JsonSerializer(BaseSerializer):
    """Cache values are JSON: nothing a client sends is ever unpickled."""

    def dumps(self, value: Any, *args: Any, **kwargs: Any) -> bytes:
        return orjson.dumps(value)

    def loads(self, bvalue: bytes | None, *args: Any, **kwargs: Any) -> Any:
        if bvalue is None:
            return None
        try:
            return orjson.loads(bvalue)
        except orjson.JSONDecodeError:
            return None


class RequestCache(RedisCache):
    """cachelib RedisCache with JSON values and the compare-and-set helpers dedupe needs."""

    serializer = JsonSerializer()

    def __init__(self, host: Any = "localhost", key_prefix: str | None = None, **kwargs: Any) -> None:
        super().__init__(host=host, key_prefix=key_prefix or REQUEST_CACHE_PREFIX, **kwargs)
        self.given_client = host

    #: The Redis client this cache was built with (cachelib takes a client as `host`).
    given_client: Any = None

    @property
    def client(self) -> Any:
        """The client cachelib writes with."""
        return write_client(self, self.given_client)

    def add(self, key: str, value: Any, timeout: Any = None) -> bool:
        """Claim key atomically with its expiry in one SET NX EX (cachelib uses two calls)."""
        ttl = expiry_seconds(self, timeout)
        return bool(self.client.set(key_prefix(self) + key, self.serializer.dumps(value),
                                    nx=True, ex=ttl if ttl > 0 else None))

    def release(self, key: str, job_id: str) -> bool:
        """Forget key only while it maps to job_id, so a newer job's entry survives."""
        return bool(self.client.eval(RELEASE_LUA, 1, key_prefix(self) + key, self.serializer.dumps(job_id)))

    def full_key(self, key: str) -> str:
        """The Redis key of a cache entry, for scripts that claim it in the same step as other writes."""
        return key_prefix(self) + key

    def release_command(self, key: str, job_id: str) -> list[Any]:
        """release() as a guarded command for JobService's replay scripts (one round trip for a whole ending)."""
        full = key_prefix(self) + key
        return ["?eq", full, self.serializer.dumps(job_id), "DEL", full]

    def refresh_command(self, key: str, job_id: str, timeout: int) -> list[Any]:
        """refresh() as a guarded command for JobService's replay scripts."""
        full = key_prefix(self) + key
        return ["?eq", full, self.serializer.dumps(job_id), "EXPIRE", full, int(timeout)]


def request_cache_for(conn: Any) -> RequestCache:
    """The worker-side handle on the same cache the web process uses."""
    return RequestCache(host=conn, default_timeout=0)
