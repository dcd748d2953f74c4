"""Sort numbers exactly: numpy for int64-only input, float-only input, or ints within 2^53
among floats (sorted apart, then merged); Python's exact int/float order for anything wider.

The input is written at submit time (see jobs.types.sort): INT64_INPUT_MAGIC and the raw
little-endian int64 values when every number is an int64, else the canonical JSON array:
integers as plain digits, floats always with a '.' or an exponent, single commas, no whitespace.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import orjson

from jobs.context import KernelContext
from jobs.types.numbers import (  # noqa: F401 - the input's wire format, shared with the web's parser
    INT64_INPUT_MAGIC,
    MAX_INT_DIGITS,
    Oversized,
    has_wide_int_literal,
    loads_exact,
    parse_int_text,
)

#: Items per ctx.output.append call and per checkpoint while emitting.
EMIT_ITEMS = 1 << 20
#: Bytes of JSON decoded per orjson call, so float input never becomes one list of 10^7 objects.
DECODE_BYTES = 8 << 20
_INT64_MIN = np.iinfo(np.int64).min
_INT64_MAX = np.iinfo(np.int64).max
#: Integers up to this magnitude are exact as float64, so they can be ordered among floats there.
_EXACT_IN_FLOAT = 2.0 ** 53
#: orjson decodes integers in [-2^63, 2^64) exactly; it turns wider ones into floats at least this big.
_INT64_LIMIT = 2.0 ** 63


def _array_chunks(data: bytes, size: int) -> Iterator[bytes]:
    """Pieces of a JSON array of numbers, cut at commas and re-bracketed, each about `size` bytes."""
    end = len(data) - 1
    pos = 1
    while pos < end:
        stop = min(pos + size, end)
        if stop < end:
            cut = data.rfind(b",", pos, stop)
            if cut < 0:
                cut = data.find(b",", stop, end)
            stop = cut if cut >= 0 else end
        yield b"[" + data[pos:stop] + b"]"
        pos = stop + 1


def decode(data: bytes) -> tuple[str, Any, Any]:
    """Pick the cheapest exact representation: ("int64"|"float64", array, None), ("mixed",
    float64 values, is-int mask) for ints within 2^53 among floats, or ("python", list, None)."""
    if data.startswith(INT64_INPUT_MAGIC):  # no text to parse: the web already did
        return "int64", np.frombuffer(data, dtype="<i8", offset=len(INT64_INPUT_MAGIC)).astype(np.int64), None
    if len(data) < 3:  # b"[]", or b"" when no input was stored
        return "python", [], None
    if b"." not in data and b"e" not in data:
        values = np.fromstring(data[1:-1], dtype=np.int64, sep=",")
        # fromstring saturates on overflow, so the extremes may stand for wider integers.
        if values.min() > _INT64_MIN and values.max() < _INT64_MAX:
            return "int64", values, None
        return "python", loads_exact(data), None
    floats: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    any_int = False
    for chunk in _array_chunks(data, DECODE_BYTES):
        try:
            items = orjson.loads(chunk)
        except orjson.JSONDecodeError:  # an integer beyond the range of a double
            return "python", loads_exact(data), None
        values = np.array(items, dtype=np.float64)
        # orjson turns integers beyond 64 bits into floats of 2^63 or more, so only then look closer.
        if np.abs(values).max() >= _INT64_LIMIT and has_wide_int_literal(chunk):
            return "python", loads_exact(data), None
        if int in set(map(type, items)):
            mask = np.fromiter(map(int.__instancecheck__, items), dtype=bool, count=len(items))
            if np.abs(values[mask]).max() >= _EXACT_IN_FLOAT:
                return "python", loads_exact(data), None
            any_int = True
        else:
            mask = np.zeros(len(items), dtype=bool)
        floats.append(values)
        masks.append(mask)
        del items
    values = np.concatenate(floats)
    del floats
    if not any_int:
        return "float64", values, None
    return "mixed", values, np.concatenate(masks)


def _sort_floats(values: np.ndarray) -> None:
    """Sort in place; numpy's SIMD sort may swap the bits of 0.0 and -0.0 (they compare equal), so recount them."""
    zeros = values == 0
    total = int(np.count_nonzero(zeros))
    negative = int(np.count_nonzero(np.signbit(values) & zeros)) if total else 0
    del zeros
    values.sort()
    if total:
        lo = int(np.searchsorted(values, 0.0, "left"))
        values[lo:lo + negative] = -0.0
        values[lo + negative:lo + total] = 0.0


def _sort_mixed(values: np.ndarray, is_int: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort ints and floats apart and merge them: about twice as fast as an argsort of everything."""
    ints = values[is_int].astype(np.int64)
    floats = values[~is_int]
    ints.sort()
    _sort_floats(floats)
    at = np.searchsorted(floats, ints.astype(np.float64), "left") + np.arange(len(ints))
    merged = np.empty(len(values), dtype=np.float64)
    merged_is_int = np.zeros(len(values), dtype=bool)
    merged_is_int[at] = True
    merged[at] = ints
    merged[~merged_is_int] = floats
    return merged, merged_is_int


def _spans(n: int, descending: bool) -> Iterator[tuple[int, int]]:
    """[lo, hi) ranges of an ascending array in output order."""
    for start in range(0, n, EMIT_ITEMS):
        if descending:
            yield max(n - start - EMIT_ITEMS, 0), n - start
        else:
            yield start, min(start + EMIT_ITEMS, n)


def _pieces(kind: str, values: Any, mask: Any, descending: bool) -> Iterator[Any]:
    """The sorted output in pieces the writer can encode: contiguous arrays or lists."""
    step = -1 if descending else 1
    for lo, hi in _spans(len(values), descending):
        if kind in ("int64", "float64"):
            yield np.ascontiguousarray(values[lo:hi][::step])
        elif kind == "mixed":
            part, is_int = values[lo:hi][::step], mask[lo:hi][::step]
            items = np.empty(len(part), dtype=object)
            items[~is_int] = part[~is_int]  # float64 -> Python float
            items[is_int] = part[is_int].astype(np.int64)  # exact: |x| < 2^53
            yield items.tolist()
        else:
            yield values[lo:hi][::step]


def run(params: dict[str, Any], ctx: KernelContext) -> None:
    """Decode, sort, emit; not pausable since even 10^7 numbers sort in seconds, but cancel stops it between phases."""
    descending = bool(params.get("descending", False))
    data = ctx.input()
    ctx.progress(0, 3 * int(params.get("count", 0)))
    ctx.checkpoint(None)
    kind, values, mask = decode(data)
    del data
    n = len(values)
    total = 3 * n
    ctx.progress(n, total)
    ctx.checkpoint(None)
    if kind == "mixed":
        values, mask = _sort_mixed(values, mask)
    elif kind == "float64":
        _sort_floats(values)
    else:
        values.sort()
    ctx.progress(2 * n, total)
    ctx.checkpoint(None)
    done = 0
    if n == 0:
        ctx.output.append([])
    for piece in _pieces(kind, values, mask, descending):
        ctx.output.append(piece)
        done += len(piece)
        ctx.progress(2 * n + done, total)
        ctx.checkpoint(None)
