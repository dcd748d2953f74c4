"""Prime counting and listing with a wheel-30 segmented sieve, plus a fixed segment grid for caching.

Numbers are plain Python ints at the API and int64 inside; ranges are inclusive [lo, hi].
The heavy loops are numba kernels in primes._wheel (compiled once, cached on disk).
"""

from __future__ import annotations

import math
import threading
import time

import numpy as np

from primes import _wheel

#: Largest supported number: keeps p*p and 30*byte far from int64 overflow and base primes small.
MAX_N = 10**15
#: Bytes of one segment's bitmap (8 numbers coprime to 30 per byte, so 30 numbers per byte).
SEGMENT_BYTES = 1 << 20
#: Numbers covered by one segment of the global grid: a 1 MiB bitmap, ~5-20 ms to sieve.
SEGMENT_SPAN = 30 * SEGMENT_BYTES

_WHEEL = [int(w) for w in _wheel.WHEEL]
_SMALL = (2, 3, 5)
_PAT = (_wheel.PATTERN_BYTES, _wheel.PATTERN_INDEX)

_base_lock = threading.Lock()
_base_primes = np.zeros(0, dtype=np.int64)
_base_limit = 0


def _primes_upto_simple(n: int) -> np.ndarray:
    """Odd-only numpy sieve for the base primes; only ever runs up to sqrt(MAX_N)."""
    if n < 2:
        return np.zeros(0, dtype=np.int64)
    odd = np.ones((n - 1) // 2 + 1, dtype=bool)  # odd[i] stands for 2i+1
    odd[0] = False
    for i in range(1, (math.isqrt(n) - 1) // 2 + 1):
        if odd[i]:
            p = 2 * i + 1
            odd[p * p // 2::p] = False
    return np.concatenate(([2], 2 * np.flatnonzero(odd) + 1)).astype(np.int64)


def sieving_primes(hi: int) -> np.ndarray:
    """Primes in (PRESIEVE_MAX, isqrt(hi)]: the ones crossed off explicitly when sieving up to hi."""
    global _base_primes, _base_limit
    r = math.isqrt(hi)
    if r > _base_limit:
        with _base_lock:
            if r > _base_limit:
                # Grow geometrically (capped near sqrt(MAX_N)) but never below what is asked.
                limit = max(r, min(max(2 * _base_limit, 1 << 20), math.isqrt(MAX_N) + 1))
                _base_primes = _primes_upto_simple(limit)
                _base_limit = limit
    bp = _base_primes
    return bp[np.searchsorted(bp, _wheel.PRESIEVE_MAX, side="right"):np.searchsorted(bp, r, side="right")]


def _check_range(lo: int, hi: int) -> None:
    """Reject what the int64 kernels cannot represent."""
    if lo < 0:
        raise ValueError("lo must be >= 0")
    if hi > MAX_N:
        raise ValueError(f"hi must be at most {MAX_N}")


def _mask_from(lo: int, byte: int) -> int:
    """Bits of `byte` whose number is >= lo."""
    return sum(1 << b for b, w in enumerate(_WHEEL) if 30 * byte + w >= lo)


def _mask_upto(hi: int, byte: int) -> int:
    """Bits of `byte` whose number is <= hi."""
    return sum(1 << b for b, w in enumerate(_WHEEL) if 30 * byte + w <= hi)


def _small_primes(lo: int, hi: int) -> list[int]:
    """2, 3 and 5, which the wheel does not store, within [lo, hi]."""
    return [p for p in _SMALL if lo <= p <= hi]


def count_primes(lo: int, hi: int) -> int:
    """Number of primes p with lo <= p <= hi (0 for an empty range)."""
    lo, hi = int(lo), int(hi)
    _check_range(lo, hi)
    small = len(_small_primes(lo, hi))
    lo = max(lo, 7)
    if lo > hi:
        return small
    b0, b1 = lo // 30, hi // 30
    return small + int(_wheel.count_range(b0, b1, np.uint8(_mask_from(lo, b0)),
                                          np.uint8(_mask_upto(hi, b1)), sieving_primes(hi), *_PAT))


def _sieve_bytes(b0: int, b1: int) -> np.ndarray:
    """Wheel bitmap of absolute bytes [b0, b1] (bit set = prime, 2, 3 and 5 not included)."""
    out = np.empty(b1 - b0 + 1, dtype=np.uint8)
    _wheel.sieve_into(out, b0, sieving_primes(30 * b1 + 29), *_PAT)
    return out


def primes_between(lo: int, hi: int) -> np.ndarray:
    """Sorted int64 array of the primes in [lo, hi]; int64 because every value is < 2**63.

    Memory is (hi - lo) / 30 bytes of bitmap plus 8 bytes per prime: list wide ranges
    segment by segment (Segment.primes_in) instead.
    """
    lo, hi = int(lo), int(hi)
    _check_range(lo, hi)
    small = np.array(_small_primes(lo, hi), dtype=np.int64)
    lo = max(lo, 7)
    if lo > hi:
        return small
    b0, b1 = lo // 30, hi // 30
    bits = _sieve_bytes(b0, b1)
    found = _wheel.extract_masked(bits, 0, b1 - b0, np.uint8(_mask_from(lo, b0)),
                                  np.uint8(_mask_upto(hi, b1)), b0)
    return np.concatenate((small, found)) if small.size else found


def segment_index(n: int) -> int:
    """Grid segment holding n."""
    if n < 0:
        raise ValueError("n must be >= 0")
    return int(n) // SEGMENT_SPAN


def segment_bounds(k: int) -> tuple[int, int]:
    """Inclusive number range [lo, hi] of grid segment k."""
    if k < 0:
        raise ValueError("k must be >= 0")
    return k * SEGMENT_SPAN, (k + 1) * SEGMENT_SPAN - 1


class Segment:
    """One sieved grid segment: a wheel-30 bitmap that jobs can store and reuse."""

    __slots__ = ("bits", "count", "k")

    def __init__(self, k: int, bits: np.ndarray, count: int | None = None) -> None:
        if bits.dtype != np.uint8 or bits.shape != (SEGMENT_BYTES,):
            raise ValueError(f"a segment bitmap is {SEGMENT_BYTES} uint8 bytes")
        self.k = k
        self.bits = bits
        #: Primes in the whole segment, including 2, 3 and 5 for segment 0.
        self.count = count if count is not None else self._count_all()

    def _count_all(self) -> int:
        return int(_wheel.count_bits(self.bits, 0, SEGMENT_BYTES)) + (3 if self.k == 0 else 0)

    @property
    def lo(self) -> int:
        return self.k * SEGMENT_SPAN

    @property
    def hi(self) -> int:
        return self.lo + SEGMENT_SPAN - 1

    def to_bytes(self) -> bytes:
        """The 1 MiB bitmap: bit b of byte j set iff lo + 30j + WHEEL[b] is prime."""
        return self.bits.tobytes()

    @classmethod
    def from_bytes(cls, k: int, data: bytes, count: int | None = None) -> Segment:
        """Rebuild from to_bytes(); the count is recomputed (a fast popcount) unless given."""
        if len(data) != SEGMENT_BYTES:
            raise ValueError(f"segment data must be {SEGMENT_BYTES} bytes, got {len(data)}")
        # A writable copy: read-only arrays would make numba compile every kernel a second time.
        return cls(k, np.frombuffer(data, dtype=np.uint8).copy(), count)

    def _clip(self, lo: int, hi: int) -> tuple[int, int] | None:
        """[lo, hi] ∩ this segment ∩ [7, ∞), or None if empty."""
        lo, hi = max(int(lo), self.lo, 7), min(int(hi), self.hi)
        return (lo, hi) if lo <= hi else None

    def count_in(self, lo: int, hi: int) -> int:
        """Primes in [lo, hi] clipped to this segment."""
        small = len(_small_primes(max(lo, self.lo), min(hi, self.hi)))
        clipped = self._clip(lo, hi)
        if clipped is None:
            return small
        lo, hi = clipped
        base = self.k * SEGMENT_BYTES
        b0, b1 = lo // 30, hi // 30
        return small + int(_wheel.count_masked(self.bits, b0 - base, b1 - base,
                                               np.uint8(_mask_from(lo, b0)), np.uint8(_mask_upto(hi, b1))))

    def primes_in(self, lo: int, hi: int) -> np.ndarray:
        """Sorted int64 primes in [lo, hi] clipped to this segment."""
        small = np.array(_small_primes(max(lo, self.lo), min(hi, self.hi)), dtype=np.int64)
        clipped = self._clip(lo, hi)
        if clipped is None:
            return small
        lo, hi = clipped
        base = self.k * SEGMENT_BYTES
        b0, b1 = lo // 30, hi // 30
        found = _wheel.extract_masked(self.bits, b0 - base, b1 - base, np.uint8(_mask_from(lo, b0)),
                                      np.uint8(_mask_upto(hi, b1)), base)
        return np.concatenate((small, found)) if small.size else found

    def __repr__(self) -> str:
        return f"Segment(k={self.k}, count={self.count})"


def sieve_segment(k: int) -> Segment:
    """Sieve grid segment k from scratch."""
    lo, hi = segment_bounds(k)
    if lo > MAX_N:
        raise ValueError(f"segment {k} starts past MAX_N={MAX_N}")
    bits = np.empty(SEGMENT_BYTES, dtype=np.uint8)
    _wheel.sieve_into(bits, k * SEGMENT_BYTES, sieving_primes(hi), *_PAT)
    return Segment(k, bits)


def warmup() -> float:
    """Compile (or load from numba's disk cache) every kernel now, so no job pays for it; returns seconds."""
    t0 = time.perf_counter()
    count_primes(0, 1000)
    primes_between(0, 1000)
    seg = sieve_segment(0)
    seg.count_in(0, 1000)
    seg.primes_in(0, 1000)
    return time.perf_counter() - t0
