"""The sort job type: numbers from a JSON body or an uploaded file, sorted exactly.

Both forms reduce to one canonical encoding, a JSON array text of the numbers as orjson writes
them (integers as digits, floats always with '.' or an exponent, so 2 and 2.0 differ), and
the job's identity is its hash, so the same numbers sent either way share a cache key. The
stored input is that text, or, when every number is an int64, the raw values after
INT64_INPUT_MAGIC (less to store and nothing for the worker to parse).

The job resource's params are {"numbers": [...], "descending": bool, "count": N}, where
"numbers" echoes the input only when N <= ECHO_MAX and every integer fits in 64 bits
(records are stored with orjson, which cannot hold wider integers exactly).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import warnings
from typing import TYPE_CHECKING, Any, ClassVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, ValidationError

from jobs.errors import InvalidParams, invalid
from jobs.types.form import FormField, flag
from jobs.types.numbers import (
    INT64_INPUT_MAGIC,
    MAX_INT_DIGITS,
    Oversized,
    has_wide_int_literal,
    loads_exact,
    parse_int_text,
)
from jobs.types.spec import DEFAULT_QUEUE, FAST_QUEUE, JobSpec, Limits, Submission, decode_out_of_range, pydantic_errors

if TYPE_CHECKING:
    import numpy as np

#: Up to this many numbers the params echo them, so small jobs show their input.
ECHO_MAX = 1000
#: Up to this many numbers a sort takes milliseconds, so it is not worth a fork.
FAST_COUNT = 100_000
#: Item errors reported per request, so 10^7 bad items do not make a 10^7-entry answer.
MAX_ERRORS = 20

_NUMBER_TYPES = frozenset((int, float))
_TRUE = frozenset(("true", "1", "on"))
_FALSE = frozenset(("false", "0", "off"))
_UTF8_BOM = b"\xef\xbb\xbf"
_FILE_INT = re.compile(rb"[+-]?[0-9]+")
_FILE_FLOAT = re.compile(rb"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_FILE_NONFINITE = re.compile(rb"[+-]?(?:nan|inf|infinity)", re.IGNORECASE)
#: orjson turns integers beyond 64 bits into floats of 2^63 or more, which it writes with an
#: exponent of 18 or more; spotting one in the encoded numbers is far cheaper than scanning the body.
_BIG_FLOAT = re.compile(rb"e\+(?:1[89]|[2-9]|1[0-5]|1[67][0-9])")
#: Two-byte needles: re finds these faster than bytes.find when commas are frequent.
_COMMA_PAIR = re.compile(rb",,")
_MINUS_COMMA = re.compile(rb"-,")
_PLUS_COMMA = re.compile(rb"\+,")
#: What a JSON numbers array of plain integers may hold, after ", " is made ",".
_INT_ARRAY_BYTES = b"0123456789-,"
_JSON_SPACE = frozenset(b" \t\n\r")
_NUMBERS_KEY = b'"numbers"'
#: Separators in an upload, commas and ASCII whitespace, all made commas.
_SEPARATORS_TO_COMMA = bytes(44 if chr(i) in " \t\n\r\x0b\x0c," else i for i in range(256))


class Int64Body(dict):  # type: ignore[type-arg]
    """A decoded body whose numbers are all int64, read straight from the raw bytes (see int64_body),
    so 10^6 numbers never become a Python list; `encoded` is their canonical array text."""

    __slots__ = ("digest", "raw")

    def __init__(self, numbers: np.ndarray, descending: bool, digest: str, raw: bytes) -> None:
        super().__init__(numbers=numbers, descending=descending)
        self.digest = digest
        self.raw = raw


def _array_span(raw: bytes) -> tuple[int, int] | None:
    """[start, end) of the value of the first "numbers" key when it is an array; else None."""
    key = raw.find(_NUMBERS_KEY)
    if key < 0:
        return None
    i, n = key + len(_NUMBERS_KEY), len(raw)
    while i < n and raw[i] in _JSON_SPACE:
        i += 1
    if i >= n or raw[i] != 58:  # ':'
        return None
    i += 1
    while i < n and raw[i] in _JSON_SPACE:
        i += 1
    if i >= n or raw[i] != 91:  # '['
        return None
    end = raw.find(b"]", i)
    return None if end < 0 else (i, end + 1)


def int64_body(raw: bytes) -> Int64Body | None:
    """The body when it is exactly {"numbers": [int64 literals], "descending": bool?}, else None
    (the caller then takes the exact path, which also words every error).

    Only taken when the numbers re-encode byte for byte to their literals (after ", " -> ","):
    then they are valid JSON integers in int64 and the text already is the canonical encoding.
    """
    span = _array_span(raw)
    if span is None:
        return None
    lo, hi = span
    head, tail = raw[:lo], raw[hi:]
    # Escapes could spell another "numbers" key; the array itself is checked to hold digits only.
    if b"\\" in head or b"\\" in tail or _NUMBERS_KEY in tail:
        return None
    try:
        rest = orjson.loads(head + b"[]" + tail)
    except orjson.JSONDecodeError:
        return None
    if (type(rest) is not dict or rest.get("numbers") != [] or not rest.keys() <= {"numbers", "descending"}
            or type(rest.get("descending", False)) is not bool):
        return None
    inner = raw[lo + 1:hi - 1]
    if b" " in inner:
        inner = inner.replace(b", ", b",")
    values = _canonical_int64(inner)
    if values is None:
        return None
    hasher = hashlib.sha256(b"[")  # of the canonical text, without copying 10^6 numbers into it
    hasher.update(inner)
    hasher.update(b"]")
    return Int64Body(values, rest.get("descending", False), hasher.hexdigest(), raw)


class SortParams(BaseModel):
    """Body of POST /api/v1/sort; the items of `numbers` are checked in bulk, not by this model."""

    model_config = ConfigDict(extra="forbid")

    numbers: list[StrictInt | StrictFloat] = Field(
        description="Numbers to sort; integers stay exact at any size, floats stay floats.")
    descending: StrictBool = Field(False, description="Largest first.")


def _json_type(x: Any) -> str:
    """What a wrong item is, in JSON words."""
    if isinstance(x, bool):
        return "a boolean"
    if x is None:
        return "null"
    if isinstance(x, str):
        return "a string"
    if isinstance(x, list):
        return "an array"
    if isinstance(x, dict):
        return "an object"
    return type(x).__name__


def _oversized_msg(digits: int) -> str:
    return (f"integer with {digits} digits is too long: at most {MAX_INT_DIGITS} digits are allowed, "
            "because CPython converts huge integers to and from text in quadratic time")


def _item_errors(numbers: list[Any]) -> list[dict[str, Any]]:
    """Errors for items that are not finite numbers; a Python loop, run only when something is wrong."""
    errors: list[dict[str, Any]] = []
    for i, x in enumerate(numbers):
        t = type(x)
        if (t is float and math.isfinite(x)) or t is int:
            continue
        if t is float:
            msg = "must be a finite number"
        elif t is Oversized:
            msg = _oversized_msg(x.digits)
        else:
            msg = f"must be a number, not {_json_type(x)}"
        errors.append({"loc": ["body", "numbers", i], "msg": msg})
        if len(errors) >= MAX_ERRORS:
            break
    return errors


def _has_non_number(encoded: bytes) -> bool:
    """Whether encoded items hold true/false/null (also NaN and Infinity), strings, arrays or objects."""
    return (b"t" in encoded or b"f" in encoded or b"n" in encoded or b'"' in encoded
            or b"{" in encoded or encoded.find(b"[", 1) >= 0)


def _wide_int(x: Any) -> Any:
    """An int orjson cannot encode as pre-encoded JSON digits; anything else as it is."""
    if type(x) is not int or -(1 << 63) <= x < (1 << 64):
        return x
    # str() is quadratic in the digits (and capped by sys.get_int_max_str_digits()); gmpy2 is not.
    if x.bit_length() < 4000:
        return orjson.Fragment(str(x))
    import gmpy2

    return orjson.Fragment(gmpy2.mpz(x).digits(10))


def encode_numbers(numbers: Any) -> tuple[bytes, bool]:
    """Canonical JSON array text of the numbers, and whether every integer fit in 64 bits."""
    import numpy as np  # loaded by the first sort request, never by importing the web

    if isinstance(numbers, np.ndarray):
        return orjson.dumps(numbers, option=orjson.OPT_SERIALIZE_NUMPY), True
    try:
        return orjson.dumps(numbers), True
    except TypeError:  # an integer beyond 64 bits (or a non-number, which orjson still refuses)
        pass
    parts = []
    for i in range(0, len(numbers), 65_536):
        chunk = numbers[i:i + 65_536]
        try:
            parts.append(orjson.dumps(chunk)[1:-1])
        except TypeError:
            parts.append(orjson.dumps(list(map(_wide_int, chunk)))[1:-1])
    return b"[" + b",".join(parts) + b"]", False


def join_tokens(data: bytes) -> tuple[bytes, int]:
    """The upload's tokens joined by single commas, and how many there are."""
    text = data.translate(_SEPARATORS_TO_COMMA)
    while _COMMA_PAIR.search(text):  # each pass halves runs of separators, so few passes are needed
        text = text.replace(b",,", b",")
    text = text.strip(b",")
    return text, (text.count(b",") + 1 if text else 0)


def _int64_tokens(text: bytes, count: int) -> np.ndarray | None:
    """All tokens as int64 when each is [+-]?digits within int64 range; else None."""
    import numpy as np  # loaded by the first sort request, never by importing the web

    if b"." in text or b"e" in text or b"E" in text or text.translate(None, b"0123456789+-,"):
        return None
    if (text.endswith((b"-", b"+")) or (b"-" in text and _MINUS_COMMA.search(text))
            or (b"+" in text and _PLUS_COMMA.search(text))):
        return None  # a lone sign, which numpy would read as 0
    try:
        values = np.fromstring(text, dtype=np.int64, sep=",")
    except ValueError:  # a sign inside a token
        return None
    # fromstring saturates on overflow, so the extremes may stand for wider integers.
    if len(values) != count or values.min() <= np.iinfo(np.int64).min or values.max() >= np.iinfo(np.int64).max:
        return None
    return values


def _int64_values(encoded: bytes) -> np.ndarray | None:
    """The numbers as int64 when the canonical text holds only int64 integers (whichever path made it), else None."""
    if len(encoded) < 3 or b"." in encoded or b"e" in encoded:
        return None
    return _canonical_int64(encoded[1:-1])


def _canonical_int64(inner: bytes) -> np.ndarray | None:
    """Comma-separated integer text as int64, only when the values re-encode to exactly this text."""
    import numpy as np  # loaded by the first sort request, never by importing the web

    if not inner or inner.translate(None, _INT_ARRAY_BYTES):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numpy warns when it stops early; the comparison below catches that
        try:
            values = np.fromstring(inner, dtype=np.int64, sep=",")
        except ValueError:
            return None
    encoded = orjson.dumps(values, option=orjson.OPT_SERIALIZE_NUMPY)
    # fromstring saturates and is lenient (+1, 007, -0); any of that, or a stop, changes the text.
    if len(encoded) != len(inner) + 2 or encoded[1:-1] != inner:
        return None
    return values


def _json_tokens(text: bytes, count: int) -> list[Any] | None:
    """All tokens via orjson, or None; the caller still rejects true/false/null/strings, and
    integers beyond 64 bits come back as floats."""
    try:
        numbers = orjson.loads(b"[" + text + b"]")
    except orjson.JSONDecodeError:
        return None
    return numbers if len(numbers) == count else None


def _token_error(pos: int, token: bytes, msg: str) -> InvalidParams:
    shown = token[:40].decode("utf-8", "replace") + ("..." if len(token) > 40 else "")
    return invalid(["body", "file"], f"token {shown!r} at position {pos} {msg}")


def _lenient_tokens(text: bytes) -> list[Any]:
    """Token by token, for files orjson cannot take whole; names the first bad token (positions count from 0)."""
    numbers: list[Any] = []
    for pos, token in enumerate(text.split(b",")):
        if _FILE_INT.fullmatch(token):
            value = parse_int_text(token)
            if isinstance(value, Oversized):
                raise invalid(["body", "file"], f"token at position {pos}: {_oversized_msg(value.digits)}")
        elif _FILE_FLOAT.fullmatch(token):
            value = float(token)
            if not math.isfinite(value):
                raise _token_error(pos, token, "is out of range for a 64-bit float")
        elif _FILE_NONFINITE.fullmatch(token):
            raise _token_error(pos, token, "is not a finite number (NaN and Infinity are not allowed)")
        else:
            raise _token_error(pos, token, "is not a number")
        numbers.append(value)
    return numbers


class SortJob(JobSpec):
    """Exact sort of up to MAX_SORT_LENGTH numbers; not pausable since 10^7 restart from zero in seconds."""

    name: ClassVar[str] = "sort"
    params_model = SortParams
    kernel = "jobs.kernels.sort:run"
    timeout = 600
    pausable = False
    accepts_form = True
    private_input = True

    label = "Sort"
    description = "Sort numbers exactly: integers of any size stay exact, decimals stay decimals."
    button = "Sort"
    form = (
        FormField("numbers", "Numbers", kind="textarea", placeholder="e.g. 3, 1, 2.5, -7",
                  hint="Separated by commas, spaces or new lines; at most {limits.max_sort_length:,}. "
                       "Or upload a file below instead."),
        FormField("file", "Or a file of numbers", kind="file", accept=".txt,.csv,text/plain,text/csv",
                  hint="Plain text, numbers separated by commas, spaces or new lines."),
        FormField("descending", "Largest first (descending)", kind="checkbox"),
    )
    links = True
    result_column = "number"
    progress_unit = "steps (3 per number: read, sort, write)"

    title = "Sort numbers exactly (JSON body or uploaded file)"
    limit_keywords: ClassVar[dict[str, dict[str, str]]] = {"numbers": {"maxItems": "max_sort_length"}}
    examples: ClassVar[dict[str, dict[str, Any]]] = {
        "mixed": {"summary": "Integers and decimals, smallest first",
                  "value": {"numbers": [3, 1, 2.5, -7], "descending": False}},
        "wide": {"summary": "Integers stay exact, 2^64 - 1 too; largest first",
                 "value": {"numbers": [18446744073709551615, -5, 0.5], "descending": True}},
    }
    form_examples: ClassVar[dict[str, dict[str, Any]]] = {
        "file": {"summary": "A file of numbers, largest first", "value": {"file": "3, 1\n2.5 -7\n",
                                                                          "descending": "true"}},
    }

    def summary(self, params: dict[str, Any]) -> str:
        order = "descending" if params.get("descending") else "ascending"
        return f"Sort {int(params.get('count', len(params.get('numbers', [])))):,} numbers, {order}"

    def rerun(self, params: dict[str, Any]) -> tuple[dict[str, str], str | None]:
        """A sort keeps only how many numbers it had: the form comes back with its option, asking for them."""
        return ({"descending": "true" if params.get("descending") else ""},
                f"Enter the {int(params.get('count', 0)):,} numbers again, or choose their file: "
                "a job keeps its result, not its input.")

    def json_schema(self, limits: Limits) -> dict[str, Any]:
        schema = super().json_schema(limits)
        schema["description"] = (f"At most {limits.max_sort_length} numbers (MAX_SORT_LENGTH). Integers may have "
                                 f"at most {MAX_INT_DIGITS} digits. NaN and Infinity are not numbers (422).")
        return schema

    def form_schema(self, limits: Limits) -> dict[str, Any]:
        return {
            "type": "object",
            "required": ["file"],
            "additionalProperties": False,
            "properties": {
                "file": {"type": "string", "format": "binary", "contentMediaType": "text/plain",
                         "description": "UTF-8 text: the numbers, separated by commas, whitespace or newlines "
                                        f"(at most {limits.max_sort_length}; integers stay exact at any size up "
                                        f"to {MAX_INT_DIGITS} digits, floats stay floats)."},
                "descending": {"type": "string", "enum": ["true", "false", "1", "0", "on", "off"],
                               "default": "false", "description": "Largest first (case-insensitive)."},
            },
        }

    def parse_page(self, values: Any, files: Any, limits: Limits) -> Submission:
        """The text area (or a link's numbers=) or an uploaded file, not both; `files` is None for links."""
        upload = files.get("file") if files is not None else None
        has_file = upload is not None and bool(upload.filename)
        text = values.get("numbers") or ""
        if has_file and text.strip():
            raise invalid(["body", "numbers"], "give the numbers either in the text area or as a file, not both")
        errors: list[dict[str, Any]] = []
        descending = flag(values, "descending", errors)
        if not has_file and not text.strip():
            errors.append({"loc": ["body", "numbers"],
                           "msg": "enter some numbers" + (" or choose a file" if files is not None else "")})
        if errors:
            raise InvalidParams(errors)
        if has_file:
            return self.parse_file(upload.read(), descending, limits)
        try:
            return self.parse_file(text.encode(), descending, limits)
        except InvalidParams as exc:
            # parse_file names the upload "file"; here the numbers came from the text field.
            raise InvalidParams([{**e, "loc": ["body", "numbers", *e["loc"][2:]]}
                                 if list(e["loc"][:2]) == ["body", "file"] else e for e in exc.errors]) from None

    def decode_body(self, raw: bytes) -> Any:
        """int64_body when it applies (no Python list of the numbers), else orjson, except when it
        rejects an integer wider than a double ("number is infinity"): then the stdlib json module,
        exactly; raises ValueError for malformed JSON."""
        fast = int64_body(raw)
        if fast is not None:
            return fast
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            if not has_wide_int_literal(raw):
                return decode_out_of_range(raw, exc)  # 1e400: a 422 "must be a finite number", not a 400
        try:
            return loads_exact(raw)
        except RecursionError:  # orjson stops at 1024 levels; the stdlib parser recurses until it fails
            raise ValueError("the body is nested too deeply") from None

    def parse_json(self, body: Any, limits: Limits, raw: bytes | None = None) -> Submission:
        """Validate the decoded body; `raw` (the body bytes) keeps integers beyond 64 bits exact."""
        if isinstance(body, Int64Body):
            values = body["numbers"]
            if len(values) <= limits.max_sort_length:
                return self._submission(values, b"", True, body["descending"], digest=body.digest)
            body = orjson.loads(body.raw)  # the exact path words the error
        numbers = body.get("numbers") if isinstance(body, dict) else None
        is_list = isinstance(numbers, list)
        errors: list[dict[str, Any]] = []
        descending = False
        try:
            # The model checks the shape; items are checked in bulk below.
            model = SortParams.model_validate({**body, "numbers": []} if is_list else body)
            descending = model.descending
        except ValidationError as exc:
            errors.extend(pydantic_errors(exc).errors)
        if not isinstance(body, dict):
            raise invalid(["body"], "must be a JSON object with a numbers array")
        if not is_list:
            raise InvalidParams(errors or [{"loc": ["body", "numbers"], "msg": "must be an array"}])
        if len(numbers) > limits.max_sort_length:
            errors.append({"loc": ["body", "numbers"], "msg": f"at most {limits.max_sort_length} numbers "
                           f"are allowed (MAX_SORT_LENGTH), got {len(numbers)}"})
            raise InvalidParams(errors)
        # Encoding first and looking for letters, quotes or brackets is cheaper than checking 10^7 types.
        try:
            encoded, fits = encode_numbers(numbers)
        except TypeError:  # not a JSON type at all (Python callers)
            encoded, fits = b"", False
            errors.extend(_item_errors(numbers) or [{"loc": ["body", "numbers"], "msg": "must hold only numbers"}])
        if _has_non_number(encoded):
            errors.extend(_item_errors(numbers) or [{"loc": ["body", "numbers"], "msg": "must hold only numbers"}])
        if errors:
            raise InvalidParams(errors)
        # Wider integers already in the body mean an exact decoder read it; else orjson may have
        # made floats of them, which only happens if a float of 2^63 or more is present.
        if (raw is not None and fits and b"e" in encoded and _BIG_FLOAT.search(encoded)
                and has_wide_int_literal(raw)):
            numbers = self._exact_numbers(raw)
            encoded, fits = encode_numbers(numbers)
        return self._submission(numbers, encoded, fits, descending)

    def _exact_numbers(self, raw: bytes) -> list[Any]:
        """The numbers decoded again with every integer exact."""
        try:
            body = loads_exact(raw)
        except (ValueError, json.JSONDecodeError) as exc:
            raise invalid(["body"], f"the body could not be decoded exactly: {exc}") from None
        numbers = body["numbers"]
        if not set(map(type, numbers)) <= _NUMBER_TYPES:
            raise InvalidParams(_item_errors(numbers))
        return numbers

    def parse_form(self, form: Any, files: Any, limits: Limits) -> Submission:
        """Validate a multipart upload: a `file` of numbers separated by commas or whitespace,
        and an optional `descending` of true/false/1/0/on/off."""
        errors: list[dict[str, Any]] = []
        for name in sorted((set(form.keys()) - {"descending"}) | (set(files.keys()) - {"file"})):
            errors.append({"loc": ["body", name], "msg": "unexpected field; send 'file' and optionally 'descending'"})
        descending = False
        flags = form.getlist("descending")
        if len(flags) > 1:
            errors.append({"loc": ["body", "descending"], "msg": "give descending at most once"})
        elif flags:
            flag = flags[0].strip().lower()
            if flag in _TRUE or flag in _FALSE:
                descending = flag in _TRUE
            else:
                errors.append({"loc": ["body", "descending"], "msg": "must be one of true, false, 1, 0, on, off"})
        uploads = files.getlist("file")
        if len(uploads) != 1:
            errors.append({"loc": ["body", "file"],
                           "msg": "field required" if not uploads else "give exactly one file"})
        if errors:
            raise InvalidParams(errors)
        return self.parse_file(uploads[0].read(), descending, limits)

    def parse_file(self, data: bytes, descending: bool, limits: Limits) -> Submission:
        """Numbers from file bytes, canonicalized exactly as parse_json would the same values."""
        if data.startswith(_UTF8_BOM):
            data = data[len(_UTF8_BOM):]
        text, count = join_tokens(data)
        if count > limits.max_sort_length:
            raise invalid(["body", "file"], f"at most {limits.max_sort_length} numbers are allowed "
                          f"(MAX_SORT_LENGTH), the file holds {count}")
        if count == 0:
            raise invalid(["body", "file"], "file contains no numbers")
        values = _int64_tokens(text, count)
        if values is not None:
            return self._submission(values, *encode_numbers(values), descending)
        numbers = _json_tokens(text, count)
        if numbers is not None:
            encoded, fits = encode_numbers(numbers)
            if not _has_non_number(encoded) and not (
                    b"e" in encoded and _BIG_FLOAT.search(encoded) and has_wide_int_literal(text)):
                return self._submission(numbers, encoded, fits, descending)
        numbers = _lenient_tokens(text)
        return self._submission(numbers, *encode_numbers(numbers), descending)

    def _submission(self, numbers: Any, encoded: bytes, fits: bool, descending: bool,
                    digest: str | None = None) -> Submission:
        """The submission; `digest` is the SHA-256 of the canonical text when the caller already has it."""
        count = len(numbers)
        import numpy as np

        values = numbers if isinstance(numbers, np.ndarray) else _int64_values(encoded) if fits else None
        params: dict[str, Any] = {}
        if count <= ECHO_MAX and fits:
            params["numbers"] = numbers.tolist() if isinstance(numbers, np.ndarray) else list(numbers)
        params.update(descending=descending, count=count)
        digest = digest or hashlib.sha256(encoded).hexdigest()
        key = b"sort|" + (b"desc" if descending else b"asc") + b"|" + digest.encode()
        stored = encoded if values is None else INT64_INPUT_MAGIC + values.astype("<i8", copy=False).tobytes()
        return Submission(self.name, params, key, self.queue_for(params), input=stored)

    def queue_for(self, params: dict[str, Any]) -> str:
        return FAST_QUEUE if params["count"] <= FAST_COUNT else DEFAULT_QUEUE

    def expected_seconds(self, params: dict[str, Any]) -> float:
        return max(1.0, params["count"] / 3_000_000)
