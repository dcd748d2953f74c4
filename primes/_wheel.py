"""Numba kernels of the wheel-30 segmented sieve; private, the public API is primes.sieve.

Layout: byte j of a sieve stands for the 30 numbers [30j, 30j+30) and bit b of it for
30j + WHEEL[b]; the other 22 residues are multiples of 2, 3 or 5 and are never stored.
Byte indices are int64 (they stay below 2^64/30); numbers are uint64 wherever one is
formed, since they reach 2^64 - 1; uint8 for sieve bytes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

#: Residues mod 30 coprime to 30, one per bit of a sieve byte.
WHEEL = np.array([1, 7, 11, 13, 17, 19, 23, 29], dtype=np.int64)
WHEEL_U = WHEEL.astype(np.uint64)
#: Bit index of a residue mod 30, or -1 for residues sharing a factor with 30.
BIT_OF = np.full(30, -1, dtype=np.int64)
BIT_OF[WHEEL] = np.arange(8)
#: Smallest d >= 0 with (m + d) % 30 coprime to 30, by m % 30.
NEXT_DELTA_U = np.array([min(d for d in range(8) if BIT_OF[(m + d) % 30] >= 0) for m in range(30)],
                        dtype=np.uint64)
U1 = np.uint64(1)
U3 = np.uint64(3)
U7 = np.uint64(7)
U30 = np.uint64(30)
#: Byte offset of the j-th multiple in a wheel cycle is q*OFFQ[j] + OFFR[p%30 bit, j] (p = 30q + r).
OFFQ = WHEEL - 1
OFFR = np.array([[(r * w) // 30 for w in WHEEL] for r in WHEEL], dtype=np.int64)
#: And-mask that clears the bit of the j-th multiple in a cycle, by p%30 bit.
MASK = np.array([[0xFF ^ (1 << int(BIT_OF[(r * w) % 30])) for w in WHEEL] for r in WHEEL], dtype=np.uint8)

#: Primes removed by copying/and-ing precomputed periodic byte patterns instead of crossing off.
PRESIEVE_GROUPS = ((7, 11, 13, 17, 19), (23, 29, 31), (37, 41, 43), (47, 53, 59), (61, 67, 71),
                   (73, 79), (83, 89), (97, 101), (103, 107), (109, 113),
                   (127, 131), (137, 139), (149, 151), (157, 163))
PRESIEVE_MAX = PRESIEVE_GROUPS[-1][-1]
#: Primes below SMALL_PRIME_MAX are crossed off SUB_BLOCK (L1-sized) bytes at a time.
SUB_BLOCK = 1 << 15
SMALL_PRIME_MAX = 1 << 12


def _pattern(group: tuple[int, ...]) -> np.ndarray:
    """One period (prod(group) bytes) of the sieve with only `group`'s multiples removed."""
    period = int(np.prod(group))
    n = np.arange(period, dtype=np.int64)[:, None] * 30 + WHEEL[None, :]
    keep = np.ones(n.shape, dtype=bool)
    for p in group:
        keep &= n % p != 0
    return (keep.astype(np.uint8) << np.arange(8, dtype=np.uint8)[None, :]).sum(axis=1).astype(np.uint8)


def _patterns() -> tuple[np.ndarray, np.ndarray]:
    """All groups' patterns in one buffer, and per group its (start, period) in that buffer.

    Passed to the kernels as arguments: numba would otherwise freeze ~1 MB of global arrays
    into every compiled function and its on-disk cache.
    """
    parts = [_pattern(g) for g in PRESIEVE_GROUPS]
    starts = np.cumsum([0] + [len(x) for x in parts[:-1]])
    periods = [int(np.prod(g)) for g in PRESIEVE_GROUPS]
    return np.concatenate(parts), np.array([starts, periods], dtype=np.int64).T.copy()


PATTERN_BYTES, PATTERN_INDEX = _patterns()
#: Bits of the first bytes that the patterns clear but that are primes themselves.
RESTORE = np.zeros(PRESIEVE_MAX // 30 + 1, dtype=np.uint8)
for _p in (p for g in PRESIEVE_GROUPS for p in g):
    RESTORE[_p // 30] |= 1 << int(BIT_OF[_p % 30])
del _p


@intrinsic
def popcount(typingctx: Any, x: Any) -> Any:
    """LLVM ctpop as int64, so counting compiles to POPCNT and never mixes signedness."""
    if not isinstance(x, types.Integer) or x.bitwidth > 64:
        return None

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        bits = builder.ctpop(args[0])
        return builder.zext(bits, ir.IntType(64)) if x.bitwidth < 64 else bits

    return types.int64(x), codegen


@intrinsic
def trailing_zeros(typingctx: Any, x: Any) -> Any:
    """LLVM cttz, for walking the set bits of a word when listing primes."""
    if not isinstance(x, types.Integer):
        return None

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.cttz(args[0], ir.Constant(ir.IntType(1), 1))

    return x(x), codegen


@njit(cache=True, nogil=True)
def presieve(buf: np.ndarray, n: int, byte0: int, pat: np.ndarray, pat_index: np.ndarray) -> None:
    """Fill buf[:n] (absolute bytes byte0..) from the patterns: removes multiples of 7..PRESIEVE_MAX."""
    for g in range(pat_index.shape[0]):
        start, period = pat_index[g, 0], pat_index[g, 1]
        o = byte0 % period
        i = 0
        while i < n:
            run = min(n - i, period - o)
            src = pat[start + o:start + o + run]
            dst = buf[i:i + run]
            if g == 0:
                for t in range(run):
                    dst[t] = src[t]
            else:
                for t in range(run):
                    dst[t] &= src[t]
            i += run
            o = 0
    if byte0 < RESTORE.size:
        for j in range(byte0, min(RESTORE.size, byte0 + n)):
            buf[j - byte0] |= RESTORE[j]
        if byte0 == 0:
            buf[0] &= 0xFE  # 1 is not prime


@njit(cache=True, nogil=True)
def first_multiples(primes: np.ndarray, start: int, stop: int, byte0: int, bases: np.ndarray,
                    wis: np.ndarray) -> None:
    """Position primes[start:stop] at their first multiple >= max(p*p, 30*byte0) coprime to 30.

    uint64 throughout: 30*byte0 reaches 2^64 - 30 at the top of the range. The multiple
    itself is never formed (it may exceed 2^64 - 1); only its byte p*k + p//30 is.
    """
    lo = U30 * np.uint64(byte0)
    for i in range(start, stop):
        p = np.uint64(primes[i])
        s = p * p
        if s < lo:
            s = lo
        m = (s - U1) // p + U1
        m += NEXT_DELTA_U[m % U30]
        k = m // U30
        wis[i] = BIT_OF[np.int64(m % U30)]
        bases[i] = np.int64(p * k + p // U30) - byte0


@njit(cache=True, nogil=True)
def cross_off(buf: np.ndarray, n: int, primes: np.ndarray, bases: np.ndarray, wis: np.ndarray,
              i0: int, i1: int) -> None:
    """Clear multiples of primes[i0:i1] in buf[:n] and advance their state by n bytes.

    State per prime: bases[i] is the byte (relative to buf) of p*(30k+1) for the current
    wheel cycle k, wis[i] the index of the next multiple within that cycle.
    """
    for i in range(i0, i1):
        p = primes[i]
        q = p // 30
        ri = BIT_OF[p % 30]
        base = bases[i]
        wi = wis[i]
        if wi != 0:
            while wi < 8:
                pos = base + q * OFFQ[wi] + OFFR[ri, wi]
                if pos >= n:
                    break
                buf[pos] &= MASK[ri, wi]
                wi += 1
            if wi < 8:
                bases[i] = base - n
                wis[i] = wi
                continue
            wi = 0
            base += p
        o1 = np.uint64(q * 6 + OFFR[ri, 1])
        o2 = np.uint64(q * 10 + OFFR[ri, 2])
        o3 = np.uint64(q * 12 + OFFR[ri, 3])
        o4 = np.uint64(q * 16 + OFFR[ri, 4])
        o5 = np.uint64(q * 18 + OFFR[ri, 5])
        o6 = np.uint64(q * 22 + OFFR[ri, 6])
        o7 = q * 28 + OFFR[ri, 7]
        o7u = np.uint64(o7)
        m0 = MASK[ri, 0]
        m1 = MASK[ri, 1]
        m2 = MASK[ri, 2]
        m3 = MASK[ri, 3]
        m4 = MASK[ri, 4]
        m5 = MASK[ri, 5]
        m6 = MASK[ri, 6]
        m7 = MASK[ri, 7]
        if base < n - o7:
            ub = np.uint64(base)
            lim = np.uint64(n - o7)
            pu = np.uint64(p)
            while ub < lim:
                buf[ub] &= m0
                buf[ub + o1] &= m1
                buf[ub + o2] &= m2
                buf[ub + o3] &= m3
                buf[ub + o4] &= m4
                buf[ub + o5] &= m5
                buf[ub + o6] &= m6
                buf[ub + o7u] &= m7
                ub += pu
            base = np.int64(ub)
        while wi < 8:
            pos = base + q * OFFQ[wi] + OFFR[ri, wi]
            if pos >= n:
                break
            buf[pos] &= MASK[ri, wi]
            wi += 1
        bases[i] = base - n
        wis[i] = wi


@njit(cache=True, nogil=True)
def count_bits(buf: np.ndarray, start: int, stop: int) -> int:
    """Set bits in buf[start:stop]."""
    total = 0
    i = start
    while i < stop and (i & 7) != 0:
        total += popcount(buf[i])
        i += 1
    w_end = stop & ~7
    if i < w_end:
        words = buf[i:w_end].view(np.uint64)
        for j in range(words.size):
            total += popcount(words[j])
        i = w_end
    while i < stop:
        total += popcount(buf[i])
        i += 1
    return total


@njit(cache=True, nogil=True)
def sieve_block(buf: np.ndarray, n: int, pos: int, primes: np.ndarray, bases: np.ndarray, wis: np.ndarray,
                active: int, pat: np.ndarray, pat_index: np.ndarray) -> int:
    """Presieve absolute bytes [pos, pos+n) into buf[:n] and cross off the wheel-30 primes.

    primes are the small and medium sieving primes (> PRESIEVE_MAX, below the bucket
    sieve's range, so p*p fits int64); returns the new count of active primes. A prime
    becomes active (gets a position) only once p*p falls below the block end, so a range
    starting near 0 does not carry thousands of idle primes.
    """
    presieve(buf, n, pos, pat, pat_index)
    end_byte = pos + n
    stop = active
    while stop < primes.size and (primes[stop] * primes[stop]) // 30 < end_byte:
        stop += 1
    first_multiples(primes, active, stop, pos, bases, wis)
    small = 0
    while small < stop and primes[small] < SMALL_PRIME_MAX:
        small += 1
    # Small primes hit every byte many times: keep their sub-block in L1 while they do.
    s = 0
    while s < n:
        m = min(SUB_BLOCK, n - s)
        cross_off(buf[s:s + m], m, primes, bases, wis, np.int64(0), small)
        s += m
    cross_off(buf, n, primes, bases, wis, small, stop)
    return stop


@njit(cache=True, nogil=True)
def count_masked(buf: np.ndarray, i0: int, i1: int, mask0: int, mask1: int) -> int:
    """Set bits in buf[i0..i1] (inclusive), with the first/last byte and-ed with mask0/mask1."""
    if i0 > i1:
        return 0
    if i0 == i1:
        return popcount(np.uint8(buf[i0] & mask0 & mask1))
    return (popcount(np.uint8(buf[i0] & mask0)) + count_bits(buf, i0 + 1, i1)
            + popcount(np.uint8(buf[i1] & mask1)))


@njit(cache=True, nogil=True)
def extract_masked(buf: np.ndarray, i0: int, i1: int, mask0: int, mask1: int, byte0: int) -> np.ndarray:
    """Sorted uint64 numbers of the set bits of buf[i0..i1]; buf[0] is absolute byte byte0.

    uint64 because the numbers reach 2^64 - 1 (the bytes, at most 2^64/30, fit int64).
    Eight bytes per step with one loop and no helper call: a call per word passing
    `out` costs two atomic refcount updates, which made listing 5x slower.
    """
    out = np.empty(count_masked(buf, i0, i1, mask0, mask1), dtype=np.uint64)
    if i0 > i1:
        return out
    # Interior whole words [w0, w1) (never the masked first or last byte), bytes around them.
    w0 = (i0 + 8) & ~7
    w1 = i1 & ~7
    if w1 < w0:
        w0 = w1 = i1
    words = buf[w0:w1].view(np.uint64)
    j = 0
    i = i0
    while i <= i1:
        if i == w0 and w1 > w0:
            for w in range(words.size):
                word = words[w]
                base = np.uint64(byte0 + w0 + 8 * w)
                while word != 0:
                    t = trailing_zeros(word)
                    out[j] = U30 * (base + (t >> U3)) + WHEEL_U[t & U7]
                    j += 1
                    word &= word - U1
            i = w1
            continue
        b = np.uint64(buf[i])
        if i == i0:
            b &= np.uint64(mask0)
        if i == i1:
            b &= np.uint64(mask1)
        base = U30 * np.uint64(byte0 + i)
        while b != 0:
            out[j] = base + WHEEL_U[trailing_zeros(b)]
            j += 1
            b &= b - U1
        i += 1
    return out
