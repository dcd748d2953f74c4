"""A stream of sieved blocks over a byte range, with the crossing-off state kept between blocks.

Every caller (count_primes, primes_between, sieve_segment, the job kernel's grid walk)
sieves through one BlockSieve, so the work of positioning the sieving primes is paid
once per range and not once per block or grid segment: near 2^64 that positioning is a
division for each of the ~2*10^8 primes below 2^32, about 1-2 s.

Three kinds of sieving prime, as in primesieve (Erat{Small,Medium,Big}):
  - p <= PRESIEVE_MAX: and-ed in from precomputed byte patterns (primes._wheel.presieve);
  - p < BIG_MIN: crossed off block by block, every prime in every block (primes._wheel);
  - p >= BIG_MIN: the bucket sieve (primes._bucket), fed straight from the bitmap of a
    second BlockSieve over [BIG_MIN, isqrt(hi)], so the primes below 2^32 are never listed.
"""

from __future__ import annotations

import math
import mmap
import threading

import numpy as np

from primes import _bucket, _wheel

#: Largest number the sieve handles: the whole unsigned 64-bit range.
MAX_N = 2**64 - 1
#: Absolute byte holding MAX_N; bits past MAX_N in it (and bytes after it) are cleared.
TOP_BYTE = MAX_N // 30
BLOCK = _bucket.BLOCK
#: Primes from here up go to the bucket sieve: they hit a 512 KiB block (15.7M numbers) fewer
#: than ~14 times. Swept 2^17..2^20 with the block size (see primes._bucket.LOG_BLOCK): 2^18
#: was best or within noise of it (2^17 and 2^19 within noise; 2^20 behind by ~0.1x at
#: 10^15). Must exceed isqrt(2^32) = 65536, so that the sieve generating the big primes (up to
#: 2^32) needs no bucket sieve itself.
BIG_MIN = 1 << 18

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


def _mask_from(lo: int, byte: int) -> int:
    """Bits of `byte` whose number is >= lo."""
    return sum(1 << i for i, w in enumerate(_wheel.WHEEL) if 30 * byte + int(w) >= lo)


def _mask_upto(hi: int, byte: int) -> int:
    """Bits of `byte` whose number is <= hi."""
    return sum(1 << i for i, w in enumerate(_wheel.WHEEL) if 30 * byte + int(w) <= hi)


def _huge_u64(n: int) -> np.ndarray:
    """An uninitialised uint64 array of n items on transparent huge pages where the kernel offers them.

    Near 2^64 a 10^9-wide count fills ~350 MB of buckets once each (4.4*10^7 big primes
    hit it), and on this VM first-touch page faults on 4 KiB pages cost more than the
    appends themselves: filling a fresh pool took 1.3 s against 0.5 s for one already
    touched (bench of add_primes' append loop over all primes below 2^32). 2 MiB pages
    (MADV_HUGEPAGE; THP is "madvise" here) fault 512x less often. Where madvise or THP is
    missing this is a plain anonymous mapping.
    """
    nbytes = max(8 * n, mmap.PAGESIZE)
    flags = getattr(mmap, "MAP_PRIVATE", 0) | getattr(mmap, "MAP_ANONYMOUS", 0)
    mm = mmap.mmap(-1, nbytes, flags=flags) if flags else mmap.mmap(-1, nbytes)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            mm.madvise(mmap.MADV_HUGEPAGE)
        except OSError:
            pass  # THP switched off: 4 KiB pages
    return np.frombuffer(mm, dtype=np.uint64, count=n)


def _expected_entries(width: int, root: int) -> int:
    """About how many big primes (in [BIG_MIN, root]) hit a range `width` numbers wide, plus 15%.

    The pool is sized from this once: growing it by doubling re-faulted and copied hundreds
    of MB near 2^64, a quarter of the run there (perf: clear_page_erms). A prime p hits the
    range with about min(1, c/p) chance, c = width * 48/210 (multiples coprime to 210), so
    the count is about pi(min(c, root)) - pi(BIG_MIN) + c * (ln ln root - ln ln max(c, BIG_MIN)).
    Only a size hint: the pool still grows if it is short.
    """
    def pi(x: float) -> float:
        return x / math.log(x) if x > 2 else 0.0

    c = width * 48 / 210
    near = max(0.0, pi(min(c, root)) - pi(BIG_MIN))
    far = c * (math.log(math.log(root)) - math.log(math.log(max(c, BIG_MIN)))) if c < root else 0.0
    return int(1.15 * (near + far))


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
            self.reserve = _bucket.reserve_buckets(ring)
            nb = 2 * self.reserve + _expected_entries(30 * (self.end - b0), root) // _bucket.BUCKET
            self.wp = np.zeros(ring, dtype=np.uint64)
            self.bnext = np.zeros(nb, dtype=np.uint64)
            self.pool = _huge_u64(nb * _bucket.BUCKET)
            self.free = np.arange(nb - 1, 0, -1, dtype=np.uint64)  # bucket 0 is never handed out
            self.meta = np.array([nb - 1], dtype=np.int64)  # free buckets
            # The big sieving primes themselves come from a second, small sieve over
            # [BIG_MIN, root] (root <= 2^32, so it needs no bucket sieve of its own).
            g0, g1 = BIG_MIN // 30, root // 30
            self.gen: BlockSieve | None = BlockSieve(g0, g1)
            self.gen_masks = (g0, _mask_from(BIG_MIN, g0), g1, _mask_upto(root, g1))
            self.gwords, self.gpos = np.zeros(0, dtype=np.uint64), 0
            self.gcur = np.zeros(2, dtype=np.uint64)
            self.ps = np.empty(_bucket.CHUNK, dtype=np.uint64)
            self.qs = np.empty(_bucket.CHUNK, dtype=np.uint64)

    @property
    def done(self) -> bool:
        return self.pos >= self.end

    def _grow(self) -> None:
        """Double the bucket pool (entries never move: bucket ids stay valid)."""
        old = self.bnext.size
        nb = 2 * old
        self.bnext = np.concatenate((self.bnext, np.zeros(nb - old, dtype=np.uint64)))
        pool = _huge_u64(nb * _bucket.BUCKET)
        pool[:self.pool.size] = self.pool
        self.pool = pool
        nfree = int(self.meta[0])
        free = np.empty(nb, dtype=np.uint64)
        free[:nfree] = self.free[:nfree]
        free[nfree:nfree + nb - old] = np.arange(old, nb, dtype=np.uint64)
        self.free = free
        self.meta[0] = nfree + nb - old

    def _add_big(self, end_byte: int) -> None:
        """Enter the big primes whose square lies below end_byte (before sieving the block ending there)."""
        pmax = np.uint64(min(math.isqrt(30 * end_byte - 1), MAX_N))  # p*p // 30 < end_byte, exactly
        while True:
            if self.gcur[0] >= self.gwords.size:
                if self.gen is None or self.gen.done:
                    self.gen = None
                    return
                gbuf, gn, self.gpos = self.gen.next_block()
                g0, m0, g1, m1 = self.gen_masks
                if self.gpos == g0:
                    gbuf[0] &= m0
                if self.gpos + gn - 1 == g1:
                    gbuf[gn - 1] &= m1
                nw = (gn + 7) // 8
                gbuf[gn:8 * nw] = 0  # gbuf is the generator's own BLOCK-byte buffer, and it is done with it
                self.gwords = gbuf[:8 * nw].view(np.uint64)
                self.gcur[0], self.gcur[1] = 0, self.gwords[0]
            if _bucket.add_primes(self.gwords, self.gpos, self.gcur, self.pos, pmax, self.hi_lim,
                                  self.wp, self.bnext, self.pool, self.free, self.meta, self.reserve,
                                  self.ps, self.qs):
                continue  # this block of primes is used up: sieve the next
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
            blocks_left = (self.end - (self.pos + n) + BLOCK - 1) // BLOCK
            _bucket.cross_off_big(buf, self.wp, self.bnext, self.pool, self.free, self.meta, blocks_left)
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
