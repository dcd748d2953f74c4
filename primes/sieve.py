"""Prime counting and listing with a wheel-30 segmented sieve, plus a fixed segment grid for caching.

Numbers are plain Python ints at the API and reach 2^64 - 1; listed primes are uint64
arrays (every value fits, and orjson writes them as exact JSON integers). Ranges are
inclusive [lo, hi]. The sieving itself is primes.blocks.BlockSieve (numba kernels in
primes._wheel and primes._bucket, compiled once and cached on disk).
"""

from __future__ import annotations

import time

import numpy as np

from primes import _wheel
from primes.blocks import BLOCK, MAX_N, BlockSieve, _mask_from, _mask_upto

#: Bytes of one segment's bitmap (8 numbers coprime to 30 per byte, so 30 numbers per byte).
SEGMENT_BYTES = 1 << 20
#: Numbers covered by one segment of the global grid: a 1 MiB bitmap, ~5-20 ms to sieve.
SEGMENT_SPAN = 30 * SEGMENT_BYTES
assert SEGMENT_BYTES % BLOCK == 0  # grid segments are whole blocks: BlockSieve fills them in place

_SMALL = (2, 3, 5)
_EMPTY = np.zeros(0, dtype=np.uint64)


def _check_range(lo: int, hi: int) -> None:
    """Reject what the uint64 kernels cannot represent."""
    if lo < 0:
        raise ValueError("lo must be >= 0")
    if hi > MAX_N:
        raise ValueError(f"hi must be at most {MAX_N}")


def _small_primes(lo: int, hi: int) -> list[int]:
    """2, 3 and 5, which the wheel does not store, within [lo, hi]."""
    return [p for p in _SMALL if lo <= p <= hi]


def count_primes(lo: int, hi: int) -> int:
    """Number of primes p with lo <= p <= hi (0 for an empty range)."""
    lo, hi = int(lo), int(hi)
    _check_range(lo, hi)
    if lo > hi:
        return 0
    total = len(_small_primes(lo, hi))
    b0, b1 = lo // 30, hi // 30
    sv = BlockSieve(b0, b1)
    m0, m1 = np.uint8(_mask_from(lo, b0)), np.uint8(_mask_upto(hi, b1))
    while not sv.done:
        buf, n, pos = sv.next_block()
        total += int(_wheel.count_masked(buf, 0, n - 1, m0 if pos == b0 else np.uint8(255),
                                         m1 if pos + n - 1 == b1 else np.uint8(255)))
    return total


def primes_between(lo: int, hi: int) -> np.ndarray:
    """Sorted uint64 array of the primes in [lo, hi].

    Memory is 8 bytes per prime: list wide ranges segment by segment (Segment.primes_in)
    or block by block (BlockSieve) instead.
    """
    lo, hi = int(lo), int(hi)
    _check_range(lo, hi)
    if lo > hi:
        return _EMPTY.copy()
    parts = [np.array(_small_primes(lo, hi), dtype=np.uint64)]
    b0, b1 = lo // 30, hi // 30
    sv = BlockSieve(b0, b1)
    m0, m1 = np.uint8(_mask_from(lo, b0)), np.uint8(_mask_upto(hi, b1))
    while not sv.done:
        buf, n, pos = sv.next_block()
        parts.append(_wheel.extract_masked(buf, 0, n - 1, m0 if pos == b0 else np.uint8(255),
                                           m1 if pos + n - 1 == b1 else np.uint8(255), pos))
    return np.concatenate(parts)


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
        """Sorted uint64 primes in [lo, hi] clipped to this segment."""
        small = np.array(_small_primes(max(lo, self.lo), min(hi, self.hi)), dtype=np.uint64)
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


def sieve_segment(k: int, sieve: BlockSieve | None = None) -> Segment:
    """Sieve grid segment k: from scratch, or as the next SEGMENT_BYTES of `sieve`.

    A sieve passed in must be positioned at the segment's first byte (segment_sieve()
    makes one for a run of segments): that keeps the big primes' positions across
    segments, which near 2^64 costs seconds to recompute.
    """
    lo, _ = segment_bounds(k)
    if lo > MAX_N:
        raise ValueError(f"segment {k} starts past MAX_N={MAX_N}")
    if sieve is None:
        sieve = segment_sieve(k, k)
    elif sieve.pos != k * SEGMENT_BYTES:
        raise ValueError(f"sieve is at byte {sieve.pos}, segment {k} starts at byte {k * SEGMENT_BYTES}")
    bits = np.empty(SEGMENT_BYTES, dtype=np.uint8)
    sieve.sieve_into(bits)
    return Segment(k, bits)


def segment_sieve(k0: int, k1: int) -> BlockSieve:
    """A BlockSieve for grid segments k0..k1 (the last one clipped at MAX_N)."""
    top = min((k1 + 1) * SEGMENT_BYTES - 1, MAX_N // 30)
    sieve = BlockSieve(k0 * SEGMENT_BYTES, top)
    return sieve


def warmup() -> float:
    """Compile (or load from numba's disk cache) every kernel now, so no job pays for it; returns seconds."""
    t0 = time.perf_counter()
    count_primes(0, 1000)
    primes_between(0, 1000)
    seg = sieve_segment(0)
    seg.count_in(0, 1000)
    seg.primes_in(0, 1000)
    # Above (2^20)^2 the bucket sieve's kernels run too (a few ms: primes up to ~3.2*10^6).
    count_primes(10**13, 10**13 + 1000)
    return time.perf_counter() - t0
