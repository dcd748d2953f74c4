"""The narrow interface kernels see, so they stay free of Flask and Redis."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol


class Stop(Exception):
    """Raised at a checkpoint so a kernel unwinds when its job is canceled or paused."""


class ResultWriter(Protocol):
    """Where a kernel puts its result, so big results never sit in one Redis key."""

    def write_value(self, value: Any) -> None:
        """Store a JSON object result (count, Fibonacci) as the whole result."""

    def append(self, items: Sequence[Any]) -> None:
        """Append numbers (numpy int64/uint64/float64 array or list of int/float) to an array result."""


class KernelContext(Protocol):
    """Progress, checkpoints, input and output of one job run."""

    #: JSON-able state saved by the last checkpoint before a pause or crash, else None.
    resume_state: dict[str, Any] | None
    output: ResultWriter

    def input(self) -> bytes:
        """Raw input blob stored at submit time (sort numbers, CSV file); b"" if none."""

    def progress(self, done: int, total: int) -> None:
        """Report progress; cheap to call often, the context throttles writes."""

    def checkpoint(self, state: dict[str, Any] | None = None) -> None:
        """Mark a safe point: saves `state` and raises Stop if the job must stop."""


class MemoryWriter:
    """In-memory ResultWriter for tests and benchmarks of kernels alone."""

    def __init__(self) -> None:
        self.value: Any = None
        self.items: list[Any] = []

    def write_value(self, value: Any) -> None:
        self.value = value

    def append(self, items: Sequence[Any]) -> None:
        self.items.extend(items.tolist() if hasattr(items, "tolist") else items)


class LocalContext:
    """KernelContext that runs a kernel in-process, optionally stopping after N checkpoints."""

    def __init__(self, data: bytes = b"", resume_state: dict[str, Any] | None = None,
                 stop_after: int | None = None) -> None:
        self.resume_state = resume_state
        self.output = MemoryWriter()
        self.data = data
        self.stop_after = stop_after
        self.checkpoints = 0
        self.saved_state: dict[str, Any] | None = None
        self.progress_calls: list[tuple[int, int]] = []

    def input(self) -> bytes:
        return self.data

    def progress(self, done: int, total: int) -> None:
        self.progress_calls.append((done, total))

    def checkpoint(self, state: dict[str, Any] | None = None) -> None:
        self.checkpoints += 1
        if self.stop_after is not None and self.checkpoints >= self.stop_after:
            self.saved_state = state
            raise Stop()
