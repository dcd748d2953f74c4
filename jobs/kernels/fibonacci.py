"""F(n) exact with GMP: gmpy2.fib is O(M(n)) and digits() is subquadratic, unlike int->str."""

from __future__ import annotations

from typing import Any

import gmpy2

from jobs.context import KernelContext


def fibonacci(n: int) -> str:
    """Decimal digits of F(n)."""
    return gmpy2.fib(n).digits(10)


def run(params: dict[str, Any], ctx: KernelContext) -> None:
    """Compute F(n); the only checkpoint is before the single uninterruptible GMP call."""
    n = params["n"]
    ctx.progress(0, 1)
    ctx.checkpoint(None)
    value = fibonacci(n)
    ctx.progress(1, 1)
    ctx.output.write_value({"n": n, "digits": len(value), "value": value})
