"""Fresh prime ranges: numbers that no earlier job on the session's database counted.

Workers store each sieved segment's count and reuse it (jobs/kernels/primes.py), so a count over numbers
an earlier test counted ends in a moment, whatever its width. A test that needs its job still running
when it looks (to cancel or pause it, or to stop a worker under it) must count fresh numbers. Random
ranges in [10^11, 10^12] overlapped often enough that one CI run (2026-12-04) failed five tests: a 3e10
count that no poll saw running, a 6e10 count that ended in 2 s, and the tests after them.

fresh_range() hands out disjoint ranges, in order, from 10^12 up, two grid segments apart, so no stored
segment is shared. The webs on the session's database accept them because they run with WEB_ENV
(MAX_PRIMES_END raised from 10^12 to 10^13). The sieve is about as fast there as below 10^12: 6e9
numbers took 0.92 s from 3e11, 0.97 s from 2e12 and 1.05 s from 5e12 (primes.count_primes, one core).
"""

from __future__ import annotations

import random

from primes import SEGMENT_SPAN

BOTTOM, TOP = 10**12, 10**13
#: Environment for a Web on the session's database, so that it accepts fresh ranges.
WEB_ENV = {"MAX_PRIMES_END": TOP}

_next = [BOTTOM + random.randrange(SEGMENT_SPAN)]


def fresh_range(width: int) -> tuple[int, int]:
    """[lo, lo + width], disjoint from every range handed out before, and from their segments."""
    lo = _next[0]
    hi = lo + width
    if hi > TOP:
        raise RuntimeError(f"the fresh ranges up to {TOP:.0e} are used up; raise ranges.TOP")
    _next[0] = (hi // SEGMENT_SPAN + 2) * SEGMENT_SPAN + random.randrange(SEGMENT_SPAN)
    return lo, hi
