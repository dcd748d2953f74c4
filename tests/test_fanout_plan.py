"""The split rule of a wide primes job (jobs.types.primes.PrimesJob.split), pure: no Redis, no workers.

Hypothesis draws ranges anywhere in [0, 2^64) and checks what jobs.store.fanout relies on: the parts
cover [start, end] exactly, in order, with no gap and no overlap; every inner bound lies on the sieve's
segment grid (so each part sieves, stores and reuses whole segments); the count stays within
[2, part_limit] (max_parts, fewer near 2^64 where each part's setup is dear); a job under min_seconds of
estimated divisible work runs whole; and the parts are about even.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from jobs.types.primes import MIN_PARTS, PART_SECONDS, SEGMENT_SPAN, PrimesJob

S = SEGMENT_SPAN
TOP = 2**64 - 1
SPEC = PrimesJob()


@st.composite
def ranges(draw: Any) -> tuple[int, int]:
    """A range anywhere below 2^64, its start often on or next to the grid, its width from 0 to 10^12."""
    start = draw(st.one_of(st.integers(0, TOP), st.integers(0, TOP // S).map(lambda k: k * S + draw(
        st.sampled_from([0, 1, S - 1])))))
    start = min(start, TOP)
    width = draw(st.one_of(st.integers(0, 10**12), st.integers(0, 200).map(lambda k: k * S + draw(
        st.sampled_from([-1, 0, 1])))))
    width = max(0, min(width, TOP - start))
    return start, start + width


def check(start: int, end: int, output: str, min_seconds: float, max_parts: int) -> list[tuple[int, int]]:
    params = {"start": start, "end": end, "output": output}
    parts = SPEC.split(params, min_seconds, max_parts)
    seconds = SPEC.divisible_seconds(params)
    limit = SPEC.part_limit(params, max_parts)
    assert 2 <= limit <= max_parts or max_parts < 2
    if seconds <= min_seconds or max_parts < 2:
        assert parts == []
        return parts
    if not parts:  # runs whole only when the range does not reach past its first grid segment's end
        assert end // S == start // S or (start // S + 1) * S > end, (start, end)
        return parts
    assert 2 <= len(parts) <= limit
    assert parts[0][0] == start and parts[-1][1] == end
    for lo, hi in parts:
        assert lo <= hi
    for (_, hi), (lo, _) in itertools.pairwise(parts):
        assert hi + 1 == lo, "a gap or an overlap between parts"
        assert lo % S == 0, "an inner bound off the segment grid"
    assert sum(hi - lo + 1 for lo, hi in parts) == end - start + 1
    # About even: the inner parts are all one whole number of segments, and no part is longer than that.
    widths = [hi - lo + 1 for lo, hi in parts]
    if len(parts) >= 3:
        step = widths[1]
        assert step % S == 0 and all(w == step for w in widths[1:-1])
        assert widths[0] <= step  # the first runs from start to the grid
        if len(parts) < limit:  # the last holds the remainder (under half a part rides along), unless the
            assert widths[-1] < step + step // 2  # limit cut the cutting short
    # As many parts as the estimate asks for (at least MIN_PARTS), where the grid has room for them.
    wanted = min(limit, max(MIN_PARTS, math.ceil(seconds / PART_SECONDS)))
    cells = end // S - start // S + 1
    assert len(parts) >= min(wanted, cells - 1), (len(parts), wanted, cells)
    return parts


@settings(max_examples=600, deadline=None)
@given(ranges(), st.sampled_from(["count", "list"]), st.sampled_from([0.01, 0.05, 0.5, 2.0]),
       st.integers(1, 64))
@example((TOP - 10**9 + 1, TOP), "count", 0.5, 64)
@example((TOP - 5 * S, TOP), "count", 0.01, 64)
@example((TOP - 3 * S, TOP), "list", 0.01, 64)
@example((0, 10**12), "count", 0.5, 64)
@example((0, TOP), "count", 0.5, 64)
@example((TOP, TOP), "count", 0.0, 64)
def test_parts_cover_the_range_exactly_on_the_grid(rng: tuple[int, int], output: str, min_seconds: float,
                                                   max_parts: int) -> None:
    check(*rng, output, min_seconds, max_parts)


def test_the_issues_cases() -> None:
    assert check(0, 10**6, "count", 0.5, 64) == []  # trivial: whole
    assert len(check(10**12 - 10**10, 10**12, "count", 0.5, 64)) >= MIN_PARTS  # a 10^10-wide count splits
    assert len(check(0, 2 * 10**11, "count", 0.5, 64)) >= 2 * MIN_PARTS
    assert len(check(0, 10**12, "count", 0.5, 64)) == 64  # the widest count: as many parts as allowed
    # At the top of the 64-bit range every part first sets up the 2e8 sieving primes below 2^32 (~1.1 s), so
    # a 10^9-wide count splits in 2 (1.6 s of numbers), not 4; a 10^11-wide one still uses every part it may.
    assert len(check(TOP - 10**9 + 1, TOP, "count", 0.5, 64)) == 2
    assert len(check(TOP - 10 * S, TOP, "count", 0.01, 64)) == 2
    assert len(check(TOP - 10**11, TOP, "count", 0.5, 64)) == SPEC.part_limit(
        {"start": TOP - 10**11, "end": TOP, "output": "count"}, 64) > MIN_PARTS


def test_batch_chunks_weigh_a_split_item_by_its_parts() -> None:
    """A batch writes its items in scripts of CHUNK runs (jobs.batches): a wide primes item that splits is its
    whole job plus one run per part, so a chunk of such items holds fewer of them, and the order is kept."""
    from jobs.batches import CHUNK, BatchService
    from jobs.settings import Settings
    from jobs.types.spec import Limits

    svc = object.__new__(BatchService)  # chunks() reads only the settings
    svc.settings = Settings()
    wide = SPEC.parse_json({"start": 0, "end": 10**12, "output": "count"}, Limits())
    small = SPEC.parse_json({"start": 0, "end": 100, "output": "count"}, Limits())
    parts = len(SPEC.split(wide.params, svc.settings.fanout_min_seconds, svc.settings.fanout_max_parts))
    assert parts == 64
    items = [wide] * 10 + [small] * 300 + [wide]
    chunks = svc.chunks(items)
    assert [s for c in chunks for s in c] == items
    for chunk in chunks:
        weight = sum(1 + (parts if s is wide else 0) for s in chunk)
        assert weight <= CHUNK or len(chunk) == 1
    assert len(chunks[0]) == CHUNK // (parts + 1)  # 3 wide items of 65 runs each
