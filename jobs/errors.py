"""Errors the job layer raises, which the HTTP layer maps to problem+json."""

from __future__ import annotations

from typing import Any


class InvalidParams(Exception):
    """A well-formed request that fails validation or a limit (HTTP 422)."""

    def __init__(self, errors: list[dict[str, Any]], detail: str | None = None) -> None:
        self.errors = errors
        self.detail = detail or "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors
        )
        super().__init__(self.detail)


def invalid(loc: list[Any], msg: str) -> InvalidParams:
    """Shorthand for a single-field validation error."""
    return InvalidParams([{"loc": loc, "msg": msg}])
