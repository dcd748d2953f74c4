"""A stream of sieved blocks over a byte range, with the crossing-off state kept between blocks.

Every caller (count_primes, primes_between, sieve_segment, the job kernel's grid walk)
sieves through one BlockSieve, so the work of positioning the sieving primes is paid
once per range and not once per block or grid segment: near 2^64 that positioning is a
division for each of the ~2*10^8 primes below 2^32, about 3 s.

Three kinds of sieving prime, as in primesieve (Erat{Small,Medium,Big}):
  - p <= PRESIEVE_MAX: and-ed in from precomputed byte patterns (primes._wheel.presieve);
  - p < BIG_MIN: crossed off block by block, every prime in every block (primes._wheel);
  - p >= BIG_MIN: the bucket sieve (primes._bucket), fed from a lazily sieved stream of
    primes up to isqrt(hi), so listing the primes below 2^32 never needs 1.6 GB at once.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator

import numpy as np

from primes import _bucket, _wheel

#: Largest number the sieve handles: the whole unsigned 64-bit range.
MAX_N = 2**64 - 1
#: Absolute byte holding MAX_N; bits past MAX_N in it (and bytes after it) are cleared.
TOP_BYTE = MAX_N // 30
BLOCK = _bucket.BLOCK
#: Primes from here up go to the bucket sieve: they hit a 1 MiB block (31M numbers) fewer
#: than ~7 times. Swept 2^18..2^21 on 10^9 numbers below 10^12 and 10^15: 2^20 was best
#: or within noise of it. Must exceed isqrt(2^32) = 65536 (see _prime_stream).
BIG_MIN = 1 << 20
#: Numbers per chunk of the big-sieving-prime stream (~3.5M primes, 28 MB, at a time).
PRIME_CHUNK = 30 * (1 << 21)

_PAT = (_wheel.PATTERN_BYTES, _wheel.PATTERN_INDEX)

_medium_lock = threading.Lock()
_medium: np.ndarray | None = None


def _medium_primes() -> np.ndarray:
    """Primes in (PRESIEVE_MAX, BIG_MIN) as int64, by a plain odd-only numpy sieve (cached, ~5 ms)."""
    global _medium
    if _medium is None:
        with _medium_lock:
            if _medium is None:
                n = BIG_MIN
                odd = np.ones(n // 2, dtype=bool)  # odd[i] stands for 2i+1
                odd[0] = False
                for i in range(1, (math.isqrt(n) - 1) // 2 + 1):
                    if odd[i]:
                        p = 2 * i + 1
                        odd[p * p // 2::p] = False
                ps = 2 * np.flatnonzero(odd).astype(np.int64) + 1
                _medium = ps[ps > _wheel.PRESIEVE_MAX]
    return _medium


def _prime_stream(lo: int, hi: int) -> Iterator[np.ndarray]:
    """uint64 arrays of the primes in [lo, hi], ascending, PRIME_CHUNK numbers at a time.

    hi <= 2^32 here, so these sieves use only medium primes (isqrt(2^32) < BIG_MIN): no
    recursion into another bucket sieve.
    """
    from primes.sieve import primes_between

    for a in range(lo, hi + 1, PRIME_CHUNK):
        yield primes_between(a, min(a + PRIME_CHUNK - 1, hi))


class BlockSieve:
    """Sieves absolute bytes [b0, b1] (byte j = numbers [30j, 30j+30)) in BLOCK-byte blocks, in order."""

    def __init__(self, b0: int, b1: int) -> None:
        if not 0 <= b0 <= b1 <= TOP_BYTE:
            raise ValueError(f"byte range [{b0}, {b1}] outside [0, {TOP_BYTE}]")
        self.pos = b0
        self.end = b1 + 1
        hi_lim = min(30 * b1 + 29, MAX_N)
        root = math.isqrt(hi_lim)
        medium = _medium_primes()
        self.primes = medium[:np.searchsorted(medium, root, side="right")]
        self.bases = np.empty(self.primes.size, dtype=np.int64)
        self.wis = np.empty(self.primes.size, dtype=np.int64)
        self.active = np.int64(0)
        self.buf = np.empty(BLOCK, dtype=np.uint8)
        self.big = root >= BIG_MIN
        if self.big:
            self.hi_lim = np.uint64(hi_lim)
            ring = _bucket.ring_size(root)
            self.reserve = ring + 4
            nb = 2 * self.reserve
            self.head = np.full(ring, -1, dtype=np.int32)
            self.fill = np.zeros(ring, dtype=np.int32)
            self.bnext = np.full(nb, -1, dtype=np.int32)
            self.pool = np.empty(nb * _bucket.BUCKET, dtype=np.uint64)
            self.free = np.arange(nb, dtype=np.int32)
            self.meta = np.array([nb, 0], dtype=np.int64)  # free buckets, current ring slot
            self.stream: Iterator[np.ndarray] | None = _prime_stream(BIG_MIN, root)
            self.chunk = np.zeros(0, dtype=np.uint64)
            self.ci = 0

    @property
    def done(self) -> bool:
        return self.pos >= self.end

    def _grow(self) -> None:
        """Double the bucket pool (entries never move: bucket ids stay valid)."""
        old = self.bnext.size
        nb = 2 * old
        self.bnext = np.concatenate((self.bnext, np.full(nb - old, -1, dtype=np.int32)))
        self.pool = np.concatenate((self.pool, np.empty((nb - old) * _bucket.BUCKET, dtype=np.uint64)))
        nfree = int(self.meta[0])
        free = np.empty(nb, dtype=np.int32)
        free[:nfree] = self.free[:nfree]
        free[nfree:nfree + nb - old] = np.arange(old, nb, dtype=np.int32)
        self.free = free
        self.meta[0] = nfree + nb - old

    def _add_big(self, end_byte: int) -> None:
        """Enter the big primes whose square lies below end_byte (before sieving the block ending there)."""
        while True:
            if self.ci >= self.chunk.size:
                nxt = next(self.stream, None) if self.stream is not None else None
                if nxt is None:
                    self.stream = None
                    return
                self.chunk, self.ci = nxt, 0
                continue
            self.ci = _bucket.add_primes(self.chunk, self.ci, self.pos, end_byte, self.hi_lim, self.head, self.fill,
                                         self.bnext, self.pool, self.free, self.meta, self.reserve)
            if self.ci < self.chunk.size:
                if self.meta[0] < self.reserve:
                    self._grow()
                    continue
                return

    def next_block(self, out: np.ndarray | None = None) -> tuple[np.ndarray, int, int]:
        """Sieve the next block; returns (buf, n, pos): buf[:n] holds absolute bytes [pos, pos+n).

        out, if given, must be exactly BLOCK bytes and receives the block in place of the
        internal buffer (no copy). A bit is set iff its number is prime and > 5 (the
        wheel does not store 2, 3, 5; 1 is cleared); numbers past MAX_N are cleared.
        """
        if self.done:
            raise StopIteration("BlockSieve exhausted")
        buf = self.buf if out is None else out
        n = min(BLOCK, self.end - self.pos)
        if self.big:
            self._add_big(self.pos + n)
        self.active = _wheel.sieve_block(buf, n, self.pos, self.primes, self.bases, self.wis, self.active, *_PAT)
        if self.big:
            _bucket.cross_off_big(buf, self.head, self.fill, self.bnext, self.pool, self.free, self.meta)
        pos = self.pos
        if pos + n > TOP_BYTE:
            t = TOP_BYTE - pos
            buf[t] &= sum(1 << b for b, w in enumerate(_wheel.WHEEL) if 30 * TOP_BYTE + int(w) <= MAX_N)
            buf[t + 1:n] = 0
        self.pos += n
        return buf, n, pos

    def sieve_into(self, out: np.ndarray) -> None:
        """Sieve the next out.size bytes into out (uint8), whole blocks in place.

        Bytes past the sieve's end are zeroed: the grid's last segment runs past MAX_N.
        """
        done = 0
        while done < out.size:
            if self.done:
                out[done:] = 0
                return
            if out.size - done >= BLOCK and self.end - self.pos >= BLOCK:
                self.next_block(out[done:done + BLOCK])
                done += BLOCK
            else:
                buf, n, _ = self.next_block()
                if n > out.size - done:
                    raise ValueError("out must end where a block ends")
                out[done:done + n] = buf[:n]
                done += n
