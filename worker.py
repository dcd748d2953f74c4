"""Starts Crunch's RQ workers: `python worker.py` (see jobs.worker.supervisor, which does the work)."""

from __future__ import annotations

import sys

from jobs.worker.supervisor import main

if __name__ == "__main__":
    sys.exit(main())
