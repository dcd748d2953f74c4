"""Prime counting and listing (wheel-30 segmented sieve in numba); no service code here."""

from primes.sieve import (
    MAX_N,
    SEGMENT_BYTES,
    SEGMENT_SPAN,
    Segment,
    count_primes,
    primes_between,
    segment_bounds,
    segment_index,
    sieve_segment,
    warmup,
)

__all__ = [
    "MAX_N",
    "SEGMENT_BYTES",
    "SEGMENT_SPAN",
    "Segment",
    "count_primes",
    "primes_between",
    "segment_bounds",
    "segment_index",
    "sieve_segment",
    "warmup",
]
