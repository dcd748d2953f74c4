"""The primes job type: list or count the primes in an inclusive range [start, end]."""

from __future__ import annotations

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

from jobs.types.spec import DEFAULT_QUEUE, FAST_QUEUE, JobSpec, Limits

#: Ranges at most this wide sieve in a few milliseconds, so they are not worth a fork.
FAST_WIDTH = 2_000_000
#: Rough single-core throughput of the sieve (numbers per second) and of listing (primes per second).
SIEVE_RATE = 3e9
LIST_RATE = 2e7


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

    def queue_for(self, params: dict[str, Any]) -> str:
        return FAST_QUEUE if params["end"] - params["start"] <= FAST_WIDTH else DEFAULT_QUEUE

    def expected_seconds(self, params: dict[str, Any]) -> float:
        start, end = params["start"], params["end"]
        width = end - start + 1
        seconds = width / SIEVE_RATE
        if params.get("output", "list") == "list":
            seconds += width / max(math.log(max(end, 3)), 1.0) / LIST_RATE  # ~width/ln(end) primes
        return max(1.0, seconds)
