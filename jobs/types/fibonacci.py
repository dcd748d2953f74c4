"""The Fibonacci job type: F(n) exact, as a decimal string."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationInfo, field_validator

from jobs.types.form import FormField
from jobs.types.spec import DEFAULT_QUEUE, FAST_QUEUE, JobSpec, Limits

#: Below this n a run takes well under a millisecond, so it is not worth a fork.
FAST_N = 200_000


class FibonacciParams(BaseModel):
    """Body of POST /api/v1/fibonacci."""

    model_config = ConfigDict(extra="forbid")

    n: StrictInt = Field(ge=0, description="Index of the Fibonacci number, F(0)=0, F(1)=1.")

    @field_validator("n")
    @classmethod
    def _within_limit(cls, n: int, info: ValidationInfo) -> int:
        limits: Limits = (info.context or {}).get("limits", Limits())
        if n > limits.max_fib_n:
            raise ValueError(f"n must be at most {limits.max_fib_n} (MAX_FIB_N)")
        return n


class FibonacciJob(JobSpec):
    """F(n) with gmpy2; not pausable because even F(10^7) runs in a fraction of a second."""

    name: ClassVar[str] = "fibonacci"
    params_model = FibonacciParams
    kernel = "jobs.kernels.fibonacci:run"
    timeout = 600
    pausable = False

    label = "Fibonacci"
    description = "The exact value of F(n), with F(0) = 0 and F(1) = 1."
    button = "Compute F(n)"
    form = (FormField("n", "n", required=True, maximum="max_fib_n", placeholder="e.g. 1000",
                      hint="A whole number from 0 to {limits.max_fib_n:,}."),)
    links = True

    title = "F(n), exact, as a decimal string"
    limit_keywords: ClassVar[dict[str, dict[str, str]]] = {"n": {"maximum": "max_fib_n"}}
    examples: ClassVar[dict[str, dict[str, Any]]] = {
        "f100": {"summary": "F(100)", "value": {"n": 100}},
        "f10000": {"summary": "F(10,000), a number of 2,090 digits", "value": {"n": 10_000}},
    }

    def summary(self, params: dict[str, Any]) -> str:
        return f"F({int(params['n']):,})"

    def queue_for(self, params: dict[str, Any]) -> str:
        return FAST_QUEUE if params["n"] <= FAST_N else DEFAULT_QUEUE

    def expected_seconds(self, params: dict[str, Any]) -> float:
        return max(1.0, params["n"] / 5_000_000)
