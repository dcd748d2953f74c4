"""Every touch of another library's private internals, one module per library, each version-checked.

    rq.py           rq 3.0.0: the JSON serializer lookup, the worker's fast-queue inline path (the
                    dequeue step, the worker's state and hash fields), enqueueing into a command recorder
    redis.py        redis-py 8.1.0: the lean connection pool, the Sentinel read fix, pub/sub replies read
                    straight off the connection, a pipeline's recorded commands
    cachelib.py     cachelib 0.17.0: the request cache's key prefix, client and timeout rules
    flask_rq2.py    Flask-RQ2 18.3: its connection, made by Crunch's redis_from_url, reset per app
    rq_dashboard.py rq-dashboard 0.9.0: its module settings and per-request connection hook
    gunicorn.py     gunicorn 27.0.1: the gthread worker's header deadline

Each module compares the installed version with the one it was written for (requirements.txt's pin)
when it is imported. An override with a public fallback then falls back to it (slower, never wrong);
one without refuses to start, with a message naming the override, the version it was written for
and the one installed. Nothing else in the tree touches these libraries' private names.
"""

from __future__ import annotations

import importlib.metadata
import logging

log = logging.getLogger("crunch.compat")


class IncompatibleVersion(RuntimeError):
    """An override of a library's internals meets a version it was not written for, and has no fallback."""


def installed(dist: str) -> str:
    """The installed version of a distribution (a seam tests monkeypatch)."""
    return importlib.metadata.version(dist)


def written_for(dist: str, version: str, override: str, *, fallback: str | None) -> bool:
    """Whether `override` (of `dist`'s internals, written for `version`) may be used here.

    fallback: what runs instead (public API) when the installed version differs; None means there is
    none, and a different version raises IncompatibleVersion naming the override and both versions.
    """
    found = installed(dist)
    if found == version:
        return True
    if fallback is None:
        raise IncompatibleVersion(
            f"{override} was written for {dist}=={version}, but {dist}=={found} is installed: install "
            f"{dist}=={version} (requirements.txt), or update the override in jobs/compat and its pin")
    log.warning("%s was written for %s==%s, but %s==%s is installed; using %s instead",
                override, dist, version, dist, found, fallback)
    return False
