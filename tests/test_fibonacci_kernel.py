"""The Fibonacci kernel against identities of F(n): exact checks at sizes a plain recurrence cannot reach."""

from __future__ import annotations

import gmpy2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobs.context import LocalContext, Stop
from jobs.kernels.fibonacci import fibonacci
from jobs.kernels.fibonacci import run as run_fibonacci

ns = st.integers(min_value=1, max_value=20_000)


def fib(n: int) -> gmpy2.mpz:
    """The kernel's decimal string read back by GMP (int() refuses over 4300 digits, and is quadratic)."""
    return gmpy2.mpz(fibonacci(n))


def reference(n: int) -> int:
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


@pytest.mark.parametrize("n", [0, 1, 2, 3, 10, 92, 93, 94, 1000, 4785])
def test_small_values_match_the_recurrence(n: int) -> None:
    assert fib(n) == reference(n)


@settings(max_examples=60, deadline=None)
@given(m=ns, n=ns)
def test_addition_identity(m: int, n: int) -> None:
    """fib(m+n) = fib(m) fib(n+1) + fib(m-1) fib(n)."""
    assert fib(m + n) == fib(m) * fib(n + 1) + fib(m - 1) * fib(n)


@settings(max_examples=60, deadline=None)
@given(n=ns)
def test_cassini_identity(n: int) -> None:
    """fib(n-1) fib(n+1) - fib(n)^2 = (-1)^n."""
    assert fib(n - 1) * fib(n + 1) - fib(n) ** 2 == (-1) ** n


@settings(max_examples=60, deadline=None)
@given(m=ns, n=ns)
def test_gcd_identity(m: int, n: int) -> None:
    """gcd(fib(m), fib(n)) = fib(gcd(m, n))."""
    assert gmpy2.gcd(fib(m), fib(n)) == fib(gmpy2.gcd(m, n))


def test_doubling_at_a_large_n() -> None:
    """fib(2k) = fib(k) (2 fib(k+1) - fib(k)) at k = 500,000, a 209,000-digit value."""
    k = 500_000
    fk, fk1 = fib(k), fib(k + 1)
    assert fib(2 * k) == fk * (2 * fk1 - fk)


def test_kernel_writes_value_digits_and_progress() -> None:
    ctx = LocalContext()
    run_fibonacci({"n": 1000}, ctx)
    value = ctx.output.value
    assert value == {"n": 1000, "digits": 209, "value": str(reference(1000))}
    assert ctx.progress_calls[0] == (0, 1) and ctx.progress_calls[-1] == (1, 1)


def test_kernel_stops_at_its_checkpoint_before_computing() -> None:
    ctx = LocalContext(stop_after=1)
    with pytest.raises(Stop):
        run_fibonacci({"n": 10**6}, ctx)
    assert ctx.output.value is None
