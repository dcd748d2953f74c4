"""Numba kernels of the wheel-30 segmented sieve; private, the public API is primes.sieve.

Layout: byte j of a sieve stands for the 30 numbers [30j, 30j+30) and bit b of it for
30j + WHEEL[b]; the other 22 residues are multiples of 2, 3 or 5 and are never stored.
All indices are int64 and non-negative; uint8 for sieve bytes, uint64 only for popcount.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

#: Residues mod 30 coprime to 30, one per bit of a sieve byte.
WHEEL = np.array([1, 7, 11, 13, 17, 19, 23, 29], dtype=np.int64)
#: Bit index of a residue mod 30, or -1 for residues sharing a factor with 30.
BIT_OF = np.full(30, -1, dtype=np.int64)
BIT_OF[WHEEL] = np.arange(8)
#: Smallest d >= 0 with (m + d) % 30 coprime to 30, by m % 30.
NEXT_DELTA = np.array([min(d for d in range(8) if BIT_OF[(m + d) % 30] >= 0) for m in range(30)],
                      dtype=np.int64)
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
#: Bytes sieved per L1/L2-resident block; the pattern buffers are padded by this much.
BLOCK = 1 << 16


def _pattern(group: tuple[int, ...]) -> np.ndarray:
    """One period (prod(group) bytes) of the sieve with only `group`'s multiples removed, padded by BLOCK."""
    period = int(np.prod(group))
    n = np.arange(period, dtype=np.int64)[:, None] * 30 + WHEEL[None, :]
    keep = np.ones(n.shape, dtype=bool)
    for p in group:
        keep &= n % p != 0
    byte = (keep.astype(np.uint8) << np.arange(8, dtype=np.uint8)[None, :]).sum(axis=1).astype(np.uint8)
    reps = -(-(period + BLOCK) // period)
    return np.tile(byte, reps)[: period + BLOCK].copy()


PATTERNS = tuple(_pattern(g) for g in PRESIEVE_GROUPS)
PERIODS = np.array([int(np.prod(g)) for g in PRESIEVE_GROUPS], dtype=np.int64)
#: Bits of the first bytes that the patterns clear but that are primes themselves.
RESTORE = np.zeros(PRESIEVE_MAX // 30 + 1, dtype=np.uint8)
for _p in (p for g in PRESIEVE_GROUPS for p in g):
    RESTORE[_p // 30] |= 1 << int(BIT_OF[_p % 30])
del _p


@intrinsic
def popcount(typingctx, x):  # type: ignore[no-untyped-def]
    """LLVM ctpop, so counting compiles to the POPCNT instruction."""
    if not isinstance(x, types.Integer):
        return None

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.ctpop(args[0])

    return x(x), codegen


@intrinsic
def trailing_zeros(typingctx, x):  # type: ignore[no-untyped-def]
    """LLVM cttz, for walking the set bits of a word when listing primes."""
    if not isinstance(x, types.Integer):
        return None

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.cttz(args[0], ir.Constant(ir.IntType(1), 1))

    return x(x), codegen


@njit(cache=True, nogil=True)
def presieve(buf, n, byte0):  # type: ignore[no-untyped-def]
    """Fill buf[:n] (absolute bytes byte0..) with the patterns: removes multiples of 7..PRESIEVE_MAX."""
    a = PATTERNS[0][byte0 % PERIODS[0]:]
    b = PATTERNS[1][byte0 % PERIODS[1]:]
    c = PATTERNS[2][byte0 % PERIODS[2]:]
    d = PATTERNS[3][byte0 % PERIODS[3]:]
    e = PATTERNS[4][byte0 % PERIODS[4]:]
    for i in range(n):
        buf[i] = a[i] & b[i] & c[i] & d[i] & e[i]
    a = PATTERNS[5][byte0 % PERIODS[5]:]
    b = PATTERNS[6][byte0 % PERIODS[6]:]
    c = PATTERNS[7][byte0 % PERIODS[7]:]
    d = PATTERNS[8][byte0 % PERIODS[8]:]
    e = PATTERNS[9][byte0 % PERIODS[9]:]
    for i in range(n):
        buf[i] &= a[i] & b[i] & c[i] & d[i] & e[i]
    a = PATTERNS[10][byte0 % PERIODS[10]:]
    b = PATTERNS[11][byte0 % PERIODS[11]:]
    c = PATTERNS[12][byte0 % PERIODS[12]:]
    d = PATTERNS[13][byte0 % PERIODS[13]:]
    for i in range(n):
        buf[i] &= a[i] & b[i] & c[i] & d[i]
    if byte0 < RESTORE.size:
        for j in range(byte0, min(RESTORE.size, byte0 + n)):
            buf[j - byte0] |= RESTORE[j]
        if byte0 == 0:
            buf[0] &= 0xFE  # 1 is not prime


@njit(cache=True, nogil=True)
def first_multiples(primes, start, stop, byte0, bases, wis):  # type: ignore[no-untyped-def]
    """Position primes[start:stop] at their first multiple >= max(p*p, 30*byte0) coprime to 30."""
    lo = 30 * byte0
    for i in range(start, stop):
        p = primes[i]
        s = max(p * p, lo)
        m = (s + p - 1) // p
        m += NEXT_DELTA[m % 30]
        k = m // 30
        wis[i] = BIT_OF[m % 30]
        bases[i] = p * k + p // 30 - byte0


@njit(cache=True, nogil=True)
def cross_off(buf, n, primes, bases, wis, nprimes):  # type: ignore[no-untyped-def]
    """Clear multiples of primes[:nprimes] in buf[:n] and advance their state by n bytes.

    State per prime: bases[i] is the byte (relative to buf) of p*(30k+1) for the current
    wheel cycle k, wis[i] the index of the next multiple within that cycle.
    """
    for i in range(nprimes):
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
def count_bits(buf, start, stop):  # type: ignore[no-untyped-def]
    """Set bits in buf[start:stop]."""
    total = 0
    i = start
    while i < stop and (i & 7) != 0:
        total += popcount(np.uint64(buf[i]))
        i += 1
    w_end = stop & ~7
    if i < w_end:
        words = buf[i:w_end].view(np.uint64)
        for j in range(words.size):
            total += popcount(words[j])
        i = w_end
    while i < stop:
        total += popcount(np.uint64(buf[i]))
        i += 1
    return total


@njit(cache=True, nogil=True)
def sieve_block(buf, n, pos, primes, bases, wis, active):  # type: ignore[no-untyped-def]
    """Sieve absolute bytes [pos, pos+n) into buf[:n]; returns the new count of active primes.

    Primes become active (get a position) only once p*p falls below the block end, so a
    range starting near 0 does not carry thousands of idle primes.
    """
    presieve(buf, n, pos)
    end_num = 30 * (pos + n)
    stop = active
    while stop < primes.size and primes[stop] * primes[stop] < end_num:
        stop += 1
    first_multiples(primes, active, stop, pos, bases, wis)
    cross_off(buf, n, primes, bases, wis, stop)
    return stop


@njit(cache=True, nogil=True)
def sieve_into(out, byte0, primes):  # type: ignore[no-untyped-def]
    """Sieve absolute bytes [byte0, byte0+out.size) into out; primes are the sieving primes > PRESIEVE_MAX."""
    bases = np.empty(primes.size, dtype=np.int64)
    wis = np.empty(primes.size, dtype=np.int64)
    active = 0
    done = 0
    while done < out.size:
        n = min(BLOCK, out.size - done)
        active = sieve_block(out[done:done + n], n, byte0 + done, primes, bases, wis, active)
        done += n


@njit(cache=True, nogil=True)
def count_range(byte0, byte1, mask0, mask1, primes):  # type: ignore[no-untyped-def]
    """Primes > 5 in absolute bytes [byte0, byte1], first/last byte and-ed with mask0/mask1."""
    buf = np.zeros(BLOCK, dtype=np.uint8)
    bases = np.empty(primes.size, dtype=np.int64)
    wis = np.empty(primes.size, dtype=np.int64)
    active = 0
    total = 0
    pos = byte0
    while pos <= byte1:
        n = min(BLOCK, byte1 + 1 - pos)
        active = sieve_block(buf, n, pos, primes, bases, wis, active)
        if pos == byte0:
            buf[0] &= mask0
        if pos + n - 1 == byte1:
            buf[n - 1] &= mask1
        total += count_bits(buf, 0, n)
        pos += n
    return total
