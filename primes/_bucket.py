"""Numba kernels of the bucket sieve for big sieving primes; private, driven by primes.blocks.

Why buckets: a prime much larger than the block hits a block at most a few times, so
looping over every such prime in every block (as primes._wheel.cross_off does) spends
its time on primes that have nothing to cross off there, and on mispredicted loop exits.
Tomás Oliveira e Silva's bucket sieve (the method of primesieve's EratBig) keeps, for each
of the next R blocks, a list ("bucket") of the primes whose next multiple lies in that
block: sieving a block walks only its own list, crosses one multiple per entry and
appends the prime to the list of the block of its next multiple. Measured on this
machine (10^10 numbers below 10^15): 21.8 s without buckets, 4.6 s with them (figures
by bench/bench_primes.py).

Multiples skip those of 2, 3, 5 and 7 (a wheel of 210: 48 of every 210 multiples), 14%
fewer crossings than the wheel of 30 used for the smaller primes. The wheel tables are
derived below from the byte layout of primes._wheel (byte j = numbers [30j, 30j+30)).

An entry is one uint64: q = p // 30 in the high 32 bits; below, the byte offset of the
next multiple within its block (low 23 bits) and the wheel state (9 bits: p % 30 class
* 48 + position in the 210-cycle). One array instead of two halves the memory streams
the sieve walks (measured ~25% faster per crossing). Buckets of BUCKET entries live in one
pool; a ring slot is a single write index into it (as primesieve keeps one pointer per
segment), and the crossing loop is all uint64, so numba emits no negative-index fix-ups:
the loop went from ~55 instructions per crossing (with stack spills) to ~28, and 10^10
numbers below 10^15 from 4.7-7.9 to 4.4-4.9 CPU s (three alternating runs each, load 4-6).
Numbers are uint64 wherever a multiple is formed, so nothing overflows up to 2^64 - 1.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from primes._wheel import BIT_OF, WHEEL, trailing_zeros

#: log2 of the block size in bytes; the block is what primes.blocks sieves at a time. 512 KiB,
#: half this CPU's 1 MiB L2 (primesieve picks the same here): the bucket sieve's scattered
#: writes then hit L2 beside the bucket streams. Swept with BIG_MIN (3 alternating runs each,
#: CPU s over primesieve -t1, 10^10 wide below 10^12 / 10^15): 1 MiB and 2^20 1.10-1.24x /
#: 1.16-1.41x; 512 KiB and 2^18 1.06-1.14x / 1.02-1.12x; 256 KiB was worse (1.25-1.37x at 10^12).
LOG_BLOCK = 19
BLOCK = 1 << LOG_BLOCK
#: Entries per bucket (8 KiB, as primesieve's buckets). 512 and 4096 measured the same within noise.
BUCKET = 1024
#: Wheel state takes the bits above this in the packed entry.
IDX_BITS = 23
IDX_MASK = (1 << IDX_BITS) - 1

#: The 48 residues mod 210 coprime to 210, and the position of each in that list (-1 otherwise).
M210 = np.array([m for m in range(210) if math.gcd(m, 210) == 1], dtype=np.int64)
POS210 = np.full(210, -1, dtype=np.int64)
POS210[M210] = np.arange(48)
#: Smallest d >= 0 with m + d coprime to 210, by m % 210 (uint64: added to uint64 multipliers).
DELTA210 = np.array([min(d for d in range(11) if math.gcd(m + d, 210) == 1) for m in range(210)],
                    dtype=np.uint64)


def _tables() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per wheel state s = ri*48 + k (p % 30 = WHEEL[ri], multiplier m ≡ M210[k] mod 210):

    the and-mask clearing the bit of the current multiple n = m*p, and the step to the
    next multiple m + d: its byte is byte(n) + d*q + cor, where cor = (n % 30 + d*r) // 30
    depends only on the state because n % 30 = (m*r) % 30.
    """
    n = 8 * 48
    mask = np.zeros(n, dtype=np.uint8)
    fac = np.zeros(n, dtype=np.int64)
    cor = np.zeros(n, dtype=np.int64)
    nxt = np.zeros(n, dtype=np.int64)
    for ri, r in enumerate(int(w) for w in WHEEL):
        for k in range(48):
            s = ri * 48 + k
            m = int(M210[k])
            d = (int(M210[k + 1]) if k < 47 else 211) - m
            res = (m * r) % 30
            mask[s] = 0xFF ^ (1 << int(BIT_OF[res]))
            fac[s] = d
            cor[s] = (res + d * r) // 30
            nxt[s] = ri * 48 + (k + 1) % 48
    return mask, fac, cor, nxt


T_MASK, T_FAC, T_COR, T_NXT = _tables()
#: The four tables in one uint64 per state (mask | fac << 8 | cor << 16 | (next << IDX_BITS) << 32):
#: one load per crossing, and the next state comes out already in its place in an entry.
T_PACK = (T_MASK.astype(np.uint64) | (T_FAC.astype(np.uint64) << 8) | (T_COR.astype(np.uint64) << 16)
          | (T_NXT.astype(np.uint64) << (32 + IDX_BITS))).astype(np.uint64)
#: Largest step factor: bounds how many blocks ahead a next multiple can land.
MAX_FAC = int(T_FAC.max())
#: Offset from 30 * (first byte of a uint64 word) of the number of each of the word's 64 bits.
OFF64 = np.array([30 * (t >> 3) + int(WHEEL[t & 7]) for t in range(64)], dtype=np.uint64)
#: log2 of BUCKET.
LOG_BUCKET = BUCKET.bit_length() - 1

# Everything in the crossing loops is uint64: numba adds a negative-index fix-up to every
# access through a signed index, and mixing signed with unsigned makes floats.
U1 = np.uint64(1)
U8 = np.uint64(8)
U16 = np.uint64(16)
U30 = np.uint64(30)
U240 = np.uint64(240)
U210 = np.uint64(210)
U255 = np.uint64(255)
U32 = np.uint64(32)
U_IDX_BITS = np.uint64(IDX_BITS)
U_IDX_MASK = np.uint64(IDX_MASK)
U_LOG_BLOCK = np.uint64(LOG_BLOCK)
U_BLOCK_MASK = np.uint64(BLOCK - 1)
U_LOG_BUCKET = np.uint64(LOG_BUCKET)
U_BUCKET_MASK = np.uint64(BUCKET - 1)
U_STATE_MASK = np.uint64(511)
#: The q half of an entry.
U_Q_MASK = np.uint64(0xFFFFFFFF00000000)


def ring_size(max_prime: int) -> int:
    """Ring slots needed so that no next multiple of a prime <= max_prime lands past the ring."""
    q = max_prime // 30
    return ((BLOCK - 1 + MAX_FAC * q + MAX_FAC) >> LOG_BLOCK) + 2


#: Big primes taken off the bitmap per batch in add_primes.
CHUNK = 2048


def reserve_buckets(ring: int) -> int:
    """Free buckets add_primes needs before a batch: each of its CHUNK appends takes a new bucket
    only for an empty or a full slot, at most ring + CHUNK / BUCKET times."""
    return ring + CHUNK // BUCKET + 4


@njit(cache=True, nogil=True, error_model="numpy")  # no zero-divisor check: it blocks vectorizing
def add_primes(gwords: np.ndarray, gbyte0: int, gcur: np.ndarray, pos: int, pmax: np.uint64, hi_lim: np.uint64,
               wp: np.ndarray, bnext: np.ndarray, pool: np.ndarray, free: np.ndarray, meta: np.ndarray,
               reserve: int, ps: np.ndarray, qs: np.ndarray) -> bool:
    """Enter the big primes up to pmax, read straight off a sieved block of them.

    gwords is a wheel bitmap, as uint64 words, of absolute bytes from gbyte0 holding
    exactly the big sieving primes (its edges masked, its tail zeroed); gcur = [word
    index, bits of that word not yet entered] is the cursor, kept between calls. Reading
    the bitmap here instead of a listed array saves writing and reading 1.6 GB of primes
    on the way to 2^64; reading it a word at a time (not a byte) leaves one hard-to-predict
    loop exit per ~11 primes instead of one per prime.
    pmax is the largest p with p*p below the block end (computed exactly by the caller).
    pos is the absolute byte of the block about to be sieved (ring slot 0).
    Each prime starts at its first multiple >= max(p*p, 30*pos) coprime to 210; one with
    no such multiple <= hi_lim is dropped, so a narrow range near 2^64 keeps only the
    primes that hit it. Near 2^64 that positioning is most of the work (2*10^8 primes, 79%
    dropped for a 10^9-wide range), so it runs in batches of CHUNK primes (ps, qs are
    CHUNK-long scratch arrays): listed first, then one branch-free loop of float quotients
    (which LLVM vectorizes), then the exact integer step per prime. Measured over all primes
    below 2^32: listing 0.25-0.29 s, quotients 0.05-0.07 s, the integer step 0.34-0.45 s,
    and the appends of the kept 4.4*10^7 into a fresh pool the rest (see blocks._huge_u64).
    Returns True when the bitmap is used up, False when it stopped at a prime not due
    yet or with fewer than `reserve` free buckets (the caller grows the pool and calls again).
    """
    lo = U30 * np.uint64(pos)
    nfree = meta[0]
    nw = np.uint64(gwords.size)
    i = gcur[0]
    bits = gcur[1]
    base = U30 * (np.uint64(gbyte0) + U8 * i)
    used_up = False
    while not used_up:
        if nfree < reserve:
            break
        k = 0
        while k < CHUNK:
            while bits == 0:
                i += U1
                if i >= nw:
                    used_up = True
                    break
                bits = gwords[i]
                base += U240
            if used_up:
                break
            p = base + OFF64[trailing_zeros(bits)]
            if p > pmax:
                break
            ps[k] = p
            k += 1
            bits &= bits - U1
        if k == 0:
            break
        # The first multiple m*p >= s with m coprime to 210, as (s-1) - r0 + step with no
        # product that could pass 2^64: s-1 = q0*p + r0, m = q0 + 1 + d. q0 is estimated by
        # a float division (vectorized; a 64-bit integer division per prime was 70% of the
        # time near 2^64) and then made exact in integers: for p >= 2^18 (BIG_MIN) the estimate is
        # off by at most one unit (two roundings of 2^-53 on a quotient below 2^46), so
        # r = (s-1) - q0*p computed mod 2^64 is then that small signed error times p plus the
        # true remainder, and the loops move q0 until 0 <= r < p. No result depends on float
        # rounding.
        for j in range(k):
            p = ps[j]
            pp = p * p
            s = pp if pp > lo else lo
            qs[j] = np.uint64(np.float64(s - U1) / np.float64(p))
        for j in range(k):
            p = ps[j]
            pp = p * p
            s = pp if pp > lo else lo
            sm1 = s - U1
            q0 = qs[j]
            r = np.int64(sm1 - q0 * p)
            ip = np.int64(p)
            while r < 0:
                q0 -= U1
                r += ip
            while r >= ip:
                q0 += U1
                r -= ip
            r0 = np.uint64(r)
            m = q0 + U1
            d = DELTA210[m % U210]
            step = p * (U1 + d)
            m += d
            if step - r0 > hi_lim - s + U1:  # that multiple is past hi_lim: the prime never hits the range
                continue
            n = (s - U1 - r0) + step
            off = n // U30 - np.uint64(pos)
            wi = np.uint64(BIT_OF[np.int64(p % U30)] * 48 + POS210[np.int64(m % U210)])
            slot = off >> U_LOG_BLOCK
            # Append to ring slot `slot` (written out here and in cross_off_big, not called:
            # a call per entry costs atomic refcount updates per array argument, 15x slower).
            w = wp[slot]
            if (w & U_BUCKET_MASK) == 0:
                nfree -= 1
                nb = free[nfree]
                bnext[nb] = w
                w = nb << U_LOG_BUCKET
            pool[w] = ((p // U30) << U32) | (off & U_BLOCK_MASK) | (wi << U_IDX_BITS)
            wp[slot] = w + U1
    gcur[0] = i
    gcur[1] = bits
    meta[0] = nfree
    return used_up


@njit(cache=True, nogil=True)
def cross_off_big(buf: np.ndarray, wp: np.ndarray, bnext: np.ndarray, pool: np.ndarray, free: np.ndarray,
                  meta: np.ndarray, blocks_left: int) -> None:
    """Cross off the current block's bucket entries in buf (BLOCK bytes) and advance the ring.

    Ring slot j holds the entries whose next multiple lies j blocks ahead, as the pool
    index wp[j] one past its last entry (0: none). Its buckets are chained newest first:
    bnext[b] is the wp value the slot had when bucket b was taken (0 ends the chain);
    bucket 0 is never handed out, so 0 is free to mean "none". Only one uint64 per slot
    changes per crossing, and every index is unsigned (no negative-index fix-ups).
    Entries whose next multiple falls in this same block come back to slot 0 and are
    walked again until it is empty; then the slots shift down by one. An entry whose next
    multiple lies past the last block (more than blocks_left blocks ahead) is dropped:
    near 2^64 most big primes hit a 10^9-wide range once, and re-queueing them cost a
    third of the sieve. buf must be BLOCK bytes even for a short last block: crossings
    past its end land in bytes nobody reads.
    """
    nfree = meta[0]
    left = np.uint64(blocks_left)
    while wp[0] != 0:
        w = wp[0]
        wp[0] = 0
        while w != 0:
            b = (w - U1) >> U_LOG_BUCKET
            for e in range(b << U_LOG_BUCKET, w):
                v = pool[e]
                t = T_PACK[(v >> U_IDX_BITS) & U_STATE_MASK]
                idx = v & U_IDX_MASK
                buf[idx] &= np.uint8(t & U255)
                idx += ((t >> U8) & U255) * (v >> U32) + ((t >> U16) & U255)
                ahead = idx >> U_LOG_BLOCK
                if ahead > left:
                    continue
                x = wp[ahead]
                if (x & U_BUCKET_MASK) == 0:
                    nfree -= 1
                    nb = free[nfree]
                    bnext[nb] = x
                    x = nb << U_LOG_BUCKET
                pool[x] = (v & U_Q_MASK) | (idx & U_BLOCK_MASK) | (t >> U32)
                wp[ahead] = x + U1
            w = bnext[b]
            free[nfree] = b
            nfree += 1
    meta[0] = nfree
    for j in range(wp.size - 1):
        wp[j] = wp[j + 1]
    wp[wp.size - 1] = 0
