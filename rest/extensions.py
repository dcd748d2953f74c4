"""Flask extensions, created unbound and attached in create_app (flaskr style)."""

from __future__ import annotations

import re
import threading
from dataclasses import replace
from typing import Any

from flask import Flask, current_app
from flask_caching import Cache
from flask_caching.backends.rediscache import RedisCache
from flask_rq2 import RQ
from redis import Redis
from werkzeug.routing import BaseConverter

from jobs.service import JobService
from jobs.store.connection import redis_from_url
from jobs.store.events import EventHub
from jobs.store.keys import QUEUES, REQUEST_CACHE_PREFIX
from jobs.store.request_cache import JsonSerializer, RequestCache
from jobs.types.registry import JOB_TYPES


class CrunchRedis(Redis):
    """Flask-RQ2's RQ_CONNECTION_CLASS: its from_url is redis_from_url, so RQ_REDIS_URL may name a Sentinel
    service and every client gets the same pool (Flask-RQ2 calls `RQ_CONNECTION_CLASS.from_url(url)`)."""

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> Redis:  # type: ignore[override]
        return redis_from_url(url, **kwargs)


cache = Cache()


class JsonRedisCache(RedisCache, RequestCache):
    """Flask-Caching backend: cachelib's Redis cache with JSON values and compare-and-set helpers."""

    serializer = JsonSerializer()

    @classmethod
    def factory(cls, app: Flask, config: dict[str, Any], args: list[Any], kwargs: dict[str, Any]) -> JsonRedisCache:
        """Flask-Caching's, with the client from redis_from_url (cachelib takes a client as `host`)."""
        if config.get("CACHE_KEY_PREFIX"):
            kwargs["key_prefix"] = config["CACHE_KEY_PREFIX"]
        kwargs["host"] = redis_from_url(config["CACHE_REDIS_URL"], **(config.get("CACHE_OPTIONS") or {}))
        made = cls(*args, **kwargs)
        made.given_client = kwargs["host"]  # Flask-Caching's __init__ skips RequestCache's
        return made


class Crunch:
    """Per-app handles: the job service and this process's event hub."""

    def __init__(self, app: Flask, rq: RQ) -> None:
        self.rq = rq
        self.hub = EventHub(rq.connection)
        self.service = JobService(
            rq.connection, cache.cache, replace(app.config["SETTINGS"], result_ttl=app.config["RESULT_TTL"]),
            queue_factory=rq.get_queue, hub=self.hub,
        )
        self.wait_slots = threading.BoundedSemaphore(app.config["WAIT_SLOTS"])


class JobTypeConverter(BaseConverter):
    """`<job_type:name>` in a route: the name of a type registered when the app was built, so the API's
    and the pages' per-type routes come from the registry (jobs.types.registry) and any other
    segment falls through to the app's own routes or a 404."""

    def __init__(self, url_map: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(url_map, *args, **kwargs)
        names = sorted(JOB_TYPES, key=len, reverse=True)
        self.regex = "|".join(re.escape(n) for n in names) if names else r"(?!)"


def init_app(app: Flask) -> None:
    """Bind RQ and the request cache to this app's Redis; teach the URL map the job type names."""
    app.url_map.converters["job_type"] = JobTypeConverter
    app.config.setdefault("RQ_REDIS_URL", app.config["REDIS_URL"])
    app.config["RQ_QUEUE_CLASS"] = "jobs.store.queues.JsonQueue"
    app.config["RQ_JOB_CLASS"] = "jobs.store.queues.JsonJob"
    app.config["RQ_QUEUES"] = list(QUEUES)
    app.config["RQ_CONNECTION_CLASS"] = "rest.extensions.CrunchRedis"
    app.config.setdefault("CACHE_TYPE", "rest.extensions.JsonRedisCache")
    app.config.setdefault("CACHE_REDIS_URL", app.config["REDIS_URL"])
    app.config.setdefault("CACHE_KEY_PREFIX", REQUEST_CACHE_PREFIX)
    app.config.setdefault("CACHE_DEFAULT_TIMEOUT", 0)
    # One Flask-RQ2 object per app: it keeps its connection and queues, and a new app (tests make
    # several, each with its own Redis URL) must not inherit the previous app's.
    rq = RQ(app)
    cache.init_app(app)
    app.extensions["crunch"] = Crunch(app, rq)


def crunch() -> Crunch:
    return current_app.extensions["crunch"]


def service() -> JobService:
    return current_app.extensions["crunch"].service
