"""The `crunch` command line client: `client.http` speaks the API, `client.cli` talks to people."""

from client.http import ApiError, Backoff, CrunchClient, GaveUp, Job, Unavailable

__all__ = ["ApiError", "Backoff", "CrunchClient", "GaveUp", "Job", "Unavailable"]
