"""What every job type declares, so the service can treat them all alike."""

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


@dataclass(frozen=True)
class Limits:
    """Request limits from the settings table, enforced before anything is queued."""

    max_fib_n: int = 10_000_000
    max_primes_end: int = 1_000_000_000_000
    max_primes_list_width: int = 1_000_000_000
    #: The largest end - start in count mode (v1.1 MAX_PRIMES_COUNT_WIDTH).
    max_primes_count_width: int = 1_000_000_000_000
    max_sort_length: int = 10_000_000
    max_body_bytes: int = 268_435_456


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
    return InvalidParams([{"loc": ["body", *e["loc"]], "msg": e["msg"]} for e in exc.errors()])


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


def canonical_json(obj: Any) -> bytes:
    """Stable encoding of params so equal requests hash equally."""
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)


class JobSpec:
    """Base for a job type: params schema, canonical key, routing and kernel path."""

    name: ClassVar[str]
    params_model: ClassVar[type[BaseModel]]
    #: Dotted path "module:function" of the kernel, imported only by workers.
    kernel: ClassVar[str]
    #: Seconds a single run may take before the worker gives up on it.
    timeout: ClassVar[int] = 3600
    #: Whether the kernel checkpoints so the job can be paused and resumed.
    pausable: ClassVar[bool] = True
    #: Whether the JSON body is accepted (CSV is multipart only).
    accepts_json: ClassVar[bool] = True
    accepts_form: ClassVar[bool] = False
    #: Whether the request carries the client's own data (an uploaded file, a list of numbers). Such
    #: results are never shared between token owners: `cached: true` for another owner's identical
    #: upload would tell that owner the data had been sent before (see jobs.sharing).
    private_input: ClassVar[bool] = False

    def decode_body(self, raw: bytes) -> Any:
        """Decode a JSON body; ValueError when malformed (types with huge ints override this)."""
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return decode_out_of_range(raw, exc)

    def parse_json(self, body: Any, limits: Limits) -> Submission:
        """Validate a decoded JSON body; raises InvalidParams."""
        try:
            model = self.params_model.model_validate(body, context={"limits": limits})
        except ValidationError as exc:
            raise pydantic_errors(exc) from None
        params = model.model_dump(mode="json")
        return Submission(self.name, params, canonical_json(params), self.queue_for(params))

    def parse_form(self, form: Any, files: Any, limits: Limits) -> Submission:
        """Validate a multipart form; only types with accepts_form override this."""
        raise InvalidParams([{"loc": ["body"], "msg": "multipart is not accepted for this job type"}])

    def queue_for(self, params: dict[str, Any]) -> str:
        """Route cheap jobs to the no-fork fast queue and the rest to forking workers."""
        return DEFAULT_QUEUE

    def expected_seconds(self, params: dict[str, Any]) -> float:
        """Rough run time, for Retry-After."""
        return 1.0
