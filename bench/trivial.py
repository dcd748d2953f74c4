"""The trivial job plain RQ runs in the comparison: the same work as a small Crunch Fibonacci job."""

from __future__ import annotations

import gmpy2


def fib(n: int) -> dict[str, object]:
    """F(n) as Crunch's kernel returns it: decimal digits and their count."""
    value = gmpy2.fib(n).digits(10)
    return {"n": n, "digits": len(value), "value": value}
