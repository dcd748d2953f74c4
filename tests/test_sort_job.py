"""Sort job: validation, canonical identity across JSON and file input, and exact kernel output."""

from __future__ import annotations

import io
import json
import math
from collections import Counter
from typing import Any
from unittest.mock import patch

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from werkzeug.datastructures import FileStorage, MultiDict

from jobs.context import LocalContext, Stop
from jobs.errors import InvalidParams
from jobs.kernels import sort as sort_kernel
from jobs.kernels.sort import MAX_INT_DIGITS, decode, has_wide_int_literal, run
from jobs.types import sort as sort_module
from jobs.types.sort import ECHO_MAX, SortJob
from jobs.types.spec import DEFAULT_QUEUE, FAST_QUEUE, Limits

JOB = SortJob()
LIMITS = Limits()

small_ints = st.integers(min_value=-(2 ** 53), max_value=2 ** 53)
int64s = st.integers(min_value=-(2 ** 63), max_value=2 ** 63 - 1)
huge_ints = st.one_of(st.integers(min_value=2 ** 63, max_value=2 ** 200),
                      st.integers(min_value=-(2 ** 200), max_value=-(2 ** 63) - 1))
floats = st.floats(allow_nan=False, allow_infinity=False)
special_floats = st.sampled_from([0.0, -0.0, 5e-324, -5e-324, 2.2250738585072014e-308, 1e16, 2.0 ** 63,
                                  1.7976931348623157e308, -1.7976931348623157e308, 0.1, 1.0, 2.0])
any_number = st.one_of(small_ints, int64s, huge_ints, floats, special_floats)
#: One list per kernel path: int64 only, floats only, ints within 2^53 among floats, anything.
number_lists = st.one_of(
    st.lists(int64s, max_size=40),
    st.lists(st.one_of(floats, special_floats), max_size=40),
    st.lists(st.one_of(small_ints, floats, special_floats), max_size=40),
    st.lists(any_number, max_size=40),
)


def raw_body(numbers: list[Any], descending: bool = False) -> bytes:
    """The body a client sends; the stdlib json module writes big ints exactly."""
    return json.dumps({"numbers": numbers, "descending": descending}).encode()


def submit_json(numbers: list[Any], descending: bool = False, limits: Limits = LIMITS) -> Any:
    """What the HTTP layer does: decode the raw body, then hand over both."""
    raw = raw_body(numbers, descending)
    return JOB.parse_json(JOB.decode_body(raw), limits, raw=raw)


def form(data: bytes, **fields: str) -> tuple[MultiDict, MultiDict]:
    return MultiDict(fields), MultiDict({"file": FileStorage(stream=io.BytesIO(data), filename="numbers.txt")})


def submit_file(data: bytes, limits: Limits = LIMITS, **fields: str) -> Any:
    return JOB.parse_form(*form(data, **fields), limits)


def sort_output(sub: Any) -> list[Any]:
    ctx = LocalContext(sub.input)
    run(sub.params, ctx)
    return ctx.output.items


def typed(values: list[Any]) -> Counter:
    """Multiset of (type, exact value) so 1 and 1.0, 0.0 and -0.0 count apart."""
    return Counter((type(x).__name__, x.hex() if type(x) is float else x) for x in values)


def assert_sorted_exactly(out: list[Any], numbers: list[Any], descending: bool) -> None:
    assert typed(out) == typed(numbers)
    # Equal values (1 and 1.0, 0.0 and -0.0) may come in either order; the values may not.
    assert out == sorted(numbers, reverse=descending)


def errors_of(call: Any) -> list[dict[str, Any]]:
    with pytest.raises(InvalidParams) as exc:
        call()
    return exc.value.errors


@settings(max_examples=300, deadline=None)
@given(number_lists, st.booleans())
def test_kernel_sorts_exactly_keeping_types(numbers: list[Any], descending: bool) -> None:
    out = sort_output(submit_json(numbers, descending))
    assert_sorted_exactly(out, numbers, descending)


@settings(max_examples=300, deadline=None)
@given(number_lists, st.booleans(), st.integers(1, 64), st.integers(1, 9))
def test_kernel_chunk_boundaries(numbers: list[Any], descending: bool, decode_bytes: int, emit_items: int) -> None:
    """Tiny decode and emit chunks, so every boundary case of the 8 MB / 1M-item pieces is hit."""
    sub = submit_json(numbers, descending)
    with patch.object(sort_kernel, "DECODE_BYTES", decode_bytes), patch.object(sort_kernel, "EMIT_ITEMS", emit_items):
        ctx = LocalContext(sub.input)
        run(sub.params, ctx)
    assert_sorted_exactly(ctx.output.items, numbers, descending)


def file_text(numbers: list[Any], seps: list[str], variants: list[int]) -> bytes:
    """The numbers as a person might write them: mixed separators, exponents, leading zeros and signs."""
    parts = []
    for i, x in enumerate(numbers):
        v = variants[i % len(variants)] if variants else 0
        if type(x) is int:
            text = str(x)
            if v == 1 and x >= 0:
                text = "+" + text
            elif v == 2:
                text = ("-" if x < 0 else "") + "00" + str(abs(x))
        else:
            text = repr(x) if v != 1 else f"{x:.17e}"
        parts.append(text)
        parts.append(seps[i % len(seps)])
    return "".join(parts).encode()


@settings(max_examples=200, deadline=None)
@given(number_lists.filter(bool), st.booleans(),
       st.lists(st.sampled_from([",", " ", "\n", ", ", "\r\n", "\t", ",,", " ,\n "]), min_size=1, max_size=5),
       st.lists(st.integers(0, 2), max_size=5))
def test_json_and_file_share_the_key(numbers: list[Any], descending: bool, seps: list[str],
                                     variants: list[int]) -> None:
    by_json = submit_json(numbers, descending)
    by_file = submit_file(file_text(numbers, seps, variants), descending="true" if descending else "0")
    assert by_file.key_material == by_json.key_material
    assert by_file.input == by_json.input
    assert by_file.params == by_json.params
    assert_sorted_exactly(sort_output(by_file), numbers, descending)


def test_canonical_identity() -> None:
    one = submit_json([1000.0, 0, 7, 2.5, 123456789012345678901234567890])
    other = submit_file(b" 1e3,-0\n+7\t007.0e-0 2.5\n123456789012345678901234567890\n")
    assert other.key_material != one.key_material  # 007.0e-0 is the float 7.0, not the int 7
    same = submit_file(b" 1e3,-0\n007  2.5\n123456789012345678901234567890\n")
    assert same.key_material == one.key_material
    assert submit_json([2]).key_material != submit_json([2.0]).key_material
    assert submit_json([2], True).key_material != submit_json([2]).key_material
    assert one.input == b"[1000.0,0,7,2.5,123456789012345678901234567890]"


def test_params_queue_and_echo() -> None:
    sub = submit_json([3, 1.5, 2])
    assert sub.params == {"numbers": [3, 1.5, 2], "descending": False, "count": 3}
    assert sub.queue == FAST_QUEUE
    assert sub.key_material.startswith(b"sort|asc|")
    big = submit_json([2 ** 70, 1])
    assert big.params == {"descending": False, "count": 2}  # orjson-stored records cannot hold 2^70
    many = submit_json(list(range(ECHO_MAX + 1)))
    assert "numbers" not in many.params and many.params["count"] == ECHO_MAX + 1
    assert JOB.queue_for({"count": 100_001}) == DEFAULT_QUEUE
    orjson.dumps(sub.params)  # what the record does


def test_integers_beyond_64_bits_stay_exact() -> None:
    values = [18446744073709551616, -9223372036854775809, 2 ** 64 - 1, -(2 ** 63), 10 ** 400, 1.5, 1e300, -1e19]
    raw = raw_body(values)
    # orjson alone would turn 2^64 into a float, and refuse 10^400 outright.
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(raw)
    sub = JOB.parse_json(JOB.decode_body(raw), LIMITS, raw=raw)
    out = sort_output(sub)
    assert out == sorted(values) and [type(x) for x in out] == [type(x) for x in sorted(values)]
    # Within double range the body decodes with orjson, and raw puts the integers right again.
    raw = raw_body([18446744073709551616, 2.5])
    body = orjson.loads(raw)
    assert body["numbers"][0] == 1.8446744073709552e19
    assert JOB.parse_json(body, LIMITS, raw=raw).input == b"[18446744073709551616,2.5]"


def test_wide_int_detection() -> None:
    assert has_wide_int_literal(b"[12345678901234567890]")
    assert has_wide_int_literal(b"-1234567890123456789")
    # A false alarm (a 20-digit mantissa, or 2^64 - 1 which orjson keeps) only costs a slower exact decode.
    assert not has_wide_int_literal(b"[1234567890123456789,1.8446744073709552e+19]")
    assert not has_wide_int_literal(b"[0.000012345678901234568,1e-1234567890123456789]")


def test_huge_integer_digit_cap() -> None:
    digits = "9" * (MAX_INT_DIGITS + 1)
    raw = b'{"numbers": [1, ' + digits.encode() + b"]}"
    errs = errors_of(lambda: JOB.parse_json(JOB.decode_body(raw), LIMITS, raw=raw))
    assert errs[0]["loc"] == ["body", "numbers", 1] and "quadratic" in errs[0]["msg"]
    errs = errors_of(lambda: submit_file(b"1 " + digits.encode()))
    assert errs[0]["loc"] == ["body", "file"] and "position 1" in errs[0]["msg"]
    raw = b'{"numbers": [1' + b"0" * (MAX_INT_DIGITS - 1) + b", 1]}"  # exactly at the cap
    out = sort_output(JOB.parse_json(JOB.decode_body(raw), LIMITS, raw=raw))
    assert out[0] == 1 and out[1] == 10 ** (MAX_INT_DIGITS - 1)


@pytest.mark.parametrize(("item", "msg"), [
    (True, "must be a number, not a boolean"),
    (False, "must be a number, not a boolean"),
    ("3", "must be a number, not a string"),
    (None, "must be a number, not null"),
    ([1], "must be a number, not an array"),
    ({"a": 1}, "must be a number, not an object"),
])
def test_non_numbers_are_named_by_index(item: Any, msg: str) -> None:
    numbers: list[Any] = [1, 2.5, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17]
    numbers.append(item)
    assert errors_of(lambda: submit_json(numbers)) == [{"loc": ["body", "numbers", 17], "msg": msg}]


def test_many_bad_items_report_a_bounded_list() -> None:
    errs = errors_of(lambda: submit_json([True] * 1000))
    assert 0 < len(errs) <= 20 and errs[0]["loc"] == ["body", "numbers", 0]


def test_nonfinite_floats_from_python_callers() -> None:
    for bad in (math.nan, math.inf, -math.inf):
        assert errors_of(lambda bad=bad: JOB.parse_json({"numbers": [1, bad]}, LIMITS)) == [
            {"loc": ["body", "numbers", 1], "msg": "must be a finite number"}]


def test_body_shape_errors() -> None:
    assert errors_of(lambda: JOB.parse_json({"numbers": [1], "extra": 1}, LIMITS)) == [
        {"loc": ["body", "extra"], "msg": "Extra inputs are not permitted"}]
    errs = errors_of(lambda: JOB.parse_json({"numbers": [1], "descending": "true"}, LIMITS))
    assert errs[0]["loc"] == ["body", "descending"]
    errs = errors_of(lambda: JOB.parse_json({"numbers": [1], "descending": 1}, LIMITS))
    assert errs[0]["loc"] == ["body", "descending"]
    for numbers in ("1,2", 5, {"a": 1}, None):
        errs = errors_of(lambda numbers=numbers: JOB.parse_json({"numbers": numbers}, LIMITS))
        assert errs[0]["loc"] == ["body", "numbers"]
    assert errors_of(lambda: JOB.parse_json({}, LIMITS))[0]["loc"] == ["body", "numbers"]
    assert errors_of(lambda: JOB.parse_json([1, 2], LIMITS))[0]["loc"] == ["body"]
    # Shape and item errors come together.
    errs = errors_of(lambda: JOB.parse_json({"numbers": [1, None], "descending": "x"}, LIMITS))
    assert {tuple(e["loc"]) for e in errs} == {("body", "descending"), ("body", "numbers", 1)}


def test_descending_defaults_to_false() -> None:
    assert JOB.parse_json({"numbers": [2, 1]}, LIMITS).params["descending"] is False


def test_length_limit_is_checked_first() -> None:
    small = Limits(max_sort_length=5)
    assert submit_json([1, 2, 3, 4, 5], limits=small).params["count"] == 5
    errs = errors_of(lambda: submit_json([1, 2, 3, 4, 5, "x"], limits=small))
    assert errs == [{"loc": ["body", "numbers"], "msg": "at most 5 numbers are allowed (MAX_SORT_LENGTH), got 6"}]
    assert submit_file(b"1 2 3 4 5", limits=small).params["count"] == 5
    errs = errors_of(lambda: submit_file(b"1 2 3 4 5 x", limits=small))
    assert errs[0]["loc"] == ["body", "file"] and "MAX_SORT_LENGTH" in errs[0]["msg"]


@pytest.mark.parametrize(("data", "msg"), [
    (b"", "file contains no numbers"),
    (b" ,\n\t, ", "file contains no numbers"),
    (b"1, 2, abc", "token 'abc' at position 2 is not a number"),
    (b"1 2 nan", "token 'nan' at position 2 is not a finite number (NaN and Infinity are not allowed)"),
    (b"NaN", "token 'NaN' at position 0 is not a finite number (NaN and Infinity are not allowed)"),
    (b"1 -Infinity", "token '-Infinity' at position 1 is not a finite number (NaN and Infinity are not allowed)"),
    (b"inf", "token 'inf' at position 0 is not a finite number (NaN and Infinity are not allowed)"),
    (b"1e400", "token '1e400' at position 0 is out of range for a 64-bit float"),
    (b"1 true", "token 'true' at position 1 is not a number"),
    (b"1 null", "token 'null' at position 1 is not a number"),
    (b'1 "2"', "token '\"2\"' at position 1 is not a number"),
    (b"1 - 2", "token '-' at position 1 is not a number"),
    (b"1 2-3", "token '2-3' at position 1 is not a number"),
    (b"1_000", "token '1_000' at position 0 is not a number"),
    (b"0x10", "token '0x10' at position 0 is not a number"),
    (b"[1 2]", "token '[1' at position 0 is not a number"),
    (b"1 2 +", "token '+' at position 2 is not a number"),
    (b"1.2.3", "token '1.2.3' at position 0 is not a number"),
])
def test_file_errors(data: bytes, msg: str) -> None:
    assert errors_of(lambda: submit_file(data)) == [{"loc": ["body", "file"], "msg": msg}]


def test_file_form_fields() -> None:
    for flag, want in (("true", True), ("FALSE", False), ("1", True), ("0", False), ("on", True), ("off", False)):
        assert submit_file(b"1 2", descending=flag).params["descending"] is want
    assert submit_file(b"1 2").params["descending"] is False
    assert errors_of(lambda: submit_file(b"1", descending="maybe"))[0]["loc"] == ["body", "descending"]
    assert errors_of(lambda: submit_file(b"1", other="x"))[0]["loc"] == ["body", "other"]
    assert errors_of(lambda: JOB.parse_form(MultiDict(), MultiDict(), LIMITS)) == [
        {"loc": ["body", "file"], "msg": "field required"}]
    assert submit_file(b"\xef\xbb\xbf3\r\n1\r\n2\r\n").params["numbers"] == [3, 1, 2]
    assert submit_file(b"5.").params["numbers"] == [5.0]
    assert submit_file(b".5 -.5").params["numbers"] == [0.5, -0.5]


def test_json_stays_strict_through_decode_body() -> None:
    wide = b"1" * 400
    for raw in (b'{"numbers": [NaN]}', b'{"numbers": [Infinity]}', b'{"numbers": [1,]}', b'{"numbers": [+1]}',
                b'{"numbers": [' + wide + b", NaN]}", b'{"numbers": [' + wide + b",]}",
                b"[" * 100_000 + wide + b"]" * 100_000):
        with pytest.raises(ValueError):
            JOB.decode_body(raw)


def test_kernel_paths_and_ties() -> None:
    assert decode(b"[3,-1,2]")[0] == "int64"
    assert decode(b"[3.5,-1.0]")[0] == "float64"
    assert decode(b"[3.5,-1,2]")[0] == "mixed"
    assert decode(b"[3.5,9007199254740993]")[0] == "python"  # 2^53 + 1 is not exact as a float
    assert decode(b"[1,9223372036854775807]")[0] == "python"  # numpy saturates at the int64 edge
    assert decode(b"[1,18446744073709551615]")[0] == "python"
    assert decode(b"[]")[0] == "python"
    for numbers in ([1, 1.0, -0.0, 0, 0.0, 1, 2.0], [9007199254740993, 9007199254740992.0, 9007199254740992]):
        for descending in (False, True):
            assert_sorted_exactly(sort_output(submit_json(numbers, descending)), numbers, descending)


def test_signed_zeros_survive_numpy_sort() -> None:
    """numpy's SIMD sort can turn 0.0 into -0.0 and back; the kernel must keep each one's sign."""
    rng = np.random.default_rng(3)
    values = rng.standard_normal(200_000)
    values[rng.choice(len(values), 3000, replace=False)] = 0.0
    values[rng.choice(len(values), 1000, replace=False)] = -0.0
    for descending in (False, True):
        ctx = LocalContext(orjson.dumps(values, option=orjson.OPT_SERIALIZE_NUMPY))
        run({"descending": descending, "count": len(values)}, ctx)
        out = np.array(ctx.output.items)
        want = np.sort(values)
        assert np.array_equal(out, want[::-1] if descending else want)
        assert np.count_nonzero(np.signbit(out) & (out == 0)) == np.count_nonzero(np.signbit(values) & (values == 0))
        assert np.count_nonzero(out == 0) == np.count_nonzero(values == 0)


def test_kernel_empty_input() -> None:
    sub = submit_json([])
    ctx = LocalContext(sub.input)
    run(sub.params, ctx)
    assert ctx.output.items == []


def test_kernel_cancel_stops_between_phases() -> None:
    sub = submit_json([3, 1, 2])
    ctx = LocalContext(sub.input, stop_after=2)
    with pytest.raises(Stop):
        run(sub.params, ctx)
    assert ctx.output.items == []
    ctx = LocalContext(sub.input)
    run(sub.params, ctx)
    assert ctx.progress_calls[0] == (0, 9) and ctx.progress_calls[-1] == (9, 9)


def test_million_int64_sanity() -> None:
    values = np.random.default_rng(7).integers(-(2 ** 63), 2 ** 63 - 1, 1_000_000)
    raw = orjson.dumps({"numbers": values, "descending": True}, option=orjson.OPT_SERIALIZE_NUMPY)
    sub = JOB.parse_json(orjson.loads(raw), LIMITS, raw=raw)
    assert sub.params["count"] == 1_000_000 and sub.queue == DEFAULT_QUEUE
    ctx = LocalContext(sub.input)
    run(sub.params, ctx)
    assert np.array_equal(np.array(ctx.output.items, dtype=np.int64), np.sort(values)[::-1])


# -- the int64 fast path of decode_body (jobs.types.sort.int64_body) ------------------------------

fast_lists = st.lists(st.one_of(int64s, st.sampled_from([2 ** 63 - 1, -(2 ** 63), 0, -1, 1])), min_size=1, max_size=40)


def exact_submission(raw: bytes) -> Any:
    """The exact path alone: orjson (or the stdlib for wide ints), never the fast path."""
    return JOB.parse_json(json.loads(raw), LIMITS, raw=raw)


@settings(max_examples=300, deadline=None)
@given(fast_lists, st.booleans(), st.sampled_from([(",", ": "), (", ", ": "), (",", ":")]))
def test_int64_fast_path_matches_exact_path(numbers: list[int], descending: bool, seps: tuple[str, str]) -> None:
    raw = json.dumps({"numbers": numbers, "descending": descending}, separators=seps).encode()
    body = JOB.decode_body(raw)
    assert isinstance(body, sort_module.Int64Body)
    fast, exact = JOB.parse_json(body, LIMITS, raw=raw), exact_submission(raw)
    assert fast.key_material == exact.key_material
    assert fast.input == exact.input
    assert fast.params == exact.params
    assert sort_output(fast) == sort_output(exact) == sorted(numbers, reverse=descending)


@settings(max_examples=300, deadline=None)
@given(st.lists(any_number, min_size=1, max_size=40), st.booleans())
def test_fast_path_and_exact_path_agree_on_anything(numbers: list[Any], descending: bool) -> None:
    """Floats, -0.0, wide ints mixed in: whichever path decode_body takes, the canonical key and output agree."""
    raw = raw_body(numbers, descending)
    via_api, exact = submit_json(numbers, descending), exact_submission(raw)
    assert via_api.key_material == exact.key_material
    assert via_api.input == exact.input
    assert sort_output(via_api) == sort_output(exact)


@pytest.mark.parametrize("raw", [
    b'{"numbers": [1, -0, 2]}', b'{"numbers": [01, 2]}', b'{"numbers": [+1, 2]}', b'{"numbers": [1 2]}',
    b'{"numbers": [1,,2]}', b'{"numbers": [1,2,]}', b'{"numbers": [-, 2]}', b'{"numbers": [1-2]}',
    b'{"numbers": [9223372036854775808]}', b'{"numbers": [-9223372036854775809]}',
    b'{"numbers": [99999999999999999999]}', b'{"numbers": [1.0, 2]}', b'{"numbers": [-0.0]}',
    b'{"numbers": [1], "numbers": [2]}', b'{"numb\\u0065rs": [1], "numbers": [2]}',
    b'{"x\\"numbers": [1], "numbers": [2]}', b'{"numbers": [1], "extra": 1}', b'{"numbers": [1], "descending": 1}',
    b'{"a": {"numbers": [1]}}', b'["numbers", [1]]', b'{"numbers": []}', b'{"numbers": [1]',
])
def test_int64_fast_path_declines_anything_not_plain(raw: bytes) -> None:
    """Anything but canonical int64 literals in a clean object goes the exact way (same results, same errors)."""
    assert sort_module.int64_body(raw) is None


def test_int64_fast_path_keeps_errors_and_limits() -> None:
    raw = b'{"numbers": [3, 1, 2]}'
    sub = JOB.parse_json(JOB.decode_body(raw), LIMITS, raw=raw)
    assert sub.params == {"numbers": [3, 1, 2], "descending": False, "count": 3}
    small = Limits(max_sort_length=2)
    assert errors_of(lambda: JOB.parse_json(JOB.decode_body(raw), small, raw=raw)) == \
        errors_of(lambda: JOB.parse_json(orjson.loads(raw), small, raw=raw))


def test_int64_input_is_stored_raw_and_decoded_back() -> None:
    values = [2 ** 63 - 1, -(2 ** 63), 5, -7, 0]
    sub = submit_json(values)
    assert sub.input == sort_kernel.INT64_INPUT_MAGIC + np.array(values, dtype="<i8").tobytes()
    kind, decoded, _ = decode(sub.input)
    assert kind == "int64" and decoded.tolist() == values
    # Wider integers, floats and the empty list keep the JSON text.
    assert submit_json([2 ** 63, 1]).input == b"[9223372036854775808,1]"
    assert submit_json([1.0, 2]).input == b"[1.0,2]"
