"""Prime counting and listing up to 2^64 - 1 (wheel-30 segmented sieve plus a bucket sieve, numba); no service code."""

from primes.blocks import MAX_N, BlockSieve
from primes.sieve import (
    SEGMENT_BYTES,
    SEGMENT_SPAN,
    Segment,
    count_primes,
    primes_between,
    segment_bounds,
    segment_index,
    segment_sieve,
    sieve_segment,
    warmup,
)

__all__ = [
    "MAX_N",
    "SEGMENT_BYTES",
    "SEGMENT_SPAN",
    "BlockSieve",
    "Segment",
    "count_primes",
    "primes_between",
    "segment_bounds",
    "segment_index",
    "segment_sieve",
    "sieve_segment",
    "warmup",
]
