"""Crunch benchmarks: `python -m bench` (make bench) prints ours vs a reference measured in the same run.

Sections: in-process kernels, then the real service end to end (valkey, `worker.py`, gunicorn)
next to plain RQ. The rows are also written as JSON to var/bench/latest.json.

Rows that other modules contribute (`bench.bench_primes.run()`, `bench.bench_sort.run()`) are
lists of dicts. The preferred keys are:

    {"case": str, "ours": float, "ref": float, "unit": "s", "ref_name": str, "note": str}

where `unit` is "s" or "ms" (lower is better) or a rate like "items/s" (higher is better).
Common variants ("reference", "ours_s", "ref_s", "baseline", ...) are recognised too, and
anything else is kept under "extra".
"""
