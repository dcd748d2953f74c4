"""The web's settings are Crunch's one settings object (jobs.settings), re-exported for rest's callers."""

from jobs.settings import Settings

__all__ = ["Settings"]
