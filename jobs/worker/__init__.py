"""What runs jobs: the runner rq executes, Crunch's rq worker classes and the supervisor (worker.py)."""
