"""Rows, statistics, the printed table and the peak-RSS sampler shared by the bench sections."""

from __future__ import annotations

import itertools
import math
import os
import statistics
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import psutil

#: Units where a smaller number is better; every other unit is a rate.
TIME_UNITS = {"s", "ms", "us"}


class BenchError(Exception):
    """A measurement could not be taken; the message says why."""


@dataclass
class Row:
    """One measured case: our number, the reference's number from the same run, and their ratio."""

    section: str
    case: str
    ours: float | None
    ref: float | None
    unit: str
    ref_name: str = ""
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    given_ratio: float | None = None

    @property
    def ratio(self) -> float | None:
        """ours / ref (for times >1 means slower, for rates >1 means faster)."""
        if self.ours is not None and self.ref:
            return self.ours / self.ref
        return self.given_ratio

    def to_json(self) -> dict[str, Any]:
        return {"section": self.section, "case": self.case, "ours": self.ours, "ref": self.ref,
                "unit": self.unit, "ratio": self.ratio, "ref_name": self.ref_name, "note": self.note,
                "extra": self.extra}


# -- rows contributed by other modules -----------------------------------------------

_OURS_KEYS = ("ours", "ours_s", "our", "our_s", "ours_time", "our_time", "ours_seconds", "crunch", "crunch_s",
              "time_s", "seconds", "value", "rate")
_REF_KEYS = ("ref", "ref_s", "reference", "reference_s", "ref_time", "reference_time", "ref_seconds",
             "reference_seconds", "baseline", "baseline_s", "ref_rate", "reference_rate")
_NAME_KEYS = ("ref_name", "reference_name", "ref_label", "reference_label", "baseline_name", "reference", "ref",
              "baseline")
_CASE_KEYS = ("case", "name", "label", "title", "bench")
_NOTE_KEYS = ("note", "notes", "comment", "detail")


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v)


def row_from_dict(section: str, d: dict[str, Any]) -> Row:
    """Best-effort reading of a row dict from another bench module (see bench/__init__.py)."""
    used: set[str] = set()

    def pick(keys: Iterable[str], want: Callable[[Any], Any]) -> tuple[str | None, Any]:
        for k in keys:
            if k in d and k not in used and want(d[k]) is not None:
                used.add(k)
                return k, want(d[k])
        return None, None

    _, case = pick(_CASE_KEYS, lambda v: v if isinstance(v, str) else None)
    ours_key, ours = pick(_OURS_KEYS, _number)
    ref_key, ref = pick(_REF_KEYS, _number)
    _, ref_name = pick(_NAME_KEYS, lambda v: v if isinstance(v, str) else None)
    _, note = pick(_NOTE_KEYS, lambda v: v if isinstance(v, str) else None)
    _, given_ratio = pick(("ratio",), _number)
    unit = d.get("unit") if isinstance(d.get("unit"), str) else None
    used.add("unit")
    if unit is None:
        keys = f"{ours_key or ''} {ref_key or ''}"
        unit = "" if ("rate" in keys or "per" in keys) else "s"  # kernel benches time things
    extra = {k: v for k, v in d.items() if k not in used}
    return Row(section, case or repr(d)[:60], ours, ref, unit, ref_name or "", note or "", extra, given_ratio)


# -- statistics ----------------------------------------------------------------------

def closed_loop(count: int, clients: int, make_call: Callable[[], Callable[[int], None]], what: str
                ) -> tuple[float, list[float]]:
    """`clients` threads each make their own caller, then call it for the next i until `count`: the same
    closed loop for Crunch over HTTP, plain RQ and Celery, so their figures compare. (wall s, latencies ms)"""
    counter = itertools.count()
    starts = [0.0] * count
    ends = [0.0] * count
    errors: list[str] = []
    barrier = threading.Barrier(clients)

    def loop() -> None:
        call = None
        try:
            call = make_call()  # connect before the clock starts
        except Exception as exc:  # noqa: BLE001 - collected and raised below
            errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            barrier.wait()
        while call is not None and (i := next(counter)) < count:
            t0 = time.perf_counter()
            try:
                call(i)
            except Exception as exc:  # noqa: BLE001 - collected and raised below
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            starts[i], ends[i] = t0, time.perf_counter()

    pool = [threading.Thread(target=loop, name=f"{what}-client-{k}", daemon=True) for k in range(clients)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    if errors:
        raise BenchError(f"{len(errors)}/{count} {what} calls failed; first: {errors[0]}")
    return max(ends) - min(starts), [(e - s) * 1000 for s, e in zip(starts, ends, strict=True)]


def reference_pids(workers: Iterable[Any], redis_pid: int | None) -> dict[str, int]:
    """Process ids a reference's CPU is summed over: its workers, Redis (when known) and this client."""
    pids = {f"worker{i}": w.proc.pid for i, w in enumerate(workers)}
    if redis_pid:
        pids["redis"] = redis_pid
    pids["client"] = os.getpid()
    return pids


def reference_summary(n_jobs: int, wall: float, lat: list[float], cpu: CpuMeter, calls: dict[str, int],
                      **extra: Any) -> dict[str, Any]:
    """The figures every throughput reference reports, worker processes' CPU summed into one entry."""
    used = dict(cpu.used)
    cpu.used = {"workers": sum(v for k, v in used.items() if k.startswith("worker")),
                **{k: v for k, v in used.items() if not k.startswith("worker")}}
    return {"jobs": n_jobs, "wall_s": wall, "rate": n_jobs / wall, **extra, "p50_ms": pct(lat, 50),
            "p99_ms": pct(lat, 99), "cpu_s": cpu.used, "cpu_per_job": cpu.per_job_ms(n_jobs),
            "redis_calls": calls, "redis_calls_per_job": sum(calls.values()) / n_jobs}


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile, q in 0..100."""
    if not values:
        return math.nan
    s = sorted(values)
    return s[max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


# -- printing ------------------------------------------------------------------------

def fmt(v: float | None, unit: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if unit == "s" and v < 1:
        return f"{v * 1000:.4g} ms"
    if unit in TIME_UNITS:
        return f"{v:.4g} {unit}"
    if v >= 1e6:
        return f"{v / 1e6:.3g}M {unit}".strip()
    if v >= 100:
        return f"{v:,.0f} {unit}".strip()
    return f"{v:.3g} {unit}".strip()


def fmt_ratio(r: Row) -> str:
    if r.ratio is None:
        return "-"
    return f"{r.ratio:.2f}x"


_W = (46, 13, 13, 9)


def print_header(title: str, reference: str) -> None:
    print()
    print(f"== {title}")
    print(f"   reference: {reference}")
    print(f"   {'case':<{_W[0]}} {'ours':>{_W[1]}} {'reference':>{_W[2]}} {'ours/ref':>{_W[3]}}  "
          "reference is / notes")
    print(f"   {'-' * (sum(_W) + 3 + 30)}")


def print_row(r: Row) -> None:
    """One table line; the reference's description and notes wrap onto indented lines below it."""
    case = r.case if len(r.case) <= _W[0] else r.case[:_W[0] - 1] + "~"
    tail = "; ".join(x for x in (r.ref_name, r.note) if x)
    if r.extra and r.section != "e2e":
        tail = "; ".join(x for x in (tail, ", ".join(f"{k}={v}" for k, v in r.extra.items())) if x)
    head = (f"   {case:<{_W[0]}} {fmt(r.ours, r.unit):>{_W[1]}} {fmt(r.ref, r.unit):>{_W[2]}} "
            f"{fmt_ratio(r):>{_W[3]}}  ")
    lines = textwrap.wrap(tail, width=max(40, 150 - len(head))) or [""]
    print(head + lines[0])
    rest = " ".join(lines[1:])
    for line in textwrap.wrap(rest, width=140):
        print(f"{'':9}{line}")
    sys.stdout.flush()


def note(msg: str) -> None:
    print(f"   note: {msg}", flush=True)


# -- CPU time of process trees ------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """User+system CPU of a process and its live descendants, plus the children they reaped.

    For this very process only its own threads count (its children are the measured servers).
    """
    try:
        root = psutil.Process(pid)
        if pid == os.getpid():
            t = root.cpu_times()
            return t.user + t.system
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.Error:
            pass
    return total


class CpuMeter:
    """CPU seconds spent by named process trees between start() and stop()."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.before: dict[str, float] = {}
        self.used: dict[str, float] = {}

    def start(self) -> CpuMeter:
        self.before = {k: cpu_seconds(v) for k, v in self.pids.items()}
        return self

    def stop(self) -> dict[str, float]:
        self.used = {k: cpu_seconds(v) - self.before[k] for k, v in self.pids.items()}
        return self.used

    def per_job_ms(self, jobs: int) -> str:
        """'web 5.1 + workers 6.2 + ... = 14.0 CPU ms/job'."""
        parts = [f"{k} {v / jobs * 1000:.1f}" for k, v in self.used.items()]
        return " + ".join(parts) + f" = {sum(self.used.values()) / jobs * 1000:.1f} CPU ms/job"


# -- Redis commands -------------------------------------------------------------------

def redis_calls(conn: Any) -> dict[str, int]:
    """Calls per command so far (INFO commandstats; commands run inside Lua scripts count too)."""
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in conn.info("commandstats").items()}


def calls_since(conn: Any, before: dict[str, int]) -> dict[str, int]:
    """Commands executed since `before`, most frequent first (the INFO calls themselves excluded)."""
    after = redis_calls(conn)
    diff = {k: v - before.get(k, 0) for k, v in after.items()}
    diff["info"] = diff.get("info", 0) - 1
    return dict(sorted(((k, v) for k, v in diff.items() if v > 0), key=lambda kv: -kv[1]))


# -- peak RSS of process trees ------------------------------------------------------

class RssSampler(threading.Thread):
    """Samples the summed RSS of named process trees every `interval` seconds, per phase."""

    def __init__(self, interval: float = 0.1) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.interval = interval
        self.roots: dict[str, int] = {}
        self.phase = "startup"
        self.peaks: dict[str, dict[str, int]] = {}
        self._stop_event = threading.Event()
        self._lock = threading.Lock()

    def track(self, name: str, pid: int) -> None:
        with self._lock:
            self.roots[name] = pid

    def untrack(self, name: str) -> None:
        with self._lock:
            self.roots.pop(name, None)

    def set_phase(self, phase: str) -> None:
        self.sample()
        self.phase = phase

    @staticmethod
    def tree_rss(pid: int) -> int:
        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return 0
        total = 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total

    def sample(self) -> None:
        with self._lock:
            roots = dict(self.roots)
        peaks = self.peaks.setdefault(self.phase, {})
        for name, pid in roots.items():
            rss = self.tree_rss(pid)
            if rss > peaks.get(name, 0):
                peaks[name] = rss

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self._stop_event.set()
