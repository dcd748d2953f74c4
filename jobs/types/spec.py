"""What every job type declares, so the service, the API, the pages, the OpenAPI document and the
worker treat them all alike: JobSpec, the request Submission it builds, and the server's Limits."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import orjson
from pydantic import BaseModel, ValidationError

from jobs.errors import InvalidParams
from jobs.store.keys import DEFAULT_QUEUE as DEFAULT_QUEUE  # re-exported: types route by queue name
from jobs.store.keys import FAST_QUEUE as FAST_QUEUE
from jobs.types.form import FormField, body_from_form
from jobs.types.numbers import has_wide_int_literal, loads_exact

#: The largest integer params and results carry exactly (JSON numbers as orjson reads and writes them).
MAX_UINT64 = (1 << 64) - 1


@dataclass(frozen=True)
class Limits:
    """Request limits from the settings table, enforced before anything is queued."""

    max_fib_n: int = 10_000_000
    max_primes_end: int = 1_000_000_000_000
    max_primes_list_width: int = 1_000_000_000
    #: The largest end - start in count mode (MAX_PRIMES_COUNT_WIDTH), so no request asks for centuries.
    max_primes_count_width: int = 1_000_000_000_000
    max_sort_length: int = 10_000_000
    max_body_bytes: int = 268_435_456

    def __post_init__(self) -> None:
        """Refuse settings no request could meet or that params could not carry exactly (as JSON integers)."""
        for attr in ("max_fib_n", "max_primes_end", "max_primes_list_width", "max_primes_count_width",
                     "max_sort_length", "max_body_bytes"):
            value = getattr(self, attr)
            if not isinstance(value, int) or not 0 <= value <= MAX_UINT64:
                raise ValueError(f"setting {attr.upper()} must be a whole number from 0 to 2^64 - 1 "
                                 f"({MAX_UINT64}), got {value!r}")


@dataclass
class Submission:
    """A validated request: what the job shows, what the worker reads, and its identity."""

    type: str
    params: dict[str, Any]
    key_material: bytes
    queue: str = DEFAULT_QUEUE
    #: The blob the worker reads, in the job type's own format (sort: raw little-endian int64
    #: values behind a magic prefix, else JSON text; csv: the file). The key comes from key_material.
    input: bytes | None = None
    #: Alternative to `input` for big uploads: yields the blob in pieces (e.g. from a spooled
    #: temp file), so the web process never holds it whole. Called once, after the dedupe check.
    input_chunks: Callable[[], Iterator[bytes]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: The owner whose own request-cache entry this request uses ("" = the entry everyone shares).
    scope: str = ""

    def iter_input(self) -> Iterator[bytes]:
        """The input blob in pieces, whichever way it was given."""
        if self.input_chunks is not None:
            yield from self.input_chunks()
        elif self.input is not None:
            yield self.input

    @property
    def shared_key(self) -> str:
        """Canonical identity of the request: identical requests share it."""
        return f"{self.type}:{hashlib.sha256(self.key_material).hexdigest()}"

    @property
    def cache_key(self) -> str:
        """The request-cache key: the shared one, or the owner's own when scoped (jobs.sharing)."""
        key = self.shared_key
        return f"{self.type}:@{self.scope}:{key.partition(':')[2]}" if self.scope else key


def pydantic_errors(exc: ValidationError) -> InvalidParams:
    """Convert pydantic's errors to the contract's [{loc, msg}] list."""
    return InvalidParams([{"loc": ["body", *e["loc"]], "msg": _message(e)} for e in exc.errors()])


def _message(error: Any) -> str:
    """pydantic's message, except for a float where an integer belongs: the contract refuses 7767.0 (JSON
    Schema would call it an integer), so the message says why rather than "should be a valid integer"."""
    value = error.get("input")
    if error.get("type") == "int_type" and type(value) is float and value.is_integer():
        hint = f" (write {int(value)})" if abs(value) < 2.0**64 else ""
        return f"must be a JSON integer: {value!r} is a float{hint}"
    return error["msg"]


def decode_out_of_range(raw: bytes, exc: ValueError) -> Any:
    """Decode a body orjson refused only for a number beyond a double (1e400, a 400-digit integer).

    Such a body is well-formed JSON (RFC 8259 allows any number literal), so it must reach
    validation and get a 422 naming the field, not a 400; anything else orjson refused re-raises.
    The numbers come back as float('inf') or an exact int (Oversized past MAX_INT_DIGITS).
    """
    if "infinity" not in str(exc):  # orjson: "number is infinity when parsed as double"
        raise exc
    from jobs.types.numbers import parse_int_text, reject_constant

    try:
        return json.loads(raw, parse_int=parse_int_text, parse_constant=reject_constant)
    except RecursionError:
        raise ValueError("the body is nested too deeply") from None


def decode_json(raw: bytes) -> Any:
    """A JSON body with every integer exact: orjson, except where it would turn an integer of 2^64
    or more into a float (then the stdlib parser), so a limit check compares exact integers and
    {"end": 18446744073709551616} is "at most MAX_PRIMES_END", not "not an integer"; ValueError
    when malformed."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return decode_out_of_range(raw, exc)
    if _has_float(body) and has_wide_int_literal(raw):  # rare: a float in a body of integers, or 2^64+
        return loads_exact(raw)
    return body


def _has_float(value: Any) -> bool:
    """Whether a decoded body holds a float anywhere (then some integer literal may have become one);
    a loop, not recursion, since orjson accepts nesting deeper than Python's recursion limit."""
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is float:
            return True
        if kind is dict:
            stack.extend(item.values())
        elif kind is list:
            stack.extend(item)
    return False


def canonical_json(obj: Any) -> bytes:
    """Stable encoding of params so equal requests hash equally."""
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)


class JobSpec:
    """Everything Crunch knows about one job type, in one place (see the README's "Adding a job type").

    The API (rest/api.py), the pages (rest/web.py and the home template), the OpenAPI document
    (rest/openapi.py), the runner (jobs/worker/runner.py) and the result store read these attributes
    and methods; none of them names a type. A new type is a subclass registered in
    jobs/types/registry.py (or, in a test, with registry.registered()).
    """

    # -- identity, routing, running ---------------------------------------------------------------
    #: The name in URLs (POST /api/v1/<name>), records and queues' descriptions.
    name: ClassVar[str]
    params_model: ClassVar[type[BaseModel]]
    #: Dotted path "module:function" of the kernel, imported only by workers.
    kernel: ClassVar[str]
    #: Seconds a single run may take before the worker gives up on it (JOB_TIMEOUTS overrides it).
    timeout: ClassVar[int] = 3600
    #: Whether the kernel checkpoints so the job can be paused and resumed.
    pausable: ClassVar[bool] = True
    #: What the kernel uses from its context beyond the KernelContext protocol: the runner provides
    #: exactly these (jobs.context.CONTEXT_EXTRAS), and the others are None, so a kernel reads
    #: `ctx.segments` rather than probing with getattr.
    needs: ClassVar[frozenset[str]] = frozenset()

    # -- requests -----------------------------------------------------------------------------------
    #: Whether the JSON body is accepted (CSV is multipart only), and multipart/form-data.
    accepts_json: ClassVar[bool] = True
    accepts_form: ClassVar[bool] = False
    #: Whether the request carries the client's own data (an uploaded file, a list of numbers). Such
    #: results are never shared between token owners: `cached: true` for another owner's identical
    #: upload would tell that owner the data had been sent before (see jobs.sharing).
    private_input: ClassVar[bool] = False

    # -- pages ----------------------------------------------------------------------------------------
    #: The type's name for people, and what its card on the home page says and its button does.
    label: ClassVar[str] = ""
    description: ClassVar[str] = ""
    button: ClassVar[str] = "Start"
    #: The home page's form, in order (jobs.types.form.FormField).
    form: ClassVar[tuple[FormField, ...]] = ()
    #: Whether GET /<name>?field=value links submit too (shareable links; the Fibonacci server's way).
    links: ClassVar[bool] = False
    #: Formats the job page offers for download (format= of /result).
    downloads: ClassVar[tuple[str, ...]] = ("json", "csv", "txt")
    #: The header of an array result's CSV download, and what a count result counts (singular, plural).
    result_column: ClassVar[str] = "value"
    count_noun: ClassVar[tuple[str, str]] = ("", "")
    #: What progress counts (its kernel's ctx.progress calls), said next to "done of total".
    progress_unit: ClassVar[str] = "steps"

    # -- the OpenAPI document -------------------------------------------------------------------------
    #: One line for the operation's summary.
    title: ClassVar[str] = ""
    #: Limits written into the body schema: property -> JSON Schema keyword -> Limits attribute.
    limit_keywords: ClassVar[dict[str, dict[str, str]]] = {}
    #: Request examples by name, each {"summary": ..., "value": body}; the first one is /docs' default.
    examples: ClassVar[dict[str, dict[str, Any]]] = {}

    # -- parsing ----------------------------------------------------------------------------------------

    def decode_body(self, raw: bytes) -> Any:
        """Decode a JSON body; ValueError when malformed (types with huge ints override this)."""
        return decode_json(raw)

    def parse_json(self, body: Any, limits: Limits, raw: bytes | None = None) -> Submission:
        """Validate a decoded JSON body; raises InvalidParams. `raw`, the body's bytes, lets a type
        recover what decoding lost (sort: integers beyond 64 bits); others ignore it."""
        try:
            model = self.params_model.model_validate(body, context={"limits": limits})
        except ValidationError as exc:
            raise pydantic_errors(exc) from None
        params = model.model_dump(mode="json")
        return Submission(self.name, params, canonical_json(params), self.queue_for(params))

    def parse_form(self, form: Any, files: Any, limits: Limits) -> Submission:
        """Validate a multipart form; only types with accepts_form override this."""
        raise InvalidParams([{"loc": ["body"], "msg": "multipart is not accepted for this job type"}])

    def parse_page(self, values: Any, files: Any, limits: Limits) -> Submission:
        """The home page's form or a GET link: its text made the JSON body it stands for, then parse_json,
        as a JSON request would be. Types whose API takes multipart pass the form to parse_form."""
        if self.accepts_form and not self.accepts_json:
            return self.parse_form(values, files, limits)
        return self.parse_json(body_from_form(self.form, values), limits)

    def queue_for(self, params: dict[str, Any]) -> str:
        """Route cheap jobs to the no-fork fast queue and the rest to forking workers."""
        return DEFAULT_QUEUE

    def expected_seconds(self, params: dict[str, Any]) -> float:
        """Rough run time, for Retry-After."""
        return 1.0

    # -- describing ---------------------------------------------------------------------------------------

    def summary(self, params: dict[str, Any]) -> str:
        """One line that says what a job computes, for pages and the CLI (the resource's `summary`)."""
        return f"{self.label or self.name} job"

    def rerun(self, params: dict[str, Any]) -> tuple[dict[str, str], str | None]:
        """The home page form's values that submit this request again ("Run again"), and a note on what
        the form still needs (types that keep a digest of their input, not the input, ask for it)."""
        values: dict[str, str] = {}
        for f in self.form:
            value = params.get(f.name)
            if f.kind == "file" or value is None:
                continue
            values[f.name] = ("true" if value else "") if f.kind == "checkbox" else str(value)
        return values, None

    def json_schema(self, limits: Limits) -> dict[str, Any]:
        """The JSON body's schema: the validating model's, with this server's limits written in.

        $defs are left in place; the OpenAPI builder moves them to components.
        """
        schema = self.params_model.model_json_schema(ref_template="#/components/schemas/{model}")
        for prop, keywords in self.limit_keywords.items():
            target = schema.get("properties", {}).get(prop)
            if target is not None:
                for keyword, attr in keywords.items():
                    target[keyword] = getattr(limits, attr)
        return schema

    def form_schema(self, limits: Limits) -> dict[str, Any] | None:
        """The multipart body's schema (types with accepts_form), else None."""
        return None

    @property
    def multipart_page(self) -> bool:
        """Whether the page form uploads files (enctype multipart/form-data)."""
        return any(f.kind == "file" for f in self.form)
