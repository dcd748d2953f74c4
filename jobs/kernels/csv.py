"""Filter a CSV file by a date column and sort it by a column: streamed, pausable, bounded memory.

The input is the uploaded file as stored (UTF-8, a header row, maybe a BOM), read piece by piece
from ctx.input_chunks. Params (see jobs.types.csv): size, and optionally date_column, from, till (ISO
dates, inclusive), sort_by and descending.

Records end at a newline outside double quotes (RFC 4180), found by quote parity, so a field may
hold newlines. Records without quotes are split on commas; the others go through the csv module.
Output records are the input records byte for byte, each ended by the header's line ending (CRLF
or LF, so the output keeps the input's); the header comes first (without the BOM). The one change
is OWASP's defence against CSV injection: a cell that starts with =, +, -, @, a tab or a CR (a
formula to a spreadsheet) gets a single quote in front ('=cmd|...). Numbers are exempt: -5 or
+1.5e3 (a finite float) is data, and quoting it would turn it into text in every spreadsheet. A
file whose double quotes do not balance fails with a message naming where the open quote is,
rather than producing a malformed CSV. Blank lines are not records. A record whose date does not parse (by
datetime.fromisoformat, after trimming spaces) is left out and counted in `skipped`.

Without sort_by there is one pass, "filter": kept records go to the output as the pass goes, and
each input piece ends with a checkpoint {phase, offset, read, kept, skipped, samples}, offset
being the byte offset of the next unread record.

With sort_by it is an external merge sort in two phases:
- "split" keeps records in a buffer; once the buffer holds RUN_BYTES of records (checked at the
  end of each input piece) it is sorted stably and stored as scratch run i, in chunks of about
  CHUNK_BYTES, each chunk being length-prefixed (sort value, record) pairs. Checkpoints name the state at the
  last stored run, so a crash redoes at most one run; a pause (ctx.stopping()) stores the
  buffer as a run first, so a resumed job loses nothing.
- "merge" k-way merges the runs with heapq (ties go to the lower run, so equal keys keep their
  input order) into the output, checkpointing after every CHUNK_BYTES of output with how many
  records it took from each run.
If nothing was stored by the end of the split (the kept records fit in one buffer), the buffer is
sorted and written out directly, with no scratch at all.

The sort column is numeric when every non-empty value among the kept records parses as a finite
float; else it sorts as text, by code point (UTF-8 byte order). The split assumes numeric until a
value says otherwise; if runs were stored by then, it starts over as text (a numeric-looking
column with text far down is the only case that reads the input twice). Empty values (blank or
spaces) sort last in both directions.
"""

from __future__ import annotations

import csv
import heapq
import io
import re
import struct
from collections.abc import Iterator
from datetime import date, datetime
from itertools import repeat
from typing import Any

from jobs.context import KernelContext

#: Bytes of kept records sorted in memory per run: about 2.5x this in Python objects.
RUN_BYTES = 32 << 20
#: Bytes per scratch chunk of a run and per output chunk (also the output checkpoint interval).
CHUNK_BYTES = 1 << 20
#: A record longer than this means an unbalanced quote (or no newlines at all): the job fails
#: instead of buffering the rest of the file.
MAX_RECORD_BYTES = 16 << 20
#: Skipped records shown in the summary, as examples.
MAX_SAMPLES = 5
#: Distinct date values remembered; dates repeat a lot, datetimes rarely.
DATE_CACHE = 1 << 16

_UTF8_BOM = b"\xef\xbb\xbf"
_KEEP, _OUT, _BAD = 1, 0, -1
_INF = float("inf")
#: Byte-wise complement: for UTF-8 text (no 0x00 bytes) complemented keys plus 0xFF sort in reverse.
_INVERT = bytes(255 - i for i in range(256))
_EMPTY_LAST_ASC = b"\xff"        # no UTF-8 text starts with 0xFF, so this follows every string
_EMPTY_LAST_DESC = b"\xff\xff"   # complemented text starts below 0xFF, so this follows it too


class CsvInputError(ValueError):
    """The stored file cannot be read as CSV; the job fails with this message."""


class _Restart(Exception):
    """The sort column turned out to be text after runs were stored as numbers."""


def split_records(data: bytes, final: bool) -> tuple[list[bytes], int]:
    """Complete records at the start of `data` (terminators dropped) and the bytes they span.

    `data` starts at a record boundary; unless `final`, a trailing incomplete record is left over.
    """
    if b'"' not in data:
        end = len(data) if final else data.rfind(b"\n") + 1
        if end == 0:
            return [], 0
        body = data[:end] if end < len(data) else data
        if b"\r" in body:
            body = body.replace(b"\r\n", b"\n")
        lines = body.split(b"\n")
        if body.endswith(b"\n"):
            lines.pop()
        elif lines[-1].endswith(b"\r"):
            lines[-1] = lines[-1][:-1]
        return lines, end
    records: list[bytes] = []
    start = pos = 0
    odd = False
    for line in data.split(b"\n")[:-1]:  # each of these was followed by a newline
        pos += len(line) + 1
        if b'"' in line and line.count(b'"') & 1:
            odd = not odd
        if not odd:
            rec = data[start:pos - 1]
            records.append(rec[:-1] if rec.endswith(b"\r") else rec)
            start = pos
    if final and start < len(data):
        rec = data[start:]
        records.append(rec[:-1] if rec.endswith(b"\r") else rec)
        start = len(data)
    return records, start


def quoted_fields(rec: bytes) -> list[bytes]:
    """Fields of a record with quotes, unquoted by the csv module (plain commas if it gives up)."""
    try:
        row = next(csv.reader(io.StringIO(rec.decode("utf-8", "surrogateescape"), newline="")), [])
    except csv.Error:
        return rec.split(b",")
    return [f.encode("utf-8", "surrogateescape") for f in row]


#: A cell that may start with a formula character: at the start of the record or after a comma,
#: maybe inside an opening quote. A quoted comma matches too; neutralise() then finds nothing to do.
_MAYBE_FORMULA = re.compile(rb'(?:^|,)"?[=+\-@\t\r]')


def _formula(cell: bytes) -> bool:
    """Whether a spreadsheet would read this cell as a formula (OWASP's list), numbers excepted."""
    return cell[:1] in (b"=", b"+", b"-", b"@", b"\t", b"\r") and not (cell[:1] in b"+-" and is_number(cell))


def neutralise(rec: bytes) -> bytes:
    """The record with a single quote before each formula cell; the same bytes when there is none."""
    if _MAYBE_FORMULA.search(rec) is None:
        return rec
    if b'"' not in rec:
        cells = rec.split(b",")
        if not any(_formula(c) for c in cells):
            return rec
        return b",".join(b"'" + c if _formula(c) else c for c in cells)
    cells = quoted_fields(rec)
    if not any(_formula(c) for c in cells):
        return rec
    buf = io.StringIO()  # QUOTE_MINIMAL quotes a cell holding a character of the lineterminator; "" would be none
    csv.writer(buf, lineterminator="\r\n").writerow(
        ("'" + c.decode("utf-8", "surrogateescape")) if _formula(c) else c.decode("utf-8", "surrogateescape")
        for c in cells)
    return buf.getvalue()[:-2].encode("utf-8", "surrogateescape")


def join_records(records: list[bytes], eol: bytes) -> bytes:
    """Output records, neutralised, each ended by `eol`."""
    return eol.join(map(neutralise, records)) + eol


def parse_date(value: bytes) -> date | None:
    """The date a value names (an ISO date, or the date part of an ISO datetime), else None."""
    try:
        text = value.strip().decode("ascii")
        if len(text) <= 10:
            return date.fromisoformat(text)
        return datetime.fromisoformat(text).date()
    except ValueError:  # UnicodeDecodeError is a ValueError too
        return None


def is_number(value: bytes) -> bool:
    """Whether a non-empty value counts as numeric: a finite float."""
    try:
        x = float(value)
    except ValueError:
        return False
    return x - x == 0.0


def sort_keys(values: list[bytes], numeric: bool, descending: bool) -> list[Any]:
    """Ascending keys that order the values as asked, empty values last."""
    if numeric:
        if descending:
            return [-float(v) if v.strip() else _INF for v in values]
        return [float(v) if v.strip() else _INF for v in values]
    if descending:
        return [v.translate(_INVERT) + b"\xff" if v.strip() else _EMPTY_LAST_DESC for v in values]
    return [v if v.strip() else _EMPTY_LAST_ASC for v in values]


class _Dates:
    """Verdicts of date values against [lo, hi], cached since a file repeats its dates."""

    def __init__(self, lo: date | None, hi: date | None) -> None:
        self.lo, self.hi = lo, hi
        self.cache: dict[bytes, int] = {}

    def verdict(self, value: bytes) -> int:
        d = parse_date(value)
        if d is None:
            v = _BAD
        else:
            v = _KEEP if (self.lo is None or d >= self.lo) and (self.hi is None or d <= self.hi) else _OUT
        if len(self.cache) >= DATE_CACHE:
            self.cache.clear()
        self.cache[value] = v
        return v


def _header(ctx: KernelContext) -> tuple[bytes, list[str], int, bytes]:
    """The header record (BOM dropped), its column names, the offset of the first data record, and
    its line ending (CRLF unless it ends with a bare LF), which every output record gets."""
    buf = b""
    for piece in ctx.input_chunks(0):
        buf += piece
        if b"\n" in buf:
            end = _first_record_end(buf)
            if end is not None:
                break
        if len(buf) > MAX_RECORD_BYTES:
            raise CsvInputError(f"no header row in the first {MAX_RECORD_BYTES} bytes")
    else:
        end = len(buf)
    raw = buf[:end]
    eol = b"\n" if raw.endswith(b"\n") and not raw.endswith(b"\r\n") else b"\r\n"
    raw = raw.rstrip(b"\n")
    raw = raw[:-1] if raw.endswith(b"\r") else raw
    if raw.startswith(_UTF8_BOM):
        raw = raw[len(_UTF8_BOM):]
    if not raw:
        raise CsvInputError("the file has no header row")
    if raw.count(b'"') & 1:
        raise CsvInputError("the header row has a double quote that is never closed")
    try:
        columns = next(csv.reader(io.StringIO(raw.decode("utf-8"), newline="")))
    except (UnicodeDecodeError, csv.Error, StopIteration) as exc:
        raise CsvInputError(f"the header row cannot be read: {exc}") from None
    return raw, columns, end, eol


def _first_record_end(data: bytes) -> int | None:
    """Offset just past the first record's newline, or None if it is not complete yet."""
    pos = 0
    odd = False
    while True:
        nl = data.find(b"\n", pos)
        if nl < 0:
            return None
        if data.count(b'"', pos, nl) & 1:
            odd = not odd
        pos = nl + 1
        if not odd:
            return pos


def _blocks(ctx: KernelContext, offset: int, size: int) -> Iterator[tuple[list[bytes], int]]:
    """Complete records from `offset` on, one block per input piece, with the offset after each."""
    rest = b""
    pos = offset
    for piece in ctx.input_chunks(offset):
        data = rest + piece if rest else piece
        records, used = split_records(data, final=False)
        rest = data[used:]
        pos += used
        if len(rest) > MAX_RECORD_BYTES:
            raise CsvInputError(f"a record at byte {pos} is longer than {MAX_RECORD_BYTES} bytes "
                                "(an unbalanced double quote?)")
        yield records, pos
    if rest:
        if rest.count(b'"') & 1:
            raise CsvInputError(f"the record at byte {pos} has a double quote that is never closed "
                                "(the file ends inside a quoted field)")
        records, used = split_records(rest, final=True)
        pos += used
        yield records, pos
    if pos != size:
        raise CsvInputError(f"the stored input has {pos} bytes, not the {size} uploaded")


class _Output:
    """Kept records batched into output chunks of about CHUNK_BYTES whole records."""

    def __init__(self, ctx: KernelContext, eol: bytes) -> None:
        self.ctx, self.eol = ctx, eol
        self.records: list[bytes] = []
        self.bytes = 0

    def add(self, rec: bytes) -> None:
        self.records.append(rec)
        self.bytes += len(rec) + 2
        if self.bytes >= CHUNK_BYTES:
            self.flush()

    def flush(self) -> None:
        if self.records:
            self.ctx.output.write_text(join_records(self.records, self.eol), len(self.records))
            self.records = []
            self.bytes = 0


class _Job:
    """One run of the kernel: parsed params, the header, counters and the phase state."""

    def __init__(self, params: dict[str, Any], ctx: KernelContext) -> None:
        self.ctx = ctx
        self.size = int(params["size"])
        self.header, self.columns, self.body_start, self.eol = _header(ctx)
        self.date_index = self._index(params.get("date_column"))
        self.sort_index = self._index(params.get("sort_by"))
        lo, hi = params.get("from"), params.get("till")
        self.dates = _Dates(date.fromisoformat(lo) if lo else None, date.fromisoformat(hi) if hi else None)
        self.descending = bool(params.get("descending"))
        self.state: dict[str, Any] = {
            "phase": "split" if self.sort_index is not None else "filter",
            "offset": self.body_start, "read": 0, "kept": 0, "skipped": 0, "samples": [],
            "numeric": True, "runs": [], "kept_bytes": 0, "restarts": 0, "header": False,
        }
        if ctx.resume_state:
            self.state.update(ctx.resume_state)

    def _index(self, name: str | None) -> int | None:
        if not name:
            return None
        if name not in self.columns:
            raise CsvInputError(f"column {name!r} is not in the header {self.columns}")
        return self.columns.index(name)

    def total(self) -> int:
        return self.size * (2 if self.sort_index is not None else 1)

    def snapshot(self) -> dict[str, Any]:
        """A copy of the state for a checkpoint, so later samples do not leak into it."""
        return {**self.state, "samples": list(self.state["samples"])}

    def write_header(self) -> None:
        self.ctx.output.write_text(neutralise(self.header) + self.eol)
        self.state["header"] = True

    def keep(self, fields: list[bytes], read: int) -> bool:
        """Whether a record passes the date filter; counts and samples the ones whose date is bad."""
        i = self.date_index
        if i is None:
            return True
        value = fields[i] if i < len(fields) else b""
        verdict = self.dates.cache.get(value)
        if verdict is None:
            verdict = self.dates.verdict(value)
        if verdict == _BAD:
            self.state["skipped"] += 1
            if len(self.state["samples"]) < MAX_SAMPLES:
                shown = value.decode("utf-8", "replace")
                self.state["samples"].append({"row": read, "value": shown[:100]})
        return verdict == _KEEP

    def summary(self) -> dict[str, Any]:
        st = self.state
        out: dict[str, Any] = {"rows": st["kept"], "columns": self.columns, "skipped": st["skipped"]}
        if st["samples"]:
            out["skipped_samples"] = st["samples"]
        if self.sort_index is not None:
            out["sorted_as"] = "number" if st["numeric"] else "text"
        return out

    def stats(self) -> dict[str, Any]:
        st = self.state
        out = {"rows_read": st["read"], "rows": st["kept"], "skipped": st["skipped"]}
        if self.sort_index is not None:
            out.update(runs=len(st["runs"]), restarts=st["restarts"])
        return out

    # -- without sort_by ----------------------------------------------------------

    def filter_pass(self) -> None:
        """Kept records straight to the output, a checkpoint per input piece."""
        ctx, st = self.ctx, self.state
        out = _Output(ctx, self.eol)
        if not st["header"]:
            self.write_header()
        read, kept, date_index = st["read"], st["kept"], self.date_index
        for records, offset in _blocks(ctx, st["offset"], self.size):
            for rec in records:
                if not rec:
                    continue
                read += 1
                if date_index is not None:
                    fields = quoted_fields(rec) if b'"' in rec else rec.split(b",")
                    if not self.keep(fields, read):
                        continue
                kept += 1
                out.add(rec)
            out.flush()
            st.update(offset=offset, read=read, kept=kept)
            ctx.progress(offset, self.size)
            ctx.checkpoint(self.snapshot())

    # -- with sort_by: split ------------------------------------------------------

    def split_pass(self) -> list[tuple[bytes, bytes]]:
        """Runs of sorted records into scratch; returns the buffer left at the end of the input."""
        while True:
            try:
                return self._split()
            except _Restart:
                st = self.state
                st.update(offset=self.body_start, read=0, kept=0, skipped=0, samples=[], runs=[],
                          kept_bytes=0, restarts=st["restarts"] + 1, numeric=False)

    def _split(self) -> list[tuple[bytes, bytes]]:
        ctx, st = self.ctx, self.state
        durable = self.snapshot()
        buf: list[tuple[bytes, bytes]] = []
        buf_bytes = 0
        read, kept, kept_bytes = st["read"], st["kept"], st["kept_bytes"]
        numeric, date_index, sort_index = st["numeric"], self.date_index, self.sort_index
        assert sort_index is not None
        for records, offset in _blocks(ctx, st["offset"], self.size):
            for rec in records:
                if not rec:
                    continue
                read += 1
                fields = quoted_fields(rec) if b'"' in rec else rec.split(b",")
                if date_index is not None and not self.keep(fields, read):
                    continue
                value = fields[sort_index] if sort_index < len(fields) else b""
                if numeric and value.strip() and not is_number(value):
                    numeric = st["numeric"] = False
                    if st["runs"]:
                        raise _Restart()
                buf.append((value, rec))
                buf_bytes += len(rec)
                kept += 1
            st.update(offset=offset, read=read, kept=kept, numeric=numeric)
            if buf and (buf_bytes >= RUN_BYTES or ctx.stopping()):
                kept_bytes += buf_bytes
                self.store_run(buf)
                buf, buf_bytes = [], 0
                st["kept_bytes"] = kept_bytes
                durable = self.snapshot()
            elif not buf:
                durable = self.snapshot()
            ctx.progress(offset, self.total())
            ctx.checkpoint(durable)
        st["kept_bytes"] = kept_bytes + buf_bytes
        return buf

    def _sorted(self, buf: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """(sort value, record) pairs of a buffer in a stable sort order."""
        keys = sort_keys([v for v, _ in buf], self.state["numeric"], self.descending)
        order = sorted(range(len(buf)), key=keys.__getitem__)
        return [buf[i] for i in order]

    def store_run(self, buf: list[tuple[bytes, bytes]]) -> None:
        pairs = self._sorted(buf)
        counts: list[int] = []

        def chunks() -> Iterator[bytes]:
            i = 0
            while i < len(pairs):
                j, size = i, 0
                while j < len(pairs) and size < CHUNK_BYTES:
                    size += len(pairs[j][1])
                    j += 1
                counts.append(j - i)
                yield pack_pairs(pairs[i:j])
                i = j

        self.ctx.scratch.write(f"run{len(self.state['runs'])}", chunks())
        self.state["runs"] = [*self.state["runs"], counts]

    # -- with sort_by: output -----------------------------------------------------

    def write_sorted(self, buf: list[tuple[bytes, bytes]]) -> None:
        """Everything fit in one buffer: sort it and write it out, no scratch needed."""
        records = [rec for _, rec in self._sorted(buf)]
        self.write_header()
        out = _Output(self.ctx, self.eol)
        for rec in records:
            out.add(rec)
        out.flush()

    def merge_pass(self) -> None:
        """k-way merge of the stored runs into the output, a checkpoint per output chunk."""
        ctx, st = self.ctx, self.state
        if st["phase"] != "merge":
            st.update(phase="merge", consumed=[0] * len(st["runs"]), merged_bytes=0)
            self.write_header()
        consumed: list[int] = list(st["consumed"])
        merged_bytes = st["merged_bytes"]
        kept_bytes = max(st["kept_bytes"], 1)
        runs = [self._run_items(i, counts, consumed[i]) for i, counts in enumerate(st["runs"])]
        records: list[bytes] = []
        size = 0
        for _, i, rec in heapq.merge(*runs):
            consumed[i] += 1
            records.append(rec)
            size += len(rec)
            if size >= CHUNK_BYTES:
                ctx.output.write_text(join_records(records, self.eol), len(records))
                merged_bytes += size
                records, size = [], 0
                st.update(consumed=list(consumed), merged_bytes=merged_bytes)
                ctx.progress(self.size + self.size * merged_bytes // kept_bytes, self.total())
                ctx.checkpoint(self.snapshot())
        if records:
            ctx.output.write_text(join_records(records, self.eol), len(records))
        st.update(consumed=consumed, merged_bytes=merged_bytes + size)

    def _run_items(self, run: int, counts: list[int], skip: int) -> Iterator[tuple[Any, int, bytes]]:
        """(key, run, record) of a stored run from its `skip`-th record on, one chunk in memory."""
        for index, n in enumerate(counts):
            if skip >= n:
                skip -= n
                continue
            pairs = unpack_pairs(self.ctx.scratch.read(f"run{run}", index))
            if len(pairs) != n:
                raise CsvInputError(f"scratch run {run} chunk {index} holds {len(pairs)} records, not {n}")
            pairs = pairs[skip:]
            keys = sort_keys([v for v, _ in pairs], self.state["numeric"], self.descending)
            yield from zip(keys, repeat(run), [rec for _, rec in pairs], strict=False)
            skip = 0


_PAIR_HEADER = struct.Struct("<II")


def pack_pairs(pairs: list[tuple[bytes, bytes]]) -> bytes:
    """Raw length-prefixed bytes for a scratch chunk: client data never goes through marshal or pickle."""
    return b"".join(_PAIR_HEADER.pack(len(v), len(r)) + v + r for v, r in pairs)


def unpack_pairs(data: bytes) -> list[tuple[bytes, bytes]]:
    """Inverse of pack_pairs; the sort keys are recomputed from the values."""
    out, pos, view = [], 0, memoryview(data)
    while pos < len(data):
        lv, lr = _PAIR_HEADER.unpack_from(data, pos)
        pos += _PAIR_HEADER.size
        out.append((bytes(view[pos:pos + lv]), bytes(view[pos + lv:pos + lv + lr])))
        pos += lv + lr
    return out


def run(params: dict[str, Any], ctx: KernelContext) -> dict[str, Any]:
    """Filter and sort the uploaded CSV into a CSV result; returns row counts as stats."""
    job = _Job(params, ctx)
    st = job.state
    ctx.progress(st["offset"] if st["phase"] != "merge" else job.size, job.total())
    if st["phase"] == "filter":
        job.filter_pass()
    else:
        buf = job.split_pass() if st["phase"] == "split" else []
        if st["phase"] == "split" and not st["runs"]:
            job.write_sorted(buf)
        else:
            if buf:
                job.store_run(buf)
            job.merge_pass()
            ctx.scratch.clear()
    ctx.progress(job.total(), job.total())
    ctx.output.set_summary(job.summary())
    return job.stats()
