"""The prime library against independent references: a plain sieve, a numpy segmented sieve, gmpy2, primesieve."""

from __future__ import annotations

import itertools
import math
from functools import lru_cache

import gmpy2
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from primes import (
    MAX_N,
    SEGMENT_BYTES,
    SEGMENT_SPAN,
    Segment,
    count_primes,
    primes_between,
    segment_bounds,
    segment_index,
    sieve_segment,
)
from primes.blocks import BIG_MIN, BLOCK

#: Everything below this is checked against one plain (non-segmented) sieve of Eratosthenes.
SMALL_LIMIT = 1 << 22
#: Widest window the reference segmented sieve is asked for.
MAX_WIDTH = 200_000


@lru_cache(maxsize=1)
def plain_sieve(limit: int = SMALL_LIMIT) -> np.ndarray:
    """is_prime[n] for n <= limit, by the textbook sieve."""
    is_prime = np.ones(limit + 1, dtype=bool)
    is_prime[:2] = False
    for p in range(2, math.isqrt(limit) + 1):
        if is_prime[p]:
            is_prime[p * p::p] = False
    return is_prime


@lru_cache(maxsize=1)
def small_primes() -> np.ndarray:
    return np.flatnonzero(plain_sieve()).astype(np.int64)


def reference(lo: int, hi: int) -> np.ndarray:
    """Primes in [lo, hi] by a straightforward numpy segmented sieve (independent of primes/)."""
    if hi < lo or hi < 2:
        return np.zeros(0, dtype=np.int64)
    if hi <= SMALL_LIMIT:
        return np.flatnonzero(plain_sieve()[lo:hi + 1]).astype(np.int64) + lo
    assert math.isqrt(hi) <= SMALL_LIMIT
    mark = np.ones(hi - lo + 1, dtype=bool)
    for p in small_primes()[: np.searchsorted(small_primes(), math.isqrt(hi), side="right")]:
        p = int(p)
        first = max(p * p, -(-lo // p) * p)
        mark[first - lo::p] = False
    mark[: max(0, 2 - lo)] = False
    return np.flatnonzero(mark).astype(np.int64) + lo


def near_boundary() -> st.SearchStrategy[int]:
    """Numbers within a small distance of a segment boundary k*SEGMENT_SPAN."""
    return st.builds(lambda k, d: max(0, k * SEGMENT_SPAN + d),
                     st.integers(0, 40), st.integers(-3000, 3000))


def ranges() -> st.SearchStrategy[tuple[int, int]]:
    """(lo, hi) pairs biased to the interesting places: 0..small, segment edges, big numbers."""
    # Hypothesis favours small integers, so large starts are built from a spread-out high part.
    big = st.builds(lambda a, b: a * 1_000_000 + b, st.integers(1, 10**6 - 1), st.integers(0, 10**6 - 1))
    lo = st.one_of(st.integers(0, 40), st.integers(0, SMALL_LIMIT), near_boundary(), big)
    width = st.one_of(st.integers(-2, 40), st.integers(0, 5000), st.integers(0, MAX_WIDTH))
    return st.builds(lambda a, w: (a, a + w), lo, width)


def check(lo: int, hi: int) -> None:
    expected = reference(lo, hi)
    got = primes_between(lo, hi)
    assert got.dtype == np.uint64
    np.testing.assert_array_equal(got, expected)
    assert count_primes(lo, hi) == expected.size


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ranges())
@example((0, 0)).via("zero")
@example((0, 1)).via("zero and one")
@example((2, 2)).via("two")
@example((0, 2)).via("up to two")
@example((1, 7)).via("wheel primes")
@example((3, 5)).via("three to five")
@example((7, 7)).via("first wheel prime")
@example((6, 6)).via("composite point")
@example((0, 200)).via("presieved primes themselves")
@example((SEGMENT_SPAN - 1, SEGMENT_SPAN)).via("one boundary")
@example((SEGMENT_SPAN - 100, 2 * SEGMENT_SPAN + 100)).via("two boundaries")
def test_matches_reference(bounds: tuple[int, int]) -> None:
    lo, hi = bounds
    assume(hi < 0 or math.isqrt(hi) <= SMALL_LIMIT)
    check(lo, hi)


def test_random_large_windows() -> None:
    """Seeded windows spread over [1e9, 1e12], where every base prime up to 10^6 is in play."""
    rng = np.random.default_rng(12345)
    for lo in rng.integers(10**9, 10**12 - MAX_WIDTH, size=8):
        check(int(lo), int(lo) + int(rng.integers(0, MAX_WIDTH)))


@settings(max_examples=60, deadline=None)
@given(st.integers(0, SMALL_LIMIT - 2), st.integers(0, 3000), st.booleans())
def test_endpoints_on_primes(a: int, width: int, at_end: bool) -> None:
    """Ranges that start or end exactly on a prime keep that prime."""
    primes = small_primes()
    p = int(primes[min(np.searchsorted(primes, a), primes.size - 1)])
    lo, hi = (max(0, p - width), p) if at_end else (p, p + width)
    got = primes_between(lo, hi)
    assert p in got
    check(lo, hi)


def test_empty_and_tiny() -> None:
    assert count_primes(5, 4) == 0
    assert primes_between(5, 4).size == 0
    assert count_primes(0, -2) == 0
    assert primes_between(0, -2).dtype == np.uint64
    assert count_primes(0, 0) == count_primes(1, 1) == 0
    assert primes_between(2, 2).tolist() == [2]
    assert primes_between(0, 30).tolist() == [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]
    assert count_primes(24, 28) == 0
    with pytest.raises(ValueError):
        count_primes(-1, 5)


@pytest.mark.parametrize(("n", "pi"), [(10**6, 78498), (10**7, 664579), (10**8, 5761455),
                                       (10**9, 50847534)])
def test_known_pi(n: int, pi: int) -> None:
    assert count_primes(0, n) == pi


def test_pi_1e8_list() -> None:
    got = primes_between(0, 10**8)
    assert got.size == 5761455
    assert got[-1] == 99999989
    assert np.all(np.diff(got) > 0)


def test_near_1e12_against_gmpy2() -> None:
    lo, hi = 10**12 - 10**6, 10**12
    expected = []
    p = gmpy2.next_prime(lo - 1)
    while p <= hi:
        expected.append(int(p))
        p = gmpy2.next_prime(p)
    got = primes_between(lo, hi)
    assert got.tolist() == expected
    assert count_primes(lo, hi) == len(expected)


def test_segment_grid() -> None:
    assert segment_index(0) == 0
    assert segment_index(SEGMENT_SPAN - 1) == 0
    assert segment_index(SEGMENT_SPAN) == 1
    assert segment_bounds(3) == (3 * SEGMENT_SPAN, 4 * SEGMENT_SPAN - 1)
    assert SEGMENT_SPAN == 30 * SEGMENT_BYTES


@pytest.mark.parametrize("k", [0, 1, 7, segment_index(10**12)])
def test_segment_round_trip(k: int) -> None:
    seg = sieve_segment(k)
    lo, hi = segment_bounds(k)
    assert seg.k == k
    assert seg.count == count_primes(lo, hi)
    data = seg.to_bytes()
    assert len(data) == SEGMENT_BYTES
    again = Segment.from_bytes(k, data)
    assert again.count == seg.count
    assert again.to_bytes() == data
    assert again.count_in(lo, hi) == seg.count
    rng = np.random.default_rng(k)
    for _ in range(5):
        a, b = sorted(int(x) for x in rng.integers(lo, hi + 1, size=2))
        b = min(b, a + 300_000)
        expected = primes_between(a, b)
        np.testing.assert_array_equal(again.primes_in(a, b), expected)
        assert again.count_in(a, b) == expected.size
    # Sub-ranges are clipped to the segment.
    assert again.count_in(lo - 1000, lo + 1000) == count_primes(lo, lo + 1000)
    np.testing.assert_array_equal(again.primes_in(hi - 500, hi + 500), primes_between(hi - 500, hi))
    assert again.count_in(hi + 1, hi + 100) == 0


def test_segment_zero_small_numbers() -> None:
    seg = sieve_segment(0)
    assert seg.primes_in(0, 50).tolist() == [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47]
    assert seg.count_in(0, 5) == 3
    assert seg.count_in(4, 4) == 0
    assert seg.primes_in(5, 7).tolist() == [5, 7]


def test_from_bytes_rejects_wrong_size() -> None:
    with pytest.raises(ValueError):
        Segment.from_bytes(0, b"\x00" * 10)


# --- The bucket sieve (primes >= BIG_MIN) and the whole 64-bit range -------------------------------

BLOCK_SPAN = 30 * BLOCK


def gmpy2_primes(lo: int, hi: int) -> list[int]:
    """Primes in [lo, hi] by gmpy2.next_prime: independent of the sieve, fine for windows of ~10^5."""
    out = []
    p = gmpy2.next_prime(max(lo, 1) - 1) if lo > 0 else gmpy2.mpz(2)
    while p <= hi:
        out.append(int(p))
        p = gmpy2.next_prime(p)
    return out


def check_gmpy2(lo: int, hi: int) -> None:
    expected = gmpy2_primes(lo, hi)
    got = primes_between(lo, hi)
    assert got.dtype == np.uint64
    assert got.tolist() == expected
    assert count_primes(lo, hi) == len(expected)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(10**13 // BLOCK_SPAN, 10**16 // BLOCK_SPAN), st.integers(-20_000, 20_000),
       st.integers(0, 40_000))
@example(10**15 // BLOCK_SPAN, -1, 1).via("a block boundary below 10^15, 2 numbers")
@example(10**16 // BLOCK_SPAN, -20_000, 40_000).via("straddling a boundary at 10^16")
def test_block_boundaries_with_big_primes(k: int, offset: int, width: int) -> None:
    """Windows straddling block boundaries where the bucket sieve holds most sieving primes."""
    lo = max(0, k * BLOCK_SPAN + offset)
    assert math.isqrt(lo) >= BIG_MIN
    check_gmpy2(lo, lo + width)


def test_wide_count_equals_sum_of_parts() -> None:
    """State carried across ~60 blocks (buckets refilled, ring wrapped) equals fresh sieves per part."""
    lo, hi = 10**15 - 17, 10**15 + 60 * BLOCK_SPAN + 12345
    cuts = [lo, lo + BLOCK_SPAN // 3, lo + 7 * BLOCK_SPAN, lo + 7 * BLOCK_SPAN + 1, hi - 5 * BLOCK_SPAN - 29, hi + 1]
    parts = sum(count_primes(a, b - 1) for a, b in itertools.pairwise(cuts))
    assert count_primes(lo, hi) == parts


@pytest.mark.parametrize(("lo", "hi", "count"), [
    # Reference counts printed by Debian's primesieve 11 (`primesieve LO HI -t1`), an independent sieve.
    (10**12 - 10**9, 10**12, 36192139),
    (10**15 - 10**9, 10**15, 28954129),
])
def test_known_window_counts(lo: int, hi: int, count: int) -> None:
    assert count_primes(lo, hi) == count


@pytest.mark.parametrize(("n", "pi"), [(10**10, 455052511)])
def test_known_pi_1e10(n: int, pi: int) -> None:
    assert count_primes(0, n) == pi


@pytest.mark.parametrize(("lo", "hi", "with_count"), [
    (MAX_N - 60_000, MAX_N, False),  # the last numbers of the 64-bit range (counted in the segment test)
    (2**63 - 30_000, 2**63 + 30_000, False),  # where int64 would overflow
    (2**32 - 3_000, 2**32 + 3_000, True),  # where the sieving primes' squares pass 2^64
])
def test_top_of_64_bit_range(lo: int, hi: int, with_count: bool) -> None:
    """Each sieve up here positions ~2*10^8 primes (seconds), so each window is sieved once."""
    expected = gmpy2_primes(lo, hi)
    got = primes_between(lo, hi)
    assert got.dtype == np.uint64
    values = got.tolist()
    assert values == expected
    assert all(type(p) is int for p in values)
    if hi == MAX_N:
        assert values[-1] == 2**64 - 59  # the largest prime below 2^64
    if with_count:
        assert count_primes(lo, hi) == len(expected)


def test_beyond_64_bits_is_rejected() -> None:
    with pytest.raises(ValueError):
        count_primes(0, MAX_N + 1)
    with pytest.raises(ValueError):
        primes_between(MAX_N, MAX_N + 1)


def test_top_segment_is_clipped_at_max_n() -> None:
    """The grid's last segment runs past 2^64 - 1: its bitmap has nothing beyond MAX_N."""
    k = segment_index(MAX_N)
    _, hi = segment_bounds(k)
    assert hi > MAX_N
    seg = Segment.from_bytes(k, sieve_segment(k).to_bytes())
    window = gmpy2_primes(MAX_N - 10**5, MAX_N)
    assert seg.primes_in(MAX_N - 10**5, hi).tolist() == window
    assert seg.count_in(MAX_N - 10**5, hi) == len(window) == count_primes(MAX_N - 10**5, MAX_N)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(40, 63), st.integers(0, 2**40), st.integers(0, 3_000))
def test_random_windows_up_to_2_64(bits: int, low: int, width: int) -> None:
    """Windows anywhere from 2^40 to 2^64, where every big prime is positioned by the exact
    quotient correction in primes._bucket.add_primes."""
    lo = min((1 << bits) + low * ((1 << bits) >> 40), MAX_N - width)
    check_gmpy2(lo, lo + width)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(BIG_MIN, 1 << 27), st.integers(0, 200))
@example(BIG_MIN, 0).via("the smallest big prime's square")
@example(2**32 - 5, 100).via("the largest prime below 2^32, whose square is near 2^64")
def test_square_of_the_largest_big_prime(x: int, w: int) -> None:
    """P^2 for the largest sieving prime P of a range is crossed off only by P itself, the last
    bit of the big primes' bitmap; that bitmap is read a uint64 word at a time, its tail zeroed,
    so every byte count of its last block (mod 8) must still reach P."""
    p = int(gmpy2.next_prime(x - 1))
    lo, hi = p * p - w, min(p * p + w, MAX_N)
    assert math.isqrt(hi) == p
    got = primes_between(lo, hi).tolist()
    assert p * p not in got
    assert got == gmpy2_primes(lo, hi)


def test_bucket_pool_grows_mid_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pool sized far too small grows while buckets are in use (ids and write indices stay valid)."""
    import primes.blocks as blocks

    grown = []
    real_grow = blocks.BlockSieve._grow
    monkeypatch.setattr(blocks, "_expected_entries", lambda width, root: 0)
    monkeypatch.setattr(blocks.BlockSieve, "_grow", lambda self: grown.append(1) or real_grow(self))
    assert count_primes(10**15 - 10**9, 10**15) == 28954129  # primesieve 11, as in test_known_window_counts
    assert len(grown) >= 3


def test_big_primes_entering_block_by_block() -> None:
    """Across 2^36 = BIG_MIN^2 the big primes enter the buckets a few per block (add_primes stops at
    pmax mid-batch and resumes next block); fresh sieves per part enter them all at once."""
    lo, hi = 2**36 - 10**8, 2**36 + 3 * 10**9
    assert BIG_MIN**2 == 2**36
    cuts = [lo, 2**36 - 1, 2**36 + 7 * BLOCK_SPAN + 5, 2**36 + 10**9, hi + 1]
    whole = count_primes(lo, hi)
    assert whole == sum(count_primes(a, b - 1) for a, b in itertools.pairwise(cuts))
    assert whole == 124_132_213  # Debian's primesieve 11: `primesieve 68619476736 71719476736 -t1`
