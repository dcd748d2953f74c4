"""`python -m bench`: every section, one table per section, JSON to var/bench/latest.json."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
import psutil

from bench import batches, e2e, kernels, mixed, wide
from bench.common import Row, RssSampler

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "var" / "bench" / "latest.json"
#: Where a run of only some sections writes, so latest.json always holds a whole run.
PARTIAL_OUT = ROOT / "var" / "bench" / "partial.json"
SECTIONS = ("kernels", *e2e.SECTIONS, "mixed", "batches", "wide")


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def print_rss(sampler: RssSampler) -> dict[str, dict[str, float]]:
    """Peak summed RSS per process tree and phase, in MiB."""
    print()
    print("== Peak RSS per process tree, MiB: the sum of RSS over each tree, sampled every 0.1 s (pages shared "
          "after fork count once per process; work horses living under 0.1 s may be missed)")
    groups = ("web", "workers", "redis", "plain RQ", "Celery")
    print(f"   {'phase':<36}" + "".join(f"{g:>10}" for g in groups))
    out: dict[str, dict[str, float]] = {}
    for phase, peaks in sampler.peaks.items():
        if not peaks or phase == "teardown":
            continue
        mib = {n: v / 2**20 for n, v in peaks.items()}
        plain = [v for n, v in mib.items() if n.startswith("plain_rq")]
        celery = [v for n, v in mib.items() if n.startswith("plain_celery")]
        row = {g: mib[g] for g in ("web", "workers", "redis") if g in mib}
        if plain:
            row["plain RQ"] = sum(plain)
        if celery:
            row["Celery"] = sum(celery)
        out[phase] = {k: round(v, 1) for k, v in row.items()}
        print(f"   {phase:<36}" + "".join(f"{(f'{row[g]:.0f}' if g in row else '-'):>10}" for g in groups))
    print("   web = gunicorn master + 2 workers; workers = worker.py supervisor + 2 rq workers (+ horses); "
          "redis = valkey-server; plain RQ = both plain RQ worker processes (+ horses); Celery = both solo workers")
    return out


def load_note(when: str) -> str:
    one, five, _ = os.getloadavg()
    warn = "  <- other work is running on this machine; expect noisy numbers" if one >= 1.0 else ""
    return f"load average {when}: {one:.2f} (1 min), {five:.2f} (5 min){warn}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", action="append", choices=SECTIONS, metavar="SECTION",
                        help=f"run only this section (repeatable): {', '.join(SECTIONS)}; "
                             f"writes {PARTIAL_OUT.relative_to(ROOT)} instead of {OUT.relative_to(ROOT)}")
    args = parser.parse_args(argv)
    only = set(args.only or SECTIONS)
    out = OUT if only == set(SECTIONS) else PARTIAL_OUT
    os.chdir(ROOT)
    # SIGTERM unwinds like Ctrl-C, so every finally block stops the processes this run started.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    started = time.perf_counter()
    mem = psutil.virtual_memory().total / 2**30
    print(f"Crunch bench - {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M:%S} UTC, {os.cpu_count()} CPUs, {mem:.0f} GiB, "
          f"Python {platform.python_version()}, commit {(git_commit() or '?')[:12]}")
    print("Every reference is measured in this same run. ours/ref = our number / the reference's: "
          "for times and costs (s, ms, cmds) above 1 means worse; for rates (/s) above 1 means better.")
    print(load_note("at start"))
    rows: list[Row] = []
    failures: list[str] = []
    sampler = RssSampler()
    sampler.start()
    try:
        try:
            if "kernels" in only:
                rows += kernels.run()
        except Exception as exc:  # noqa: BLE001 - the e2e part is still worth running
            failures.append(f"kernels: {type(exc).__name__}: {exc}")
            print(f"   note: FAILED kernels: {type(exc).__name__}: {exc}")
        with tempfile.TemporaryDirectory(prefix="crunch-bench-") as tmp:
            try:
                if only & set(e2e.SECTIONS):
                    rows += e2e.run(Path(tmp), sampler, failures, only)
            except Exception as exc:  # noqa: BLE001 - still write what was measured
                failures.append(f"e2e: {type(exc).__name__}: {exc}")
                print(f"   note: FAILED end to end: {type(exc).__name__}: {exc}")
            try:
                if "mixed" in only:
                    rows += mixed.run(Path(tmp), sampler, failures)
            except Exception as exc:  # noqa: BLE001 - still write what was measured
                failures.append(f"mixed: {type(exc).__name__}: {exc}")
                print(f"   note: FAILED mixed workload: {type(exc).__name__}: {exc}")
            if "batches" in only:  # its own service, so the batches start from an empty Redis
                rows += batches.run(Path(tmp), sampler, failures)
            try:
                if "wide" in only:  # its own service: MAX_PRIMES_END 2^64 - 1, and 1 then 2 workers
                    rows += wide.run(Path(tmp), sampler, failures)
            except Exception as exc:  # noqa: BLE001 - still write what was measured
                failures.append(f"wide: {type(exc).__name__}: {exc}")
                print(f"   note: FAILED wide jobs: {type(exc).__name__}: {exc}")
    finally:
        sampler.stop()
    rss = print_rss(sampler)
    elapsed = time.perf_counter() - started
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps({
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "commit": git_commit(), "cpus": os.cpu_count(), "platform": platform.platform(),
        "python": platform.python_version(), "elapsed_s": round(elapsed, 1),
        "loadavg_end": os.getloadavg(), "rows": [r.to_json() for r in rows], "peak_rss_mib": rss, "failures": failures,
    }, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    print()
    print(load_note("at end"))
    print(f"{len(rows)} rows in {elapsed:.0f} s; written to {out.relative_to(ROOT)} "
          f"(service logs of this run: var/bench/logs/)")
    for f in failures:
        print(f"FAILED: {f}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
