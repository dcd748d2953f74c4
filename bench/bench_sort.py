"""Sort: our web-side validation plus the kernel, against orjson.loads + numpy.sort + orjson.dumps of the same body.

Each measurement runs in a fresh interpreter so its peak RSS (ru_maxrss) is its own: the web
part (SortJob.decode_body of the body as the HTTP layer does it, then SortJob.parse_json) and the
kernel part (ctx.input() bytes -> sorted, encoded chunks) run in separate processes, as they
do in production.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

#: (count, repetitions); the median is reported.
CASES = ((1_000_000, 3), (10_000_000, 1))
SEED = 1234
#: Items per encoded chunk, as jobs.store.results.RedisResultWriter cuts them.
CHUNK_ITEMS = 65_536
REFERENCE = "orjson.loads + np.array + np.sort + orjson.dumps(OPT_SERIALIZE_NUMPY) of the same body"
ROOT = Path(__file__).resolve().parent.parent


class EncodingWriter:
    """ResultWriter that encodes like the Redis one (orjson per 65,536 items) but keeps only counts."""

    def __init__(self) -> None:
        self.items = 0
        self.bytes = 0
        self.chunks = 0

    def write_value(self, value: Any) -> None:
        raise AssertionError("sort writes arrays")

    def append(self, items: Any) -> None:
        for i in range(0, len(items), CHUNK_ITEMS):
            piece = items[i:i + CHUNK_ITEMS]
            if hasattr(piece, "dtype"):
                data = orjson.dumps(piece, option=orjson.OPT_SERIALIZE_NUMPY)[1:-1]
            else:
                try:
                    data = orjson.dumps(piece)[1:-1]
                except TypeError:  # integers beyond 64 bits, as jobs.store.results falls back to json
                    data = ",".join(map(str, piece)).encode()
            self.items += len(piece)
            self.bytes += len(data)
            self.chunks += 1


def make_body(n: int) -> bytes:
    """A JSON body of n random int64 (INT64_MIN excluded, so the kernel's int64 path is the one measured)."""
    values = np.random.default_rng(SEED + n).integers(-(2 ** 63) + 1, 2 ** 63 - 1, n, dtype=np.int64)
    return orjson.dumps({"numbers": values, "descending": False}, option=orjson.OPT_SERIALIZE_NUMPY)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_reference(n: int, workdir: Path) -> dict[str, Any]:
    raw = make_body(n)
    t0 = time.perf_counter()
    values = np.array(orjson.loads(raw)["numbers"], dtype=np.int64)
    values.sort()
    out = orjson.dumps(values, option=orjson.OPT_SERIALIZE_NUMPY)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "rss": peak_rss_mib(), "bytes": len(out) - 2}


def child_web(n: int, workdir: Path) -> dict[str, Any]:
    from jobs.types.sort import SortJob
    from jobs.types.spec import Limits

    raw = make_body(n)
    t0 = time.perf_counter()
    body = SortJob().decode_body(raw)  # what rest/api.py does before calling the job type
    t1 = time.perf_counter()
    sub = SortJob().parse_json(body, Limits(), raw=raw)
    t2 = time.perf_counter()
    rss = peak_rss_mib()
    (workdir / "input").write_bytes(sub.input or b"")
    (workdir / "params").write_bytes(orjson.dumps(sub.params))
    return {"decode": t1 - t0, "parse": t2 - t1, "rss": rss}


def child_kernel(n: int, workdir: Path) -> dict[str, Any]:
    from jobs.context import LocalContext
    from jobs.kernels.sort import run

    ctx = LocalContext((workdir / "input").read_bytes())  # as RedisContext.input() would return it
    writer = EncodingWriter()
    ctx.output = writer  # type: ignore[assignment]
    params = orjson.loads((workdir / "params").read_bytes())
    t0 = time.perf_counter()
    run(params, ctx)
    seconds = time.perf_counter() - t0
    if writer.items != n:
        raise AssertionError(f"kernel wrote {writer.items} items, expected {n}")
    return {"seconds": seconds, "rss": peak_rss_mib(), "bytes": writer.bytes + writer.chunks - 1}


CHILDREN = {"reference": child_reference, "web": child_web, "kernel": child_kernel}


def in_child(part: str, n: int, workdir: Path) -> dict[str, Any]:
    """Run one part in a fresh interpreter and read its JSON line."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "bench.bench_sort", "--child", part, str(n), str(workdir)],
                          cwd=ROOT, env=env, capture_output=True, text=True, check=False, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"bench_sort {part} n={n} failed: {proc.stderr.strip()[-2000:]}")
    return orjson.loads(proc.stdout.strip().splitlines()[-1])


def run() -> list[dict[str, Any]]:
    """One row per case: ours = web validation + kernel, reference = the plain library pipeline."""
    rows = []
    for n, reps in CASES:
        ref, web, kernel = [], [], []
        with tempfile.TemporaryDirectory(prefix="bench_sort_") as tmp:
            for _ in range(reps):  # interleaved, so drift hits both sides alike
                ref.append(in_child("reference", n, Path(tmp)))
                web.append(in_child("web", n, Path(tmp)))
                kernel.append(in_child("kernel", n, Path(tmp)))
        if kernel[0]["bytes"] != ref[0]["bytes"]:
            raise AssertionError(f"n={n}: kernel output {kernel[0]['bytes']} bytes, reference {ref[0]['bytes']}")

        def med(xs: list[dict[str, Any]], key: str) -> float:
            return float(np.median([x[key] for x in xs]))

        decode, parse, kern = med(web, "decode"), med(web, "parse"), med(kernel, "seconds")
        ours = decode + parse + kern
        reference = med(ref, "seconds")
        exp = len(str(n)) - 1
        rows.append({
            "case": f"sort 10^{exp} random int64 (JSON body)",
            "seconds": round(ours, 4),
            "reference": REFERENCE,
            "reference_seconds": round(reference, 4),
            "ratio": round(ours / reference, 3),
            "note": f"median of {reps}; ours = decode_body {decode:.2f} s + parse_json {parse:.2f} s "
                    f"+ kernel {kern:.2f} s",
            "web_peak_rss_mib": round(max(x["rss"] for x in web)),
            "worker_peak_rss_mib": round(max(x["rss"] for x in kernel)),
            "reference_peak_rss_mib": round(max(x["rss"] for x in ref)),
        })
    return rows


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        result = CHILDREN[sys.argv[2]](int(sys.argv[3]), Path(sys.argv[4]))
        sys.stdout.write(orjson.dumps(result).decode() + "\n")
        return
    print(f"reference: {REFERENCE}")
    for row in run():
        print(f"{row['case']}: ours {row['seconds']:.3f} s, reference {row['reference_seconds']:.3f} s, "
              f"ratio {row['ratio']:.2f}x")
        print(f"    {row['note']}")
        print(f"    peak RSS MiB: web {row['web_peak_rss_mib']}, worker {row['worker_peak_rss_mib']}, "
              f"reference {row['reference_peak_rss_mib']}")


if __name__ == "__main__":
    main()
