"""The one place a Redis client is made from REDIS_URL: plain Redis, TLS, a socket, or Sentinel.

`redis+sentinel://[[user]:password@]host:port[,host:port...]/service_name[/db][?sentinel_password=...]`
is the Sentinel form the `limits` library also parses (hosts, then the service name), plus an optional
database number. The URL's password is the data nodes' (primary and replicas); the sentinels get
`sentinel_password` when they require one. A port may be left out (26379).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from redis import Redis
from redis.sentinel import Sentinel

from jobs.compat.redis import ConnectionPool, SentinelConnection, SentinelConnectionPool

__all__ = ["SentinelConnection", "SentinelURL", "parse_sentinel_url", "redis_from_url"]

SENTINEL_SCHEME = "redis+sentinel"
SENTINEL_DEFAULT_PORT = 26379
SENTINEL_URL_FORMAT = f"{SENTINEL_SCHEME}://[:password@]host:port[,host:port...]/service_name[/db]"


@dataclass(frozen=True)
class SentinelURL:
    """A parsed redis+sentinel:// URL."""

    sentinels: list[tuple[str, int]]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sentinel_password: str | None = field(default=None, repr=False)


def _bad(url: str, why: str) -> ValueError:
    """A ValueError naming the expected format, without echoing the URL's secrets."""
    scheme, sep, rest = url.split("?", 1)[0].partition("://")
    shown = scheme + sep + (f"***@{rest.rpartition('@')[2]}" if "@" in rest else rest)
    return ValueError(f"bad Redis Sentinel URL {shown!r}: {why}; "
                      f"expected {SENTINEL_URL_FORMAT}")


def parse_sentinel_url(url: str) -> SentinelURL:
    """Split a redis+sentinel:// URL into sentinels, service, db and passwords; ValueError says what is wrong."""
    parts = urlsplit(url)
    if parts.scheme != SENTINEL_SCHEME:
        raise _bad(url, f"the scheme must be {SENTINEL_SCHEME}://")
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    sentinels = []
    for loc in hostlist.split(","):
        loc = loc.strip()
        if not loc:
            raise _bad(url, "a sentinel host is missing")
        sub = urlsplit(f"//{loc}")
        try:
            port = sub.port
        except ValueError:
            raise _bad(url, f"the port of sentinel {loc!r} is not a number from 0 to 65535") from None
        if not sub.hostname:
            raise _bad(url, f"sentinel {loc!r} has no host")
        sentinels.append((sub.hostname, port or SENTINEL_DEFAULT_PORT))
    segments = parts.path.strip("/").split("/") if parts.path.strip("/") else []
    if not segments:
        raise _bad(url, "the service name (the primary's name in `sentinel monitor`) is missing")
    if len(segments) > 2:
        raise _bad(url, "the path has more than a service name and a database number")
    db = 0
    if len(segments) == 2:
        if not segments[1].isdigit():
            raise _bad(url, f"the database {segments[1]!r} is not a number")
        db = int(segments[1])
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - {"sentinel_password"})
    if unknown:
        raise _bad(url, f"unknown query option {unknown[0]!r} (only sentinel_password is understood)")
    username, has_password, password = userinfo.partition(":")
    return SentinelURL(
        sentinels=sentinels, service=unquote(segments[0]), db=db, username=unquote(username) or None,
        password=unquote(password) if has_password else None,
        sentinel_password=query["sentinel_password"][-1] if "sentinel_password" in query else None,
    )


def is_sentinel_url(url: str) -> bool:
    return url.startswith(SENTINEL_SCHEME + "://")


#: Connections one client's pool may open. redis-py 8 caps a pool at 100 and raises past it, while a web
#: process serves up to WEB_THREADS (256) requests at once, each of which may hold a connection (200 event
#: streams woken together by one job did exactly that: 503s); the thread count is the real bound.
MAX_CONNECTIONS = 10_000


def redis_from_url(url: str, **kw: Any) -> Redis:
    """A client for REDIS_URL; through Sentinel its pool asks the sentinels for the primary on every reconnect."""
    kw.setdefault("max_connections", MAX_CONNECTIONS)
    if not is_sentinel_url(url):
        single = kw.pop("single_connection_client", False)
        client = Redis(connection_pool=ConnectionPool.from_url(url, **kw), single_connection_client=single)
        client.auto_close_connection_pool = True
        return client
    s = parse_sentinel_url(url)
    sentinel_kwargs = {k: v for k, v in kw.items() if k.startswith("socket_")}
    if s.sentinel_password:
        sentinel_kwargs["password"] = s.sentinel_password
    sentinel = Sentinel(s.sentinels, sentinel_kwargs=sentinel_kwargs)
    kw.setdefault("connection_class", SentinelConnection)
    kw.setdefault("connection_pool_class", SentinelConnectionPool)
    return sentinel.master_for(s.service, db=s.db, username=s.username, password=s.password, **kw)
