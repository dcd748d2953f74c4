"""cachelib internals the request cache uses, written for cachelib 0.17.0 (the version Flask-Caching 2.5.1
brings in; requirements.txt pins Flask-Caching).

jobs.store.request_cache claims, releases and scripts its entries itself (SET NX EX in one call, compare-
and-delete), so it needs the Redis key cachelib would use for a cache key (`_get_prefix`), the client it
writes with (`_write_client`) and its timeout rule (`_normalize_timeout`). Fallback: the same rules from
cachelib's public attributes (key_prefix, default_timeout) and the client Crunch itself gave the cache.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from jobs.compat import written_for

VERSION = "0.17.0"
#: Whether cachelib's own private helpers are used (the installed cachelib is the one this was written for).
ACTIVE = written_for("cachelib", VERSION, "the request cache's use of cachelib internals (jobs.compat.cachelib)",
                     fallback="the same rules from cachelib's public attributes")


def key_prefix(cache: Any) -> str:
    """The prefix cachelib puts before every key of `cache`."""
    if ACTIVE:
        return cache._get_prefix()
    prefix = cache.key_prefix
    return prefix if isinstance(prefix, str) else prefix()


def write_client(cache: Any, given: Any) -> Any:
    """The Redis client `cache` writes with; `given`: the client Crunch built it with (the fallback)."""
    return cache._write_client if ACTIVE else given


def expiry_seconds(cache: Any, timeout: int | dt.timedelta | None) -> int:
    """cachelib's timeout rule: None means the default, 0 means never (returned as -1 here, as cachelib does)."""
    if ACTIVE:
        return cache._normalize_timeout(timeout)
    if timeout is None:
        timeout = cache.default_timeout
    if isinstance(timeout, dt.timedelta):
        timeout = int(timeout.total_seconds())
    return -1 if timeout == 0 else int(timeout)
