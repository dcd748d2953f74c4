"""`crunch`: submit jobs, watch them with a progress bar, fetch results, steer jobs.

The presentation half of the client. Results go to stdout, everything for people (progress,
notices, errors) goes to stderr, so `crunch primes 1 1e6 > primes.txt` works as expected.

Exit codes: 0 success, 1 the job failed or was canceled (or the server refused an action),
2 a usage or validation error, 3 the server stayed unreachable for --give-up seconds,
130 interrupted (the job keeps running on the server).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from client import types as job_types
from client.http import (
    ApiError,
    GaveUp,
    Job,
    default_url,
)
from client.progress import Progress, clock, percent
from client.session import (
    EXIT_INTERRUPTED,
    EXIT_JOB,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    FORMATS,
    SUBMIT_WAIT,
    Session,
    UsageError,
)

__all__ = [
    "EXIT_INTERRUPTED",
    "EXIT_JOB",
    "EXIT_OK",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "FORMATS",
    "SUBMIT_WAIT",
    "Progress",
    "Session",
    "UsageError",
    "clock",
    "main",
    "percent",
]


# -- commands ----------------------------------------------------------------------------------------

_INT_TOKEN = re.compile(r"[+-]?[0-9]+\Z")
_FLOAT_TOKEN = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\Z")
_SCI_INT = re.compile(r"([0-9]+)[eE]\+?([0-9]+)\Z")


def int_arg(text: str) -> int:
    """An integer, also written 1e9, 10**9 or 1_000_000 (handy for prime ranges)."""
    t = text.strip().replace("_", "").replace(",", "")
    try:
        if m := _SCI_INT.fullmatch(t):
            return int(m.group(1)) * 10 ** int(m.group(2))
        if "**" in t:
            base, _, exp = t.partition("**")
            return int(base) ** int(exp)
        return int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def submit_wait_arg(text: str) -> int:
    """Seconds for the submit's `Prefer: wait`: 0 to 30, the server's own cap."""
    t = text.strip()
    if len(t) > 3 or not t.isdigit() or int(t) > 30:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of seconds from 0 to 30")
    return int(t)


def number_json(token: str) -> str:
    """A command-line number as exact JSON: integers keep every digit, floats stay floats."""
    t = token.strip()
    if _INT_TOKEN.match(t):
        sign = "-" if t.startswith("-") else ""
        digits = t.lstrip("+-").lstrip("0") or "0"
        return (sign if digits != "0" else "") + digits
    if _FLOAT_TOKEN.match(t):
        value = float(t)
        if math.isfinite(value):
            return repr(value)
        raise UsageError(f"{token!r} is too large for a float; write it as an integer to keep it exact")
    raise UsageError(f"{token!r} is not a number")


def cmd_primes(s: Session, a: argparse.Namespace) -> int:
    body = json.dumps({"start": a.start, "end": a.end, "output": "count" if a.count else "list"}).encode()
    return s.run("primes", lambda wait: s.client.submit("primes", body, wait=wait))


def cmd_fib(s: Session, a: argparse.Namespace) -> int:
    if isinstance(a.n, range):  # crunch fib 1000..2000: one batch (client.batch)
        from client.batch import fib_range

        return fib_range(s, a.n)
    body = json.dumps({"n": a.n}).encode()
    return s.run("fibonacci", lambda wait: s.client.submit("fibonacci", body, wait=wait))


def cmd_sort(s: Session, a: argparse.Namespace) -> int:
    if a.file and a.numbers:
        raise UsageError("give numbers or --file, not both")
    if a.file:
        return _upload(s, "sort", a.file, [("descending", "true" if a.desc else "false")])
    if not a.numbers:
        if sys.stdin.isatty():
            raise UsageError("give the numbers to sort, --file FILE, or pipe them in (--file -)")
        return _upload(s, "sort", "-", [("descending", "true" if a.desc else "false")])
    tokens = [t for arg in a.numbers for t in re.split(r"[,\s]+", arg) if t]
    body = ('{"numbers": [' + ", ".join(number_json(t) for t in tokens) + '], "descending": '
            + ("true" if a.desc else "false") + "}").encode()
    return s.run("sort", lambda wait: s.client.submit("sort", body, wait=wait))


def cmd_csv(s: Session, a: argparse.Namespace) -> int:
    fields = [(name, value) for name, value in (("date_column", a.date_column), ("from", a.date_from),
                                                ("till", a.till), ("sort_by", a.sort_by)) if value]
    if a.desc:
        fields.append(("descending", "true"))
    return _upload(s, "csv", a.file, fields)


def _upload(s: Session, kind: str, file: str, fields: list[tuple[str, str]]) -> int:
    if file == "-":
        source: Path | bytes = sys.stdin.buffer.read()
        name = "stdin"
    else:
        source = Path(file).expanduser()
        if not source.is_file():
            raise UsageError(f"{file}: no such file")
        name = source.name
    return s.run(kind, lambda wait: s.client.submit_form(kind, fields, [("file", source, name)], wait=wait))


def cmd_submit(s: Session, a: argparse.Namespace) -> int:
    """Any job type the server offers, with the fields its /openapi.json describes (client.types)."""
    doc = s.call(s.client.document)
    ops = job_types.submit_operations(doc)
    op = ops.get(a.type)
    if op is None:
        raise UsageError(f"this server has no {a.type!r} jobs; it has {', '.join(ops)} (see crunch types)")
    media = op.get("requestBody", {}).get("content", {})
    try:
        if "application/json" in media and not a.file:
            body = job_types.json_body(doc, op, a.type, a.fields)
            return s.run(a.type, lambda wait: s.client.submit(a.type, body, wait=wait))
        if "multipart/form-data" in media:
            if not a.file:
                raise UsageError(f"{a.type} jobs take an uploaded file: --file FILE (- for stdin)")
            return _upload(s, a.type, a.file, job_types.split_words(a.fields))
    except job_types.TypeUsage as exc:
        raise UsageError(str(exc)) from None
    raise UsageError(f"{a.type} jobs take no uploaded file")


def cmd_types(s: Session, a: argparse.Namespace) -> int:
    doc = s.call(s.client.document)
    if a.json:
        s.write(json.dumps({k: op.get("summary") for k, op in job_types.submit_operations(doc).items()}) + "\n")
    else:
        s.write(job_types.describe(doc))
    return EXIT_OK


def cmd_wait(s: Session, a: argparse.Namespace) -> int:
    s.job_id = a.id
    return s.wait(s.call(s.client.job, a.id))


def cmd_status(s: Session, a: argparse.Namespace) -> int:
    job = s.call(s.client.job, a.id)
    if a.json:
        s.write(job.raw.decode() + "\n")
        return EXIT_OK
    pct = percent(job)
    status = str(job.get("status"))
    if pct is not None and status not in ("queued", "finished"):
        status += f" ({pct:.1f}%)"
    rows = [("id", job["id"]), ("type", job.get("type")), ("params", describe_params(job)), ("status", status)]
    if job.get("status") == "queued" and isinstance(job.get("position"), int):
        rows.append(("", waiting(job["position"], job.get("queue"), s.call(s.client.workers))))
    rows += [("created", job.get("created_at")), ("started", job.get("started_at")), ("ended", job.get("ended_at"))]
    if job.get("duration_ms") is not None:
        rows.append(("duration", f"{float(job['duration_ms']) / 1000:.3f} s"))
    for flag in ("cached", "deduplicated"):
        if job.get(flag):
            rows.append((flag, "yes"))
    if job.get("error"):
        rows.append(("error", f"{job['error'].get('type')}: {job['error'].get('message')}"))
    if job.get("status") == "finished":
        rows.append(("result", preview(job)))
    s.write("".join(f"{k:<9} {v if v is not None else '-'}\n" for k, v in rows))
    return EXIT_OK


def waiting(ahead: int, queue: str | None, workers: list[dict[str, Any]]) -> str:
    """Why a queued job waits, as the job page says it: "waiting: N ahead, all W workers busy"."""
    serving = [w for w in workers if queue is None or queue in (w.get("queues") or ())]
    busy = sum(1 for w in serving if w.get("state") == "busy")
    if not serving:
        return f"waiting: {ahead} ahead, no worker running"
    if busy >= len(serving):
        return f"waiting: {ahead} ahead, all {len(serving)} workers busy"
    return f"waiting: {ahead} ahead, {busy} of {len(serving)} workers busy"


def preview(job: Job) -> str:
    result = job.get("result")
    fetch = f"crunch result {job['id']}"
    if result is None:
        return f"(large: {fetch} -o FILE)"
    if isinstance(result, list):
        shown = ", ".join(str(x) for x in result[:8])
        more = f", … ({len(result):,} items: {fetch})" if len(result) > 8 else ""
        return f"[{shown}{more}]"
    if isinstance(result, dict) and "value" in result:
        value = str(result["value"])
        return value if len(value) <= 60 else f"{value[:25]}…{value[-25:]} ({len(value):,} digits: {fetch})"
    return json.dumps(result)


def describe_params(job: dict[str, Any]) -> str:
    """The job in a few words: the server's summary (its type's spec writes it), else its params."""
    if isinstance(job.get("summary"), str) and job["summary"]:
        return job["summary"]
    p = job.get("params") or {}
    text = json.dumps(p, separators=(",", ":"))
    return text if len(text) <= 50 else text[:49] + "…"


def cmd_jobs(s: Session, a: argparse.Namespace) -> int:
    jobs: list[dict[str, Any]] = []
    cursor = a.cursor
    while True:
        page = s.call(s.client.jobs, status=a.status, type_=a.type, limit=min(a.limit - len(jobs), 500),
                      cursor=cursor)
        jobs += page.get("jobs") or []
        cursor = page.get("next_cursor")
        if not cursor or len(jobs) >= a.limit:
            break
    if a.json:
        s.write(json.dumps({"jobs": jobs, "next_cursor": cursor}) + "\n")
        return EXIT_OK
    if not jobs:
        s.progress.note("crunch: no jobs" + (" match" if a.status or a.type else ""))
        return EXIT_OK
    rows = [("ID", "TYPE", "STATUS", "PROGRESS", "CREATED", "PARAMS")]
    for j in jobs:
        pct = percent(j)
        rows.append((str(j.get("id")), str(j.get("type")), str(j.get("status")),
                     "-" if pct is None else f"{pct:.0f}%",
                     str(j.get("created_at") or "-").replace("T", " ")[:19], describe_params(j)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    s.write("".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1] + "\n"
                    for r in rows))
    if cursor:
        s.progress.note(f"crunch: more jobs: crunch jobs --cursor {cursor}")
    return EXIT_OK


def cmd_action(s: Session, a: argparse.Namespace) -> int:
    s.job_id = a.id
    if a.command == "delete":
        s.call(s.client.delete, a.id)
        s.write("" if a.json else f"job {a.id} deleted\n")
        return EXIT_OK
    job = s.call(s.client.action, a.id, a.command)
    s.write(job.raw.decode() + "\n" if a.json else f"job {a.id}: {job.get('status')}\n")
    return EXIT_OK


def cmd_result(s: Session, a: argparse.Namespace) -> int:
    s.job_id = a.id
    job = s.call(s.client.job, a.id)
    if job.get("status") != "finished":
        return _not_finished(s, job)
    to_file = bool(a.output) and a.output != "-"
    fmt = a.format
    if fmt is None and to_file:
        fmt = {".csv": "csv", ".json": "json", ".txt": "txt"}.get(Path(a.output).suffix.lower())
    if fmt is None and a.json:
        fmt = "json"
    if fmt is None and job.get("type") != "csv":  # the csv job's result is a CSV file by default
        fmt = "txt"
    if a.offset is None and a.limit is None:
        s.save_result(job, fmt, a.output)
        return EXIT_OK

    def page() -> None:
        resp = s.client.result(job, fmt=fmt, offset=a.offset, limit=a.limit)
        data = b"".join(s.client.chunks(resp))
        if to_file:
            Path(a.output).write_bytes(data)
        else:
            s.write_bytes(data)

    s.call(page)
    return EXIT_OK


def _not_finished(s: Session, job: Job) -> int:
    status = job.get("status")
    hint = f"; wait for it: crunch wait {job['id']}" if status in ("queued", "started", "paused") else ""
    s.progress.note(f"crunch: job {job['id']} is {status}, it has no result{hint}")
    return EXIT_JOB


# -- argument parsing --------------------------------------------------------------------------------

EPILOG = """\
examples:
  crunch primes 1 100                 the primes in [1, 100], one per line
  crunch primes 0 1e10 --count        how many primes up to 10^10, with a progress bar
  crunch fib 1000                     F(1000)
  crunch sort 3 1 2.5 --desc          or: crunch sort --file numbers.txt
  crunch csv sales.csv --date-column date --from 2024-01-01 --till 2024-03-31 --sort-by amount -o q1.csv
  crunch primes 0 1e11 --count --no-wait   prints the job id at once
  crunch types                        every job type the server offers; any of them: crunch submit TYPE n=42
  crunch wait ID | status ID | cancel ID | pause ID | resume ID
  crunch result ID -o primes.csv      the whole result, streamed to a file (format from the extension)
  crunch jobs --status started

The server is --url, else $CRUNCH_URL, else http://localhost:5000; a server with API tokens
wants yours in $CRUNCH_TOKEN. Jobs keep running on the
server when crunch stops waiting (Ctrl-C); `crunch wait ID` picks one up again.
exit codes: 0 ok, 1 job failed or canceled (or action refused), 2 usage or validation error,
3 server unreachable for --give-up seconds, 130 interrupted.
"""


def common_options(suppress: bool) -> argparse.ArgumentParser:
    """Options accepted before and after the command (`crunch --json jobs` = `crunch jobs --json`)."""
    p = argparse.ArgumentParser(add_help=False)

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    g = p.add_argument_group("common options")
    g.add_argument("--url", default=default(default_url()), metavar="URL",
                   help="the Crunch server (default: $CRUNCH_URL or http://localhost:5000)")
    g.add_argument("--json", action="store_true", default=default(False),
                   help="print machine-readable JSON on stdout (the job resource, the result)")
    g.add_argument("-q", "--quiet", action="store_true", default=default(False), help="no progress display")
    g.add_argument("--give-up", type=float, default=default(300.0), metavar="SECONDS",
                   help="stop retrying once the server has been unreachable this long (default 300)")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crunch", parents=[common_options(False)], epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run compute jobs on a Crunch server: submit, watch progress, get results.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = common_options(True)

    def command(name: str, help_: str, fn: Callable[[Session, argparse.Namespace], int],
                aliases: Sequence[str] = ()) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_, parents=[common], aliases=list(aliases))
        p.set_defaults(fn=fn)
        return p

    def job_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--no-wait", action="store_true", help="print the job id (or resource with --json) and exit")
        p.add_argument("--poll", action="store_true", help="long-poll instead of the event stream")
        p.add_argument("--submit-wait", type=submit_wait_arg, default=SUBMIT_WAIT, metavar="SECONDS",
                       help=f"how long the submit itself waits for the job to end, 0-30 (default {SUBMIT_WAIT}); "
                            "a job that ends within it prints its result with no progress display")
        p.add_argument("-o", "--output", metavar="FILE", help="write the result to FILE instead of stdout")

    p = command("primes", "the primes in [START, END] (both inclusive), or how many there are", cmd_primes)
    p.add_argument("start", type=int_arg, help="start of the range (1e9, 10**9 and 1_000_000 work too)")
    p.add_argument("end", type=int_arg, help="end of the range, inclusive")
    p.add_argument("--count", action="store_true", help="only count them")
    job_options(p)

    from client import batch

    p = command("fib", "the Nth Fibonacci number, F(0)=0, F(1)=1; or F(A)..F(B), one per line, from one batch",
                cmd_fib, aliases=["fibonacci"])
    p.add_argument("n", type=batch.fib_arg, help="n, or a range A..B (both inclusive) sent as one batch")
    job_options(p)

    p = command("sort", "sort numbers exactly (integers of any size, floats stay floats)", cmd_sort)
    p.add_argument("numbers", nargs="*", help="numbers (use -- before the first one if it is like -1e5)")
    p.add_argument("-f", "--file", metavar="FILE", help="upload FILE of numbers separated by commas, spaces or "
                                                        "newlines (- for stdin)")
    p.add_argument("--desc", "--descending", action="store_true", dest="desc", help="largest first")
    job_options(p)

    p = command("csv", "filter a CSV file by a date range and sort it (the result is a CSV)", cmd_csv)
    p.add_argument("file", help="the CSV file, with a header row (- for stdin)")
    p.add_argument("--date-column", metavar="NAME", help="the column holding the dates")
    p.add_argument("--from", dest="date_from", metavar="DATE", help="keep rows on or after DATE (ISO)")
    p.add_argument("--till", metavar="DATE", help="keep rows on or before DATE (ISO)")
    p.add_argument("--sort-by", metavar="NAME", help="the column to sort by")
    p.add_argument("--desc", "--descending", action="store_true", dest="desc", help="largest first")
    job_options(p)

    p = command("submit", "submit a job of any type the server offers (crunch types lists them)", cmd_submit)
    p.add_argument("type", metavar="TYPE")
    p.add_argument("fields", nargs="*", metavar="NAME=VALUE", help="the job's fields, e.g. n=1000 (before the options)")
    p.add_argument("-f", "--file", metavar="FILE", help="upload FILE (- for stdin), for types that take one")
    job_options(p)

    command("types", "the job types this server offers, and the fields each takes", cmd_types)

    batch.add_parser(command)

    p = command("jobs", "list jobs, newest first", cmd_jobs, aliases=["ls"])
    p.add_argument("--status", choices=["queued", "started", "paused", "finished", "failed", "canceled"])
    p.add_argument("--type", metavar="TYPE", help="a job type (crunch types lists them)")
    p.add_argument("--limit", type=int, default=20, help="how many (default 20)")
    p.add_argument("--cursor", help=argparse.SUPPRESS)

    p = command("status", "show a job", cmd_status, aliases=["show"])
    p.add_argument("id")

    p = command("wait", "wait for a job with a progress bar, then print its result", cmd_wait)
    p.add_argument("id")
    p.add_argument("--poll", action="store_true", help="long-poll instead of the event stream")
    p.add_argument("-o", "--output", metavar="FILE", help="write the result to FILE instead of stdout")

    for verb, help_ in (("cancel", "cancel a job"), ("pause", "pause a job at its next checkpoint"),
                        ("resume", "resume a paused job from its checkpoint"),
                        ("retry", "run a failed or canceled job again"), ("delete", "cancel and forget a job")):
        command(verb, help_, cmd_action).add_argument("id")

    p = command("result", "fetch a finished job's result, streamed", cmd_result)
    p.add_argument("id")
    p.add_argument("--format", choices=FORMATS,
                   help="json, csv or txt (default: from the -o extension, else txt; json with --json)")
    p.add_argument("-o", "--output", metavar="FILE", help="stream it into FILE (written whole or not at all)")
    p.add_argument("--offset", type=int, help="first item of a page (array results)")
    p.add_argument("--limit", type=int, help="items in the page")
    return parser


def format_problem(exc: ApiError) -> str:
    """A problem+json as lines people read: the title, then each field and what is wrong with it."""
    lines = [f"crunch: {exc.title} ({exc.status})" + (f": {exc.detail}" if exc.detail and not exc.errors else "")]
    for e in exc.errors:
        loc = [str(p) for p in e.get("loc") or []]
        if loc and loc[0] in ("body", "query", "form"):
            loc = loc[1:]
        where = ""
        for part in loc:
            where += f"[{part}]" if part.isdigit() else (f".{part}" if where else part)
        msg = str(e.get("msg", "")).removeprefix("Value error, ")
        # "end: end must be >= start" reads better as "end must be >= start".
        lines.append(f"  {msg}" if where and msg.startswith(where + " ") else f"  {where or 'request'}: {msg}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.give_up < 0:
        parser.error("--give-up must be >= 0")
    s = Session(args)
    try:
        return args.fn(s, args)
    except UsageError as exc:
        s.progress.close()
        parser.exit(EXIT_USAGE, f"crunch {args.command}: error: {exc}\n")
    except ApiError as exc:
        s.progress.close()
        if args.json:
            s.write(json.dumps(exc.problem) + "\n")
        print(format_problem(exc), file=sys.stderr)
        return EXIT_USAGE if exc.status in (400, 413, 415, 422) else EXIT_JOB
    except GaveUp as exc:
        s.progress.close()
        where = f"; the job may still be running: crunch wait {s.job_id}" if s.job_id else ""
        lasted = f" after {exc.seconds:.0f} s" if exc.seconds else ""
        print(f"crunch: gave up{lasted}: {exc.reason} ({s.client.base_url}){where}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except KeyboardInterrupt:
        s.progress.close()
        if s.job_id:
            print(f"\ncrunch: stopped waiting; job {s.job_id} keeps running on the server.\n"
                  f"  follow it: crunch wait {s.job_id}   stop it: crunch cancel {s.job_id}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `crunch primes 0 1e9 | head`: the reader left; that is not an error.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
