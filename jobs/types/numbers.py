"""The wire format of number input (the sort job's numbers), shared by the web's parser and the kernel.

Lives with the job types, not the kernels, so the web reads a sort request without importing compute
code: numpy and gmpy2 are loaded only by the functions that need them (see jobs.types.sort).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import orjson

#: Prefix of a stored input that is raw little-endian int64 values rather than JSON text.
INT64_INPUT_MAGIC = b"I64\n"
#: Digits allowed per integer: CPython converts between int and str in quadratic time.
MAX_INT_DIGITS = 100_000
#: int(str) is fine below this length; above it gmpy2 converts subquadratically and ignores
#: sys.get_int_max_str_digits().
_SHORT_INT_TEXT = 4000

#: Byte classes for spotting integer literals orjson would turn into floats:
#: d = digit, x = inside a float ('.', 'e', 'E', '+'), '-' = sign, s = anything else.
_CLASSES = bytes(
    ord("d") if 48 <= i <= 57 else ord("x") if chr(i) in ".eE+" else ord("-") if chr(i) == "-" else ord("s")
    for i in range(256)
)
#: orjson decodes integers in [-2^63, 2^64) exactly; anything outside has >= 20 digits, or >= 19 if negative.
_WIDE_POSITIVE = b"s" + b"d" * 20
_WIDE_NEGATIVE = b"s-" + b"d" * 19


class Oversized:
    """Stands in for an integer literal too long to convert, so its position can be reported."""

    __slots__ = ("digits",)

    def __init__(self, digits: int) -> None:
        self.digits = digits


def parse_int_text(text: str | bytes) -> int | Oversized:
    """Exact int of a decimal literal, refusing ones whose conversion would be too slow."""
    if len(text) <= _SHORT_INT_TEXT:  # the common case first: json calls this for every integer
        return int(text)
    digits = len(text) - (text[:1] in ("-", "+", b"-", b"+"))
    if digits > MAX_INT_DIGITS:
        return Oversized(digits)
    import gmpy2  # only for literals past _SHORT_INT_TEXT digits: the web never loads it otherwise

    return int(gmpy2.mpz(text if isinstance(text, str) else text.decode(), 10))


def has_wide_int_literal(text: bytes) -> bool:
    """Whether JSON text may hold an integer orjson would silently turn into a float."""
    classes = text.translate(_CLASSES)
    return (_WIDE_POSITIVE in classes or _WIDE_NEGATIVE in classes
            or classes.startswith(_WIDE_POSITIVE[1:]) or classes.startswith(_WIDE_NEGATIVE[1:]))


def reject_constant(name: str) -> Any:
    """The stdlib json module accepts NaN and Infinity; JSON does not."""
    raise ValueError(f"{name} is not a JSON number")


def loads_exact(text: bytes) -> Any:
    """Decode JSON keeping every integer exact: orjson when it can, else the stdlib json module."""
    if not has_wide_int_literal(text):
        return orjson.loads(text)
    limit = sys.get_int_max_str_digits()
    if 0 < limit <= MAX_INT_DIGITS:
        # int() itself refuses literals over the limit, so the common case needs no Python hook.
        try:
            return json.loads(text, parse_constant=reject_constant)
        except ValueError:
            pass
    return json.loads(text, parse_int=parse_int_text, parse_constant=reject_constant)
