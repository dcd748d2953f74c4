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
#: Single-core CPU seconds per number of a count, by log10(end), interpolated between the points: the cost
#: grows with the sieving primes (up to sqrt(end)). Measured 2026-12-03 on this machine with
#: primes.count_primes over 10^9 numbers below each end, less one segment's run (load average 4-7):
#: 7e-11 below 10^9 (the [0, 10^9] count, 0.07 s), 1.6e-10 at 10^12, 3.0e-10 at 10^15, 1.6e-9 at 2^64.
COUNT_COST = ((9.0, 7.0e-11), (11.0, 1.2e-10), (12.0, 1.64e-10), (13.0, 2.07e-10), (15.0, 3.0e-10),
              (17.0, 6.9e-10), (18.0, 9.6e-10), (19.0, 1.34e-9), (19.27, 1.57e-9))
#: A run's fixed cost per sieving prime (every prime up to sqrt(end) gets its first multiple and its bucket
#: before the first segment): a one-segment count took 0.28 s below 10^18, 0.84 s below 10^19 and 1.14 s
#: below 2^64 (2.03e8 primes below 2^32), all about 5.6 ns per prime. Each part of a split job pays it again.
SETUP_COST = 5.6e-9
#: Rough single-core rate of listing (primes per second: building and storing the result).
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
    def _setup_seconds(end: int) -> float:
        """One run's setup: SETUP_COST per sieving prime, pi(sqrt(end)) ~ sqrt(end) / ln(sqrt(end))."""
        r = math.isqrt(end)
        return SETUP_COST * r / math.log(r) if r > 2 else 0.0

    @staticmethod
    def _count_cost(end: int) -> float:
        """CPU seconds per number of a count below `end` (COUNT_COST, interpolated in log10(end))."""
        x = math.log10(max(end, 10))
        for (x0, c0), (x1, c1) in itertools.pairwise(COUNT_COST):
            if x <= x1:
                return c0 if x <= x0 else c0 + (c1 - c0) * (x - x0) / (x1 - x0)
        return COUNT_COST[-1][1]

    @classmethod
    def _work_seconds(cls, params: dict[str, Any]) -> float:
        """One worker's estimated seconds for the whole range in one run: its setup plus its numbers."""
        start, end = int(params["start"]), int(params["end"])
        width = end - start + 1
        seconds = cls._setup_seconds(end) + width * cls._count_cost(end)
        if params.get("output", "list") == "list":
            seconds += width / max(math.log(max(end, 3)), 1.0) / LIST_RATE  # ~width/ln(end) primes
        return seconds

    @classmethod
    def divisible_seconds(cls, params: dict[str, Any]) -> float:
        """The part of one worker's estimated seconds that parts divide: the numbers, without the setup that
        every part pays again."""
        return cls._work_seconds(params) - cls._setup_seconds(int(params["end"]))

    def part_limit(self, params: dict[str, Any], max_parts: int) -> int:
        """The most parts the job may split into: every part pays the setup again (SETUP_COST), so no more
        parts than the work they divide pays for. Below 10^15 that never binds; near 2^64 a 10^9-wide count
        (1.1 s of setup, 1.6 s of numbers) splits in 2, not 4."""
        setup = self._setup_seconds(int(params["end"]))
        return max_parts if setup <= 0 else max(2, min(max_parts, int(self.divisible_seconds(params) // setup)))

    def split(self, params: dict[str, Any], min_seconds: float, max_parts: int) -> list[tuple[int, int]]:
        """The sub-ranges a wide job runs as (jobs.store.fanout), in order, covering [start, end] exactly;
        [] when the job runs whole (its divisible work, the setup aside, under min_seconds of one worker).
        Inner bounds lie on the sieve's segment grid; parts of about PART_SECONDS, at least MIN_PARTS, at most
        part_limit() (max_parts, or fewer where each part's setup is dear)."""
        start, end = int(params["start"]), int(params["end"])
        seconds = self.divisible_seconds(params)
        limit = self.part_limit(params, max_parts)
        if min_seconds <= 0 or seconds <= min_seconds or max_parts < 2:
            return []
        n = min(limit, max(MIN_PARTS, math.ceil(seconds / PART_SECONDS)))
        width = end - start + 1
        step = max(1, -(-width // n) // SEGMENT_SPAN) * SEGMENT_SPAN  # whole segments per part, rounded down
        cuts = [start]
        b = (start // SEGMENT_SPAN + 1) * SEGMENT_SPAN + step - SEGMENT_SPAN  # first cut on the grid
        while b <= end and len(cuts) < limit:
            cuts.append(b)
            b += step
        if len(cuts) > 2 and end + 1 - cuts[-1] < step // 2:
            # A remainder under half a part rides with the part before it: a tiny last part costs a whole
            # round of the workers (its dispatch and fork, and the gap before a worker's next part: 0.1-0.6 s
            # measured, README "Wide jobs") for milliseconds of work; a 10^10-wide count runs as 4, not 5.
            cuts.pop()
        if len(cuts) < 2:
            return []
        bounds = [*cuts, end + 1]
        return [(lo, hi - 1) for lo, hi in itertools.pairwise(bounds)]
