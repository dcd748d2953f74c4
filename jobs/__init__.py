"""Crunch job types, the job service and the worker-side runner."""
