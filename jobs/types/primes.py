"""The primes job type: list or count the primes in an inclusive range [start, end]."""

from __future__ import annotations

import itertools
import math
from typing import Any, ClassVar, Literal, NoReturn

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError, ValidationError

from jobs.types.form import FormField
from jobs.types.spec import DEFAULT_QUEUE, FAST_QUEUE, JobSpec, Limits

#: Ranges at most this wide sieve in a few milliseconds, so they are not worth a fork.
FAST_WIDTH = 2_000_000
#: Rough single-core throughput of the sieve (numbers per second) and of listing (primes per second).
SIEVE_RATE = 3e9
LIST_RATE = 2e7
#: The sieve's segment grid (primes.SEGMENT_SPAN, 30 * 2^20 numbers; the web does not import the sieve, and
#: tests/test_fanout.py checks the two agree). Parts start on it, so each part sieves (and stores, and
#: reuses from the segment store) whole grid segments, as an unsplit run of the same range would.
SEGMENT_SPAN = 30 << 20
#: Aim for parts of about this many seconds of one worker: short enough that fair share can hand a worker
#: to another client between parts (a part is a dispatched run), long enough that a part's own overhead
#: (dispatch, start, finish: a few ms) is under 1 %.
PART_SECONDS = 2.0
#: A split job has at least this many parts, so that every worker of a small cluster gets one, and one
#: slow worker (a busy host) holds back only a quarter of the job.
MIN_PARTS = 4


class PrimesParams(BaseModel):
    """Body of POST /api/v1/primes."""

    model_config = ConfigDict(extra="forbid")

    start: StrictInt = Field(ge=0, description="Smallest number of the range (inclusive).")
    end: StrictInt = Field(ge=0, description="Largest number of the range (inclusive), >= start.")
    output: Literal["list", "count"] = Field(
        "list", description='"list" returns the primes, "count" only how many there are.')

    @field_validator("end")
    @classmethod
    def _end_within_limit(cls, end: int, info: ValidationInfo) -> int:
        limits: Limits = (info.context or {}).get("limits", Limits())
        if end > limits.max_primes_end:
            raise ValueError(f"end must be at most {limits.max_primes_end} (MAX_PRIMES_END)")
        return end

    @model_validator(mode="after")
    def _range(self, info: ValidationInfo) -> PrimesParams:
        # Errors are raised with loc ("end",) so the contract's [{loc, msg}] points at the field.
        limits: Limits = (info.context or {}).get("limits", Limits())
        if self.end < self.start:
            _fail_on_end(self, "end must be greater than or equal to start")
        if self.output == "list" and self.end - self.start > limits.max_primes_list_width:
            _fail_on_end(self, f"end - start must be at most {limits.max_primes_list_width} "
                               "for output=list (MAX_PRIMES_LIST_WIDTH); use output=count")
        if self.output == "count" and self.end - self.start > limits.max_primes_count_width:
            _fail_on_end(self, f"end - start must be at most {limits.max_primes_count_width} "
                               "for output=count (MAX_PRIMES_COUNT_WIDTH); split the range into several jobs")
        return self


def _fail_on_end(model: PrimesParams, msg: str) -> NoReturn:
    """Raise a ValidationError located at "end" (a plain ValueError here would have an empty loc)."""
    error = PydanticCustomError("value_error", "Value error, {reason}", {"reason": msg})
    raise ValidationError.from_exception_data(
        type(model).__name__, [InitErrorDetails(type=error, loc=("end",), input=model.end)])


class PrimesJob(JobSpec):
    """Primes by wheel-30 segmented sieve; pausable because the kernel checkpoints every segment."""

    name: ClassVar[str] = "primes"
    params_model = PrimesParams
    kernel = "jobs.kernels.primes:run"
    pausable = True
    needs = frozenset({"segments"})  # sieved segments shared between jobs (jobs.store.segments)

    label = "Primes"
    description = "All the primes p with start ≤ p ≤ end, or just how many there are."
    button = "Find primes"
    form = (
        FormField("start", "Start", required=True, maximum="max_primes_end", placeholder="e.g. 0"),
        FormField("end", "End", required=True, maximum="max_primes_end", placeholder="e.g. 100",
              hint="At most {limits.max_primes_end:,}, and no less than start."),
        FormField("output", "Output", kind="choice", choices=(
            ("list", "List the primes (range up to {limits.max_primes_list_width:,} wide)"),
            ("count", "Count them (range up to {limits.max_primes_count_width:,} wide)"))),
    )
    links = True
    result_column = "prime"
    count_noun = ("prime", "primes")
    progress_unit = "numbers of the range"

    title = "The primes in [start, end] (both inclusive), or how many there are"
    limit_keywords: ClassVar[dict[str, dict[str, str]]] = {
        "start": {"maximum": "max_primes_end"}, "end": {"maximum": "max_primes_end"}}
    examples: ClassVar[dict[str, dict[str, Any]]] = {
        "list": {"summary": "The primes up to 100", "value": {"start": 0, "end": 100, "output": "list"}},
        "count": {"summary": "How many primes lie in [10^8, 10^8 + 10^6]",
                  "value": {"start": 100_000_000, "end": 101_000_000, "output": "count"}},
    }

    def summary(self, params: dict[str, Any]) -> str:
        what = "Count primes" if params.get("output") == "count" else "Primes"
        return f"{what} in [{int(params['start']):,}, {int(params['end']):,}]"

    def json_schema(self, limits: Limits) -> dict[str, Any]:
        """The model's schema, plus the cross-field rules JSON Schema cannot state, in words and as
        `x-crunch-rules` (see rest.openapi's description of that extension)."""
        schema = super().json_schema(limits)
        list_w, count_w = limits.max_primes_list_width, limits.max_primes_count_width
        schema["description"] = (
            f"end must be >= start, and end - start at most {list_w} with output=list (MAX_PRIMES_LIST_WIDTH) "
            f"or {count_w} with output=count (MAX_PRIMES_COUNT_WIDTH). Breaking either is a 422. "
            "Integers are exact up to 2^64 - 1.")
        schema["x-crunch-rules"] = [
            {"kind": "order", "low": "start", "high": "end"},
            {"kind": "width", "low": "start", "high": "end", "maximum": list_w, "when": {"output": "list"},
             "setting": "MAX_PRIMES_LIST_WIDTH"},
            {"kind": "width", "low": "start", "high": "end", "maximum": count_w, "when": {"output": "count"},
             "setting": "MAX_PRIMES_COUNT_WIDTH"},
        ]
        return schema

    def queue_for(self, params: dict[str, Any]) -> str:
        return FAST_QUEUE if params["end"] - params["start"] <= FAST_WIDTH else DEFAULT_QUEUE

    def expected_seconds(self, params: dict[str, Any]) -> float:
        return max(1.0, self._work_seconds(params))

    @staticmethod
    def _work_seconds(params: dict[str, Any]) -> float:
        start, end = params["start"], params["end"]
        width = end - start + 1
        seconds = width / SIEVE_RATE
        if params.get("output", "list") == "list":
            seconds += width / max(math.log(max(end, 3)), 1.0) / LIST_RATE  # ~width/ln(end) primes
        return seconds

    def split(self, params: dict[str, Any], min_seconds: float, max_parts: int) -> list[tuple[int, int]]:
        """The sub-ranges a wide job runs as (jobs.store.fanout), in order, covering [start, end] exactly;
        [] when the job runs whole (under min_seconds of one worker's work). Inner bounds lie on the
        sieve's segment grid; parts of about PART_SECONDS, at least MIN_PARTS, at most max_parts."""
        start, end = int(params["start"]), int(params["end"])
        seconds = self._work_seconds(params)
        if min_seconds <= 0 or seconds <= min_seconds or max_parts < 2:
            return []
        n = max(MIN_PARTS, min(max_parts, math.ceil(seconds / PART_SECONDS)))
        width = end - start + 1
        step = max(1, -(-width // n) // SEGMENT_SPAN) * SEGMENT_SPAN  # whole segments per part, rounded down
        cuts = [start]
        b = (start // SEGMENT_SPAN + 1) * SEGMENT_SPAN + step - SEGMENT_SPAN  # first cut on the grid
        while b <= end and len(cuts) < max_parts:
            cuts.append(b)
            b += step
        if len(cuts) < 2:
            return []
        bounds = [*cuts, end + 1]
        return [(lo, hi - 1) for lo, hi in itertools.pairwise(bounds)]
