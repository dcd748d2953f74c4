"""The primes kernel with LocalContext: output, checkpoints and resume, and segment reuse."""

from __future__ import annotations

from typing import Any

import gmpy2
import numpy as np
import orjson
import pytest
from redis import Redis

from jobs.context import LocalContext, Stop
from jobs.kernels.primes import DIRECT_WIDTH, MemorySegmentStore
from jobs.kernels.primes import run as run_primes
from jobs.types.primes import PrimesJob
from jobs.types.spec import DEFAULT_QUEUE, FAST_QUEUE, Limits
from primes import MAX_N, SEGMENT_SPAN, count_primes, primes_between, segment_bounds, segment_index

S = SEGMENT_SPAN


def params(start: int, end: int, output: str = "list") -> dict[str, Any]:
    return {"start": start, "end": end, "output": output}


class StoreContext(LocalContext):
    """LocalContext carrying a segment store, as the Redis runner context does."""

    def __init__(self, segments: MemorySegmentStore, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.segments = segments


def run_to_end(p: dict[str, Any], make_ctx: Any, stop_after: int) -> tuple[list[Any], Any, int]:
    """Run, stopping after every `stop_after` checkpoints and resuming in a fresh context."""
    items: list[Any] = []
    state = None
    runs = 0
    while True:
        ctx = make_ctx(resume_state=state, stop_after=stop_after)
        runs += 1
        try:
            stats = run_primes(p, ctx)
        except Stop:
            items.extend(ctx.output.items)
            assert ctx.saved_state is not None
            state = ctx.saved_state
            continue
        items.extend(ctx.output.items)
        return items, (ctx.output.value, stats), runs


@pytest.mark.parametrize(("start", "end"), [(0, 100), (0, 0), (24, 28), (S - 50, S + 50),
                                            (S - 1000, 3 * S + 1000), (10**12 - 10**5, 10**12)])
def test_list_and_count_match_library(start: int, end: int) -> None:
    ctx = LocalContext()
    run_primes(params(start, end), ctx)
    assert ctx.output.items == primes_between(start, end).tolist()
    ctx = LocalContext()
    run_primes(params(start, end, "count"), ctx)
    assert ctx.output.value == {"count": count_primes(start, end)}


def test_progress_reported() -> None:
    ctx = LocalContext()
    run_primes(params(5, 2 * S + 7, "count"), ctx)
    total = 2 * S + 3
    assert ctx.progress_calls[0] == (0, total)
    assert ctx.progress_calls[-1] == (total, total)
    dones = [d for d, _ in ctx.progress_calls]
    assert dones == sorted(dones)
    assert len(ctx.progress_calls) >= 3  # one per segment at least
    assert ctx.checkpoints >= 3


@pytest.mark.parametrize("output", ["list", "count"])
@pytest.mark.parametrize("stop_after", [1, 2, 3])
def test_stop_and_resume_equals_uninterrupted(output: str, stop_after: int) -> None:
    p = params(S - 5000, 3 * S + 5000, output)
    whole = LocalContext()
    run_primes(p, whole)
    items, (value, _), runs = run_to_end(p, LocalContext, stop_after)
    assert runs > 1
    assert items == whole.output.items
    assert value == whole.output.value


def test_resume_does_not_redo_segments() -> None:
    p = params(0, 4 * S - 1, "count")
    ctx = LocalContext(stop_after=2)
    with pytest.raises(Stop):
        run_primes(p, ctx)
    state = ctx.saved_state
    assert state is not None and state["next"] == 2 * S and state["sieved"] == 2
    resumed = LocalContext(resume_state=state)
    stats = run_primes(p, resumed)
    assert stats == {"sieved": 4, "reused": 0}  # 2 before the stop + 2 after, none twice
    assert resumed.output.value == {"count": count_primes(0, 4 * S - 1)}
    assert resumed.progress_calls[0] == (2 * S, 4 * S)


def test_list_output_is_numpy_per_segment() -> None:
    """Each segment's primes arrive as one uint64 array, never as one big Python list."""
    appended: list[Any] = []

    class Spy(LocalContext):
        def __init__(self) -> None:
            super().__init__()
            self.output.append = appended.append  # type: ignore[method-assign]

    run_primes(params(0, 3 * S - 1), Spy())
    assert len(appended) == 3
    assert all(isinstance(a, np.ndarray) and a.dtype == np.uint64 for a in appended)
    assert sum(a.size for a in appended) == count_primes(0, 3 * S - 1)


@pytest.mark.parametrize("output", ["count", "list"])
def test_store_reuses_segments(output: str) -> None:
    store = MemorySegmentStore()
    first = run_primes(params(0, 3 * S - 1, output), StoreContext(store))
    assert first == {"sieved": 3, "reused": 0}
    second = run_primes(params(2 * S, 5 * S - 1, output), StoreContext(store))
    assert second == {"sieved": 2, "reused": 1}
    ctx = StoreContext(store)
    third = run_primes(params(0, 5 * S - 1, output), ctx)
    assert third == {"sieved": 0, "reused": 5}
    if output == "count":
        assert ctx.output.value == {"count": count_primes(0, 5 * S - 1)}
        assert not store.data  # count mode keeps only counts for whole segments
    else:
        assert ctx.output.items == primes_between(0, 5 * S - 1).tolist()
        assert sorted(store.data) == [0, 1, 2, 3, 4]


def test_store_partial_edges() -> None:
    """Wide partial edges go through stored bitmaps; narrow ones are sieved directly."""
    store = MemorySegmentStore()
    start, end = S // 2, 2 * S + S // 2
    ctx = StoreContext(store)
    assert run_primes(params(start, end, "count"), ctx) == {"sieved": 3, "reused": 0}
    assert sorted(store.data) == [0, 2]  # the edges were sieved whole and kept as bitmaps
    again = StoreContext(store)
    assert run_primes(params(start + 1, end - 1, "count"), again) == {"sieved": 0, "reused": 3}
    assert again.output.value == ctx.output.value == {"count": count_primes(start, end)}
    narrow = StoreContext(store)
    stats = run_primes(params(7 * S + 10, 7 * S + 10 + DIRECT_WIDTH - 2, "list"), narrow)
    assert stats == {"sieved": 1, "reused": 0}
    assert 7 not in store.data


def test_store_resume_with_stops() -> None:
    store = MemorySegmentStore()
    p = params(S - 5000, 4 * S + 5000)
    items, _, runs = run_to_end(p, lambda **kw: StoreContext(store, **kw), 2)
    assert runs > 1
    assert items == primes_between(S - 5000, 4 * S + 5000).tolist()


def test_corrupt_stored_segment_is_resieved() -> None:
    store = MemorySegmentStore()
    store.save(1, b"garbage", 123)
    ctx = StoreContext(store)
    assert run_primes(params(S, 2 * S - 1), ctx) == {"sieved": 1, "reused": 0}
    assert ctx.output.items == primes_between(S, 2 * S - 1).tolist()


def test_spec_routing_and_validation() -> None:
    job = PrimesJob()
    assert job.queue_for(params(0, 2_000_000)) == FAST_QUEUE
    assert job.queue_for(params(0, 2_000_001)) == DEFAULT_QUEUE
    assert job.expected_seconds(params(0, 10**12, "count")) >= 1.0
    sub = job.parse_json({"start": 3, "end": 10}, Limits())
    assert sub.params == {"start": 3, "end": 10, "output": "list"}
    from jobs.errors import InvalidParams
    for body, loc in [({"start": 10, "end": 3}, "end"), ({"start": -1, "end": 3}, "start"),
                      ({"start": 0, "end": 10**13, "output": "count"}, "end"),
                      ({"start": 0, "end": 101}, "end"), ({"start": 0, "end": 1, "x": 1}, "x"),
                      ({"start": True, "end": 3}, "start"), ({"start": 0, "end": 5, "output": "sum"}, "output")]:
        with pytest.raises(InvalidParams) as err:
            job.parse_json(body, Limits(max_primes_list_width=100))
        assert err.value.errors[0]["loc"] == ["body", loc], body
    assert job.parse_json({"start": 0, "end": 101, "output": "count"},
                          Limits(max_primes_list_width=100)).params["end"] == 101


def test_top_of_64_bit_range_stop_resume_and_store() -> None:
    """[2^64 - 2S, 2^64 - 1] with stops: exact counts and lists, a JSON-safe last checkpoint, store reuse."""
    top = MAX_N
    start = top - 2 * S
    store = MemorySegmentStore()
    items, _, runs = run_to_end(params(start, top), lambda **kw: StoreContext(store, **kw), 1)
    assert runs > 1
    assert items[-1] == 2**64 - 59 and all(type(p) is int for p in items[-5:])
    assert items == sorted(items) and len(items) == len(set(items))
    tail = [p for p in items if p >= top - 10**5]
    expected, p = [], gmpy2.next_prime(top - 10**5 - 1)
    while p <= top:
        expected.append(int(p))
        p = gmpy2.next_prime(p)
    assert tail == expected
    ctx = StoreContext(store)
    assert run_primes(params(start, top, "count"), ctx)["sieved"] == 0  # every segment came from the store
    assert ctx.output.value == {"count": len(items)}
    # The last checkpoint's position is 2^64: kept as a string so orjson can write it.
    last = LocalContext(stop_after=1)
    with pytest.raises(Stop):
        run_primes(params(top - 100, top, "count"), last)
    assert last.saved_state is not None and last.saved_state["next"] == str(top + 1)
    assert orjson.loads(orjson.dumps(last.saved_state)) == last.saved_state
    assert last.progress_calls[-1] == (101, 101)
    resumed = LocalContext(resume_state={"next": str(top + 1), "count": 7, "sieved": 1, "reused": 0})
    run_primes(params(top - 100, top, "count"), resumed)
    assert resumed.output.value == {"count": 7}


def test_consecutive_segments_share_one_sieve(monkeypatch: pytest.MonkeyPatch) -> None:
    """A run of unstored segments is sieved by one BlockSieve (big primes positioned once)."""
    import jobs.kernels.primes as kernel

    made: list[tuple[int, int]] = []
    real = kernel.segment_sieve

    def spy(k0: int, k1: int) -> Any:
        made.append((k0, k1))
        return real(k0, k1)

    monkeypatch.setattr(kernel, "segment_sieve", spy)
    k = segment_index(10**15)
    store = MemorySegmentStore()
    store.save(k + 2, None, count_primes(*segment_bounds(k + 2)))  # a stored count in the middle
    ctx = StoreContext(store)
    start, end = k * S + 12345, (k + 5) * S - 1
    assert run_primes(params(start, end, "count"), ctx) == {"sieved": 4, "reused": 1}
    assert made == [(k, k + 4), (k + 3, k + 4)]
    assert ctx.output.value == {"count": count_primes(start, end)}


def test_redis_segment_store_near_2_64(redis_conn: Redis) -> None:
    """The Redis store keeps the top segments' counts and bitmaps, and a second job reuses them exactly."""
    from jobs.store.segments import SEGMENT_COUNTS_KEY, SEGMENT_KEY, RedisSegmentStore

    store = RedisSegmentStore(redis_conn, ttl_seconds=600)
    k_top = segment_index(MAX_N)
    start, end = segment_bounds(k_top - 1)[0] + 99, MAX_N
    keys = [SEGMENT_KEY.format(k=k) for k in (k_top - 1, k_top)]
    redis_conn.delete(*keys)
    redis_conn.hdel(SEGMENT_COUNTS_KEY, str(k_top - 1), str(k_top))
    first = StoreContext(store)
    assert run_primes(params(start, end), first) == {"sieved": 2, "reused": 0}
    assert all(redis_conn.exists(key) for key in keys)  # both (partial) edges stored as bitmaps
    again = StoreContext(store)
    assert run_primes(params(start + 1, end), again) == {"sieved": 0, "reused": 2}
    assert again.output.items == [p for p in first.output.items if p >= start + 1]
    assert first.output.items[-1] == 2**64 - 59
    counted = StoreContext(store)
    run_primes(params(start, end, "count"), counted)
    assert counted.output.value == {"count": len(first.output.items)}


def test_top_primes_through_the_redis_result_path(redis_conn: Redis) -> None:
    """Primes above 2^63 written by the kernel's uint64 arrays come back as exact JSON integers, paged."""
    from jobs.store.results import RedisResultWriter, ResultReader

    lo, hi = MAX_N - 3_000, MAX_N
    found = primes_between(lo, hi)
    writer = RedisResultWriter(redis_conn, "top-primes-test")
    writer.append(found[:40])
    writer.append(found[40:])
    reader = ResultReader(redis_conn, "top-primes-test", writer.finish())
    assert orjson.loads(b"".join(reader.iter_json())) == found.tolist()
    page = orjson.loads(b"".join(reader.iter_page_json(38, 5)))
    assert page == found.tolist()[38:43] and all(p > 2**63 for p in page)
    assert orjson.loads(orjson.dumps({"count": len(found), "last": page[-1]}))["last"] == found.tolist()[42]
