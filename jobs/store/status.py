"""Job statuses as the API shows them."""

from enum import Enum


class JobStatus(str, Enum):
    """Lifecycle of a Crunch job (see the state diagram in README.md)."""

    QUEUED = "queued"
    STARTED = "started"
    PAUSED = "paused"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        """Terminal jobs never change again, except by retry."""
        return self in TERMINAL

    @property
    def live(self) -> bool:
        """Live jobs may still produce a result, so identical requests join them."""
        return self in (JobStatus.QUEUED, JobStatus.STARTED, JobStatus.PAUSED)


TERMINAL = frozenset({JobStatus.FINISHED, JobStatus.FAILED, JobStatus.CANCELED})
#: States where a long-poll answers: terminal, or paused (nothing will happen until resumed).
SETTLED = TERMINAL | {JobStatus.PAUSED}
