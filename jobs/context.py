"""The narrow interface kernels see, so they stay free of Flask and Redis."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol


class Stop(Exception):
    """Raised at a checkpoint so a kernel unwinds when its job is canceled or paused."""


class ResultWriter(Protocol):
    """Where a kernel puts its result, so big results never sit in one Redis key."""

    def write_value(self, value: Any) -> None:
        """Store a JSON object result (count, Fibonacci) as the whole result."""

    def append(self, items: Sequence[Any]) -> None:
        """Append numbers (numpy int64/uint64/float64 array or list of int/float) to an array result."""

    def write_text(self, data: bytes, items: int = 0) -> None:
        """Append raw output bytes (a CSV file) holding `items` records, so a text result streams as is."""

    def set_summary(self, summary: Any) -> None:
        """The small JSON object shown inline as the result of a text result (its file is at /result)."""


class ScratchStore(Protocol):
    """Temporary lists of byte chunks that outlive a pause (external sort runs); dropped when the job ends."""

    def write(self, name: str, chunks: Iterable[bytes]) -> None:
        """Replace list `name` with `chunks`; durable before the next checkpoint."""

    def read(self, name: str, index: int) -> bytes:
        """Chunk `index` of list `name`; KeyError when it is gone."""

    def clear(self) -> None:
        """Forget every list of this job."""


#: What a context may provide beyond the protocol, by the name a spec lists in `needs` (JobSpec.needs):
#: the runner builds exactly the extras a type declares, and sets the others to None.
CONTEXT_EXTRAS: dict[str, str] = {
    "segments": "a store of sieved prime segments shared by every job (jobs.kernels.primes.SegmentStore)",
}


class KernelContext(Protocol):
    """Progress, checkpoints, input and output of one job run."""

    #: JSON-able state saved by the last checkpoint before a pause or crash, else None.
    resume_state: dict[str, Any] | None
    output: ResultWriter
    scratch: ScratchStore
    #: CONTEXT_EXTRAS: set when the type's spec lists it in `needs`, else None.
    segments: Any

    def input(self) -> bytes:
        """Raw input blob stored at submit time (sort numbers, CSV file); b"" if none."""

    def input_chunks(self, offset: int = 0) -> Iterator[bytes]:
        """The stored input from byte `offset` on, piece by piece, so a 200 MB upload never sits whole in memory."""

    def progress(self, done: int, total: int) -> None:
        """Report progress; cheap to call often, the context throttles writes."""

    def stopping(self) -> bool:
        """Whether the next checkpoint will save the state and stop (pause, shutdown), so a kernel can
        make buffered work durable first."""

    def checkpoint(self, state: dict[str, Any] | None = None) -> None:
        """Mark a safe point: saves `state` and raises Stop if the job must stop."""


class MemoryWriter:
    """In-memory ResultWriter for tests and benchmarks of kernels alone."""

    def __init__(self) -> None:
        self.value: Any = None
        self.items: list[Any] = []
        self.text = bytearray()
        self.text_items = 0
        self.summary: Any = None

    def write_value(self, value: Any) -> None:
        self.value = value

    def append(self, items: Sequence[Any]) -> None:
        self.items.extend(items.tolist() if hasattr(items, "tolist") else items)

    def write_text(self, data: bytes, items: int = 0) -> None:
        self.text += data
        self.text_items += items

    def set_summary(self, summary: Any) -> None:
        self.summary = summary


class MemoryScratch:
    """In-process ScratchStore; shared between LocalContexts to model a pause and resume."""

    def __init__(self) -> None:
        self.lists: dict[str, list[bytes]] = {}

    def write(self, name: str, chunks: Iterable[bytes]) -> None:
        self.lists[name] = list(chunks)

    def read(self, name: str, index: int) -> bytes:
        return self.lists[name][index]

    def clear(self) -> None:
        self.lists.clear()


class LocalContext:
    """KernelContext that runs a kernel in-process, optionally stopping after N checkpoints."""

    def __init__(self, data: bytes = b"", resume_state: dict[str, Any] | None = None,
                 stop_after: int | None = None, chunk_bytes: int = 1 << 16,
                 scratch: MemoryScratch | None = None, segments: Any = None) -> None:
        self.resume_state = resume_state
        self.segments = segments
        self.output = MemoryWriter()
        self.scratch = scratch if scratch is not None else MemoryScratch()
        self.data = data
        self.chunk_bytes = chunk_bytes
        self.stop_after = stop_after
        self.checkpoints = 0
        self.saved_state: dict[str, Any] | None = None
        self.progress_calls: list[tuple[int, int]] = []

    def input(self) -> bytes:
        return self.data

    def input_chunks(self, offset: int = 0) -> Iterator[bytes]:
        # Small pieces by default, so tests cross piece boundaries often.
        for i in range(offset, len(self.data), self.chunk_bytes):
            yield self.data[i:i + self.chunk_bytes]

    def progress(self, done: int, total: int) -> None:
        self.progress_calls.append((done, total))

    def stopping(self) -> bool:
        return self.stop_after is not None and self.checkpoints + 1 >= self.stop_after

    def checkpoint(self, state: dict[str, Any] | None = None) -> None:
        self.checkpoints += 1
        if self.stop_after is not None and self.checkpoints >= self.stop_after:
            self.saved_state = state
            raise Stop()
