"""Primes in [start, end], walked along the global segment grid so runs can pause, resume and share work.

Each grid step is one SEGMENT_SPAN segment (the first and last may be partial). After
each step the kernel reports progress and checkpoints {"next", "count", "sieved",
"reused"}, so a resumed run starts at the next unfinished segment. Segments sieved
by earlier jobs are taken from an optional store on the context (ctx.segments).

Consecutive segments that are not in the store come from one running BlockSieve, so
the big sieving primes are positioned once per run of segments, not once per segment:
near 2^64 positioning them costs 1-2 s, sieving one segment ~20 ms. Numbers go up to
2^64 - 1; listed primes are uint64 arrays.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from jobs.context import KernelContext
from primes import (
    MAX_N,
    SEGMENT_BYTES,
    SEGMENT_SPAN,
    BlockSieve,
    Segment,
    count_primes,
    primes_between,
    segment_bounds,
    segment_index,
    segment_sieve,
    sieve_segment,
)

#: Partial segments narrower than this are sieved directly: cheaper than fetching 1 MiB.
DIRECT_WIDTH = SEGMENT_SPAN // 32
#: Stored counts are looked up this many segments at a time in count mode.
COUNT_BATCH = 512


class SegmentStore(Protocol):
    """Shared cache of sieved grid segments, keyed by segment index k."""

    def counts(self, ks: list[int]) -> list[int | None]:
        """Prime counts of whole segments ks, None where unknown."""

    def load(self, k: int) -> bytes | None:
        """Segment.to_bytes() of segment k, or None if not stored."""

    def save(self, k: int, data: bytes | None, count: int) -> None:
        """Remember segment k's count, and its bitmap unless data is None (count-only)."""


class MemorySegmentStore:
    """In-process SegmentStore for tests and single-process use."""

    def __init__(self) -> None:
        self.data: dict[int, bytes] = {}
        self.count_of: dict[int, int] = {}

    def counts(self, ks: list[int]) -> list[int | None]:
        return [self.count_of.get(k) for k in ks]

    def load(self, k: int) -> bytes | None:
        return self.data.get(k)

    def save(self, k: int, data: bytes | None, count: int) -> None:
        self.count_of[k] = count
        if data is not None:
            self.data[k] = data


class _Walker:
    """Per-run helper: one grid step at a time, through the store when there is one."""

    def __init__(self, store: SegmentStore | None, end: int, stats: dict[str, int]) -> None:
        self.store = store
        self.stats = stats
        self.last_whole = segment_index(end + 1) - 1  # last segment lying entirely inside the range
        self.last = segment_index(end)
        self.known: dict[int, int | None] = {}
        self.sieve: BlockSieve | None = None

    def direct(self, k: int, lo: int, hi: int) -> bool:
        """Sieve [lo, hi] on its own: the run is this one partial segment, and there is no store
        or it is narrower than fetching 1 MiB is worth."""
        seg_lo, seg_hi = segment_bounds(k)
        whole = lo == seg_lo and hi == seg_hi
        return k == self.last and not whole and (self.store is None or hi - lo + 1 < DIRECT_WIDTH)

    def stored_count(self, k: int) -> int | None:
        """Count of whole segment k from the store, fetched COUNT_BATCH segments ahead."""
        if self.store is None:
            return None
        if k not in self.known:
            ks = list(range(k, max(k + 1, min(k + COUNT_BATCH, self.last_whole + 1))))
            self.known = dict(zip(ks, self.store.counts(ks), strict=True))
        return self.known.get(k)

    def sieved(self, k: int) -> Segment:
        """Segment k sieved, continuing the running sieve when it stands at k."""
        if self.sieve is None or self.sieve.pos != k * SEGMENT_BYTES:
            self.sieve = segment_sieve(k, self.last)
        self.stats["sieved"] += 1
        return sieve_segment(k, self.sieve)

    def segment(self, k: int) -> Segment:
        """Segment k from the store, else sieved and saved with its bitmap."""
        if self.store is not None:
            data = self.store.load(k)
            if data is not None and len(data) == SEGMENT_BYTES:  # anything else is foreign: sieve again
                self.stats["reused"] += 1
                return Segment.from_bytes(k, data)
        seg = self.sieved(k)
        if self.store is not None:
            self.store.save(k, seg.to_bytes(), seg.count)
        return seg

    def count(self, k: int, lo: int, hi: int) -> int:
        """Primes in [lo, hi] within segment k."""
        seg_lo, seg_hi = segment_bounds(k)
        whole = lo == seg_lo and hi == seg_hi
        if whole:
            known = self.stored_count(k)
            if known is not None:
                self.stats["reused"] += 1
                return known
            seg = self.sieved(k)
            if self.store is not None:
                # Counting never needs the bitmap again: store only the count (bitmaps are 1 MiB).
                self.store.save(k, None, seg.count)
            return seg.count
        if self.direct(k, lo, hi):
            self.stats["sieved"] += 1
            return count_primes(lo, hi)
        return self.segment(k).count_in(lo, hi)

    def primes(self, k: int, lo: int, hi: int) -> np.ndarray:
        """Sorted uint64 primes in [lo, hi] within segment k."""
        if self.direct(k, lo, hi):
            self.stats["sieved"] += 1
            return primes_between(lo, hi)
        return self.segment(k).primes_in(lo, hi)


def _position(n: int) -> int | str:
    """A checkpoint position as JSON can hold it: end + 1 is 2^64 when end is 2^64 - 1, one
    past what orjson writes, so that one value is kept as a decimal string."""
    return n if n <= MAX_N else str(n)


def run(params: dict[str, Any], ctx: KernelContext) -> dict[str, int]:
    """List or count the primes in [start, end]; returns {"sieved", "reused"} segment stats."""
    start, end = int(params["start"]), int(params["end"])
    if not 0 <= start <= end <= MAX_N:
        raise ValueError(f"range [{start}, {end}] outside [0, {MAX_N}]")
    count_mode = params.get("output", "list") == "count"
    total = end - start + 1
    state = ctx.resume_state or {}
    nxt = int(state.get("next", start))
    if not start <= nxt <= end + 1:
        raise ValueError(f"checkpoint position {nxt} lies outside [{start}, {end + 1}]")
    found = int(state.get("count", 0))
    stats = {"sieved": int(state.get("sieved", 0)), "reused": int(state.get("reused", 0))}
    walker = _Walker(ctx.segments, end, stats)

    def snapshot() -> dict[str, Any]:
        return {"next": _position(nxt), "count": found, **stats}

    def progress() -> None:
        # Both stay <= 2^64 - 1 (JSON-safe) even for the full 64-bit range.
        ctx.progress(min(nxt - start, MAX_N), min(total, MAX_N))

    # No checkpoint before the first segment: every checkpoint must mark progress, or a
    # context that stops at each one would never finish.
    progress()
    while nxt <= end:
        k = segment_index(nxt)
        hi = min(end, segment_bounds(k)[1])
        if count_mode:
            found += walker.count(k, nxt, hi)
        else:
            chunk = walker.primes(k, nxt, hi)
            found += int(chunk.size)
            if chunk.size:
                ctx.output.append(chunk)
        nxt = hi + 1
        progress()
        ctx.checkpoint(snapshot())
    if count_mode:
        ctx.output.write_value({"count": found})
    return stats
