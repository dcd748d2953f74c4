"""CSV job: the kernel against a csv-module reference, upload validation, and end to end with real
workers, including a pause mid-file and a 200 MB file sorted in bounded memory."""

from __future__ import annotations

import csv
import hashlib
import io
import random
import threading
import time
import uuid
from datetime import date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis import Redis
from werkzeug.datastructures import FileStorage, MultiDict

from infra.processes import Api, Proc
from jobs.context import LocalContext, MemoryScratch, Stop
from jobs.errors import InvalidParams
from jobs.kernels import csv as kernel
from jobs.store.results import split_records
from jobs.types.csv import INPUT_PIECE_BYTES, CsvJob
from jobs.types.spec import Limits

# -- generated data and the reference ----------------------------------------------------------

NAMES = ["plain", "with, comma", 'with "quotes"', "two\nlines", "crlf\r\ninside", "ünïcödé", "Ωmega", "", " lead"]
BAD_DATES = ["", "n/a", "2024-02-30", "31/12/2024", "2024-1-5", "tomorrow"]


def make_rows(n: int, seed: int, empty_amounts: bool = True) -> list[list[str]]:
    """Rows with dates (some datetimes, some unparseable), numbers, and text that needs quoting."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        r = rng.random()
        if r < 0.06:
            day = rng.choice(BAD_DATES)
        else:
            d = date(2023, 1, 1).toordinal() + rng.randrange(730)
            day = date.fromordinal(d).isoformat()
            if r < 0.15:
                day += rng.choice(["T10:11:12", " 23:59:59", "T00:00:00Z", "T08:30:00+05:00"])
        amount = rng.choice([str(rng.randrange(-999, 1000)), f"{rng.uniform(-1000, 1000):.3f}", "1e3", "0"])
        if empty_amounts and rng.random() < 0.05:
            amount = rng.choice(["", " "])
        rows.append([str(i), day, amount, rng.choice(NAMES), rng.choice(["b", "a", "c", "aa", "B", ""])])
    return rows


def to_csv(header: list[str], rows: list[list[str]], terminator: str = "\r\n") -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator=terminator)
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue().encode()


HEADER = ["id", "day", "amount", "name", "tag"]


def ref_date(value: str) -> date | None:
    s = value.strip()
    try:
        return date.fromisoformat(s) if len(s) <= 10 else datetime.fromisoformat(s).date()
    except ValueError:
        return None


def ref_number(value: str) -> float | None:
    try:
        x = float(value)
    except ValueError:
        return None
    return x if abs(x) != float("inf") and x == x else None


def reference(data: bytes, date_column: str | None = None, lo: str | None = None, hi: str | None = None,
              sort_by: str | None = None, descending: bool = False) -> tuple[list[str], list[list[str]], int]:
    """The expected output rows, with the csv module and sorted(): the spec written plainly."""
    rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig"), newline="")))
    header, body = rows[0], [r for r in rows[1:] if r]
    kept, skipped = [], 0
    for row in body:
        if date_column:
            i = header.index(date_column)
            d = ref_date(row[i] if i < len(row) else "")
            if d is None:
                skipped += 1
                continue
            if (lo and d < date.fromisoformat(lo)) or (hi and d > date.fromisoformat(hi)):
                continue
        kept.append(row)
    if sort_by:
        i = header.index(sort_by)

        def value(row: list[str]) -> str:
            return row[i] if i < len(row) else ""

        full = [r for r in kept if value(r).strip()]
        empty = [r for r in kept if not value(r).strip()]
        numeric = all(ref_number(value(r)) is not None for r in full)
        full.sort(key=(lambda r: float(value(r))) if numeric else value, reverse=descending)
        kept = full + empty
    return [ref_cell(c) for c in header], [[ref_cell(c) for c in row] for row in kept], skipped


def ref_cell(cell: str) -> str:
    """OWASP's CSV-injection defence: a quote before a formula cell, numbers exempt."""
    if cell[:1] in ("=", "+", "-", "@", "\t", "\r") and not (cell[:1] in "+-" and ref_number(cell) is not None):
        return "'" + cell
    return cell


def parse(output: bytes) -> tuple[list[str], list[list[str]]]:
    rows = list(csv.reader(io.StringIO(output.decode(), newline="")))
    return rows[0], rows[1:]


def run_kernel(data: bytes, **params: Any) -> LocalContext:
    ctx = LocalContext(data)
    kernel.run({"size": len(data), **params}, ctx)
    return ctx


def check(data: bytes, **params: Any) -> LocalContext:
    """Run the kernel and compare rows, skipped count and summary with the reference."""
    ctx = run_kernel(data, **params)
    header, rows, skipped = reference(data, params.get("date_column"), params.get("from"), params.get("till"),
                                      params.get("sort_by"), params.get("descending", False))
    got_header, got_rows = parse(bytes(ctx.output.text))
    assert got_header == header
    assert got_rows == rows
    assert ctx.output.summary["rows"] == len(rows) == ctx.output.text_items
    assert ctx.output.summary["skipped"] == skipped
    assert ctx.output.summary["columns"] == [c[1:] if c.startswith("'") else c for c in header]
    return ctx


# -- the kernel ---------------------------------------------------------------------------------

def test_filter_bounds_are_inclusive_and_datetimes_count_by_their_date() -> None:
    rows = [["1", "2024-02-29"], ["2", "2024-03-01"], ["3", "2024-03-31T23:59:59"], ["4", "2024-04-01"],
            ["5", "2024-03-15 12:00:00+02:00"], ["6", "2024-03-01T00:00:00Z"], ["7", " 2024-03-02 "]]
    data = to_csv(["id", "when"], rows)
    ctx = check(data, date_column="when", **{"from": "2024-03-01"}, till="2024-03-31")
    assert [r[0] for r in parse(bytes(ctx.output.text))[1]] == ["2", "3", "5", "6", "7"]
    assert ctx.output.summary["skipped"] == 0
    only_from = run_kernel(data, date_column="when", **{"from": "2024-03-31"})
    assert [r[0] for r in parse(bytes(only_from.output.text))[1]] == ["3", "4"]


def test_unparseable_dates_are_counted_and_reported_not_dropped_silently() -> None:
    rows = [["1", "2024-01-05"], ["2", "not a date"], ["3", ""], ["4", "2024-02-30"], ["5", "2024-01-06"], ["6"]]
    data = to_csv(["id", "when"], rows)
    ctx = check(data, date_column="when", **{"from": "2024-01-01"}, till="2024-12-31")
    summary = ctx.output.summary
    assert summary["rows"] == 2 and summary["skipped"] == 4
    assert summary["skipped_samples"] == [{"row": 2, "value": "not a date"}, {"row": 3, "value": ""},
                                          {"row": 4, "value": "2024-02-30"}, {"row": 6, "value": ""}]
    # A date column without bounds keeps every row whose date parses.
    assert run_kernel(data, date_column="when").output.summary["rows"] == 2


def test_numeric_columns_sort_as_numbers_and_text_columns_by_code_point() -> None:
    data = to_csv(["n", "s"], [["10", "b"], ["9", "B"], ["", "a"], ["-1.5", "é"], ["1e2", ""], ["  ", "aa"]])
    ctx = check(data, sort_by="n")
    assert [r[0] for r in parse(bytes(ctx.output.text))[1]] == ["-1.5", "9", "10", "1e2", "", "  "]
    assert ctx.output.summary["sorted_as"] == "number"
    ctx = check(data, sort_by="s")
    assert [r[1] for r in parse(bytes(ctx.output.text))[1]] == ["B", "a", "aa", "b", "é", ""]
    assert ctx.output.summary["sorted_as"] == "text"
    # One value that is not a number makes the whole column text; NaN and inf are not numbers.
    for odd in ("x", "nan", "inf"):
        data = to_csv(["n"], [["10"], ["9"], [odd], ["100"]])
        ctx = check(data, sort_by="n")
        assert ctx.output.summary["sorted_as"] == "text"


def test_descending_keeps_equal_keys_in_input_order_and_empties_last() -> None:
    rows = [[str(i), v] for i, v in enumerate(["2", "1", "2", "", "3", "1", "", "2"])]
    data = to_csv(["id", "v"], rows)
    ctx = check(data, sort_by="v", descending=True)
    assert [r[0] for r in parse(bytes(ctx.output.text))[1]] == ["4", "0", "2", "7", "1", "5", "3", "6"]
    rows = [[str(i), v] for i, v in enumerate(["b", "ba", "a", "b", "", "é"])]
    ctx = check(to_csv(["id", "v"], rows), sort_by="v", descending=True)
    assert [r[1] for r in parse(bytes(ctx.output.text))[1]] == ["é", "ba", "b", "b", "a", ""]


@pytest.mark.parametrize("seed", range(4))
def test_generated_files_match_the_reference(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Random rows through every option combination, with runs small enough to merge several."""
    monkeypatch.setattr(kernel, "RUN_BYTES", 20_000)
    monkeypatch.setattr(kernel, "CHUNK_BYTES", 3_000)
    data = to_csv(HEADER, make_rows(1500, seed), terminator="\r\n" if seed % 2 else "\n")
    if seed == 3:
        data = b"\xef\xbb\xbf" + data.rstrip(b"\n")  # a BOM, and no newline after the last record
    check(data)
    check(data, date_column="day", **{"from": "2023-06-01"}, till="2024-06-30")
    ctx = check(data, date_column="day", **{"from": "2023-03-01"}, sort_by="amount", descending=bool(seed % 2))
    assert ctx.output.summary["sorted_as"] == "number"
    check(data, sort_by="name")
    check(data, sort_by="tag", descending=True)
    check(data, sort_by="id", till="2024-01-01", date_column="day")


#: Numbers and dates are ASCII by definition (float() and fromisoformat() of the raw bytes), so the
#: alphabet keeps other scripts to letters that cannot pass for digits or spaces.
cell = st.one_of(st.sampled_from(["", " ", "1", "-2.5", "10", "1e3", "2024-01-01", "2024-01-01T05:00:00",
                                  "a,b", 'q"q', "x\ny", "é", "nan", "2024-02-30"]),
                 st.text(alphabet=list(' ,"\n\tabAB-+.e0129:TZé中'), max_size=6))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(st.lists(cell, min_size=0, max_size=4), max_size=40), descending=st.booleans(),
       sort_col=st.sampled_from(["a", "b", None]), filtered=st.booleans())
def test_any_table_matches_the_reference(rows: list[list[str]], descending: bool, sort_col: str | None,
                                         filtered: bool) -> None:
    data = to_csv(["a", "b", "c"], rows)
    params: dict[str, Any] = {"sort_by": sort_col, "descending": descending}
    if filtered:
        params.update(date_column="b", till="2024-06-01")
    old = kernel.RUN_BYTES
    kernel.RUN_BYTES = 50
    try:
        check(data, **params)
    finally:
        kernel.RUN_BYTES = old


def run_in_stops(data: bytes, params: dict[str, Any], stop_after: int, chunk_bytes: int) -> tuple[bytes, int]:
    """Run with a context that stops after every `stop_after` checkpoints, resuming from the saved
    state each time as the runner does (the output of each run kept, scratch shared)."""
    scratch = MemoryScratch()
    out = b""
    state = None
    for runs in range(1, 10_000):
        ctx = LocalContext(data, resume_state=state, stop_after=stop_after, chunk_bytes=chunk_bytes, scratch=scratch)
        try:
            kernel.run({"size": len(data), **params}, ctx)
        except Stop:
            out += bytes(ctx.output.text)
            assert ctx.saved_state is not None
            state = ctx.saved_state
            continue
        return out + bytes(ctx.output.text), runs
    raise AssertionError("never finished")


@pytest.mark.parametrize("params", [
    {},
    {"date_column": "day", "from": "2023-05-01", "till": "2024-05-01"},
    {"date_column": "day", "from": "2023-05-01", "sort_by": "amount", "descending": True},
    {"sort_by": "name"},
])
def test_stop_after_k_checkpoints_and_resume_gives_the_same_output(params: dict[str, Any],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernel, "RUN_BYTES", 40_000)
    monkeypatch.setattr(kernel, "CHUNK_BYTES", 5_000)
    data = to_csv(HEADER, make_rows(3000, 7))
    whole = run_kernel(data, **params)
    for stop_after, chunk in [(1, 9_000), (2, 4_096), (3, 10_000)]:
        out, runs = run_in_stops(data, params, stop_after, chunk)
        assert runs > 3, runs
        assert out == bytes(whole.output.text), (stop_after, chunk)


def test_a_pause_during_the_split_stores_the_buffer_so_nothing_is_read_twice() -> None:
    data = to_csv(HEADER, make_rows(2000, 11, empty_amounts=False))
    params = {"size": len(data), "sort_by": "amount"}
    first = LocalContext(data, stop_after=3, chunk_bytes=10_000)
    with pytest.raises(Stop):
        kernel.run(params, first)
    state = first.saved_state
    assert state is not None and state["phase"] == "split" and len(state["runs"]) == 1
    assert state["offset"] > 10_000 and state["read"] > 0, "the pause keeps the rows read so far"
    second = LocalContext(data, resume_state=state, chunk_bytes=10_000, scratch=first.scratch)
    stats = kernel.run(params, second)
    assert stats["runs"] == 2 and stats["rows_read"] == 2000
    assert bytes(second.output.text) == bytes(run_kernel(data, sort_by="amount").output.text)
    assert second.scratch.lists == {}, "the runs are dropped at the end"


def test_a_text_value_late_in_a_numeric_looking_column_restarts_the_split_as_text(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernel, "RUN_BYTES", 2_000)
    rows = [[str(i), str(i * 7 % 101)] for i in range(600)] + [["600", "oops"]]
    data = to_csv(["id", "n"], rows)
    ctx = LocalContext(data, chunk_bytes=500)
    stats = kernel.run({"size": len(data), "sort_by": "n"}, ctx)
    assert stats["restarts"] == 1 and stats["rows_read"] == 601 and stats["runs"] > 1
    assert ctx.output.summary["sorted_as"] == "text"
    assert parse(bytes(ctx.output.text))[1] == reference(data, sort_by="n")[1]


def test_progress_is_bytes_and_reaches_the_total() -> None:
    data = to_csv(HEADER, make_rows(500, 3))
    ctx = run_kernel(data, sort_by="amount")
    done, total = ctx.progress_calls[-1]
    assert done == total == 2 * len(data)
    assert all(d <= t for d, t in ctx.progress_calls)


@pytest.mark.parametrize("data, msg", [
    (b"", "no header row"),
    (b"\n\na,b\n", "no header row"),
    (b'a,"b\n' + b"x" * 100, "no header row in the first 50 bytes"),
    (b'a,b\n1,"x\n' + b"y" * 100, "longer than 50 bytes"),
])
def test_unreadable_input_fails_with_a_clear_message(data: bytes, msg: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernel, "MAX_RECORD_BYTES", 50)
    with pytest.raises(kernel.CsvInputError, match=msg):
        kernel.run({"size": len(data), "sort_by": "a"}, LocalContext(data, chunk_bytes=16))


def test_split_records_pages_keep_quoted_newlines_inside_their_record() -> None:
    chunk = b'1,"a\r\nb"\r\n2,x\r\n3,"""q"""\r\n'
    assert split_records(chunk) == [b'1,"a\r\nb"\r\n', b"2,x\r\n", b'3,"""q"""\r\n']


# -- validation through the Flask app ----------------------------------------------------------

def post_csv(client: Any, data: bytes | None, filename: str = "data.csv", **fields: str) -> Any:
    form: dict[str, Any] = dict(fields)
    if data is not None:
        form["file"] = (io.BytesIO(data), filename)
    return client.post("/api/v1/csv", data=form, content_type="multipart/form-data")


def problem_locs(resp: Any, status: int = 422) -> list[list[Any]]:
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.mimetype == "application/problem+json"
    return [e["loc"] for e in resp.get_json().get("errors", [])]


GOOD = b"id,day,amount\n1,2024-01-02,3.5\n2,2024-01-03,1\n"


def test_json_is_415(client: Any) -> None:
    resp = client.post("/api/v1/csv", json={"file": "id\n1\n"})
    assert resp.status_code == 415
    assert "multipart/form-data" in resp.headers["Accept-Post"]


@pytest.mark.parametrize("data, fields, loc, fragment", [
    (None, {}, ["body", "file"], "required"),
    (b"", {}, ["body", "file"], "empty"),
    (b"\xef\xbb\xbf", {}, ["body", "file"], "empty"),
    (b"\n\nid,x\n1,2\n", {}, ["body", "file"], "no header"),
    (b"1,2024-01-01,3\n2,2024-01-02,4\n", {}, ["body", "file"], "looks like data"),
    (b"id,caf\xe9\n1,2\n", {}, ["body", "file"], "UTF-8"),
    (b"id,name\n" + b"1,abc\n" * 50_000 + b"2,caf\xe9\n", {}, ["body", "file"], "offset 300013"),
    (b"id,name\n1,\xe2\x82", {}, ["body", "file"], "UTF-8"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", {}, ["body", "file"], "UTF-8"),
    (b"PK\x03\x04\x14\x00\x00\x00", {}, ["body", "file"], "NUL"),
    (b"id,name\n1,a\x00b\n", {}, ["body", "file"], "NUL"),
    (b'id,"na"me\n1,2\n', {}, ["body", "file"], "not a CSV"),
    (GOOD, {"date_column": "when", "from": "2024-01-01"}, ["body", "date_column"], "not in the header"),
    (GOOD, {"sort_by": "nope"}, ["body", "sort_by"], "not in the header"),
    (b"id,id\n1,2\n", {"sort_by": "id"}, ["body", "sort_by"], "2 times"),
    (GOOD, {"date_column": "day", "from": "01/02/2024"}, ["body", "from"], "YYYY-MM-DD"),
    (GOOD, {"date_column": "day", "till": "2024-02-30"}, ["body", "till"], "YYYY-MM-DD"),
    (GOOD, {"date_column": "day", "from": "2024-01-01T00:00:00"}, ["body", "from"], "YYYY-MM-DD"),
    (GOOD, {"date_column": "day", "from": "2024-03-01", "till": "2024-02-01"}, ["body", "from"], "after till"),
    (GOOD, {"from": "2024-03-01"}, ["body", "date_column"], "required"),
    (GOOD, {"till": "2024-03-01"}, ["body", "date_column"], "required"),
    (GOOD, {"sort_by": "id", "descending": "maybe"}, ["body", "descending"], "true, false"),
    (GOOD, {"colour": "red"}, ["body", "colour"], "unexpected"),
])
def test_validation_errors_name_the_field(client: Any, data: bytes | None, fields: dict[str, str],
                                          loc: list[str], fragment: str) -> None:
    resp = post_csv(client, data, **fields)
    assert loc in problem_locs(resp)
    msgs = " ".join(e["msg"] for e in resp.get_json()["errors"] if e["loc"] == loc)
    assert fragment in msgs, msgs


def test_several_errors_come_together(client: Any) -> None:
    resp = post_csv(client, GOOD, date_column="nope", sort_by="also_nope", **{"from": "x"})
    locs = problem_locs(resp)
    assert ["body", "from"] in locs and ["body", "date_column"] in locs and ["body", "sort_by"] in locs


def parse_form(data: bytes, **fields: str) -> Any:
    files = MultiDict({"file": FileStorage(stream=io.BytesIO(data), filename="big.csv")})
    return CsvJob().parse_form(MultiDict(fields), files, Limits())


def test_the_whole_file_is_checked_for_utf8_not_just_its_first_bytes() -> None:
    """Past the first MiB, the hashing pass finds bad bytes; characters straddling pieces are fine."""
    row = "1,caf\u00e9\n".encode()  # 9 bytes, e-acute being bytes 5 and 6
    header = b"id,name_x\n"  # 10 bytes, so an e-acute straddles the first piece boundary
    assert (INPUT_PIECE_BYTES - len(header) - 6) % len(row) == 0
    body = header + row * ((INPUT_PIECE_BYTES * 2) // len(row))
    sub = parse_form(body, sort_by="name_x")
    assert sub.params["size"] == len(body) and sub.params["sha256"] == hashlib.sha256(body).hexdigest()
    assert b"".join(sub.iter_input()) == body
    with pytest.raises(InvalidParams) as exc:
        parse_form(body + b"2,caf\xe9\n")
    assert exc.value.errors[0]["loc"] == ["body", "file"]
    assert f"offset {len(body) + 5}" in exc.value.errors[0]["msg"]
    with pytest.raises(InvalidParams, match="NUL byte at offset"):
        parse_form(body + b"2,\x00\n")


def test_a_body_over_max_body_bytes_is_413(client: Any) -> None:
    resp = post_csv(client, b"id\n" + b"1\n" * (600 * 1024))  # TEST_LIMITS: 1 MiB
    assert resp.status_code == 413


def test_identical_uploads_share_a_job_whatever_the_filename(client: Any) -> None:
    data = b"id,day,n\n" + f"{uuid.uuid4().hex},2024-01-01,1\n".encode()
    first = post_csv(client, data, "a.csv", sort_by="n", date_column="day", **{"from": "2024-01-01"})
    assert first.status_code == 202, first.get_data(as_text=True)
    job = first.get_json()
    assert job["type"] == "csv" and job["pausable"] is True
    params = job["params"]
    assert params["sha256"] == hashlib.sha256(data).hexdigest() and params["size"] == len(data)
    assert params["filename"] == "a.csv" and params["from"] == "2024-01-01" and params["till"] is None
    # Empty values are absent (browser forms send every field), so this is the same request.
    again = post_csv(client, data, "b.csv", sort_by="n", date_column="day", till="", descending="false",
                     **{"from": "2024-01-01"})
    assert again.status_code in (200, 202)
    assert again.get_json()["id"] == job["id"]
    other = post_csv(client, data, "a.csv", sort_by="n", descending="true")
    assert other.status_code in (200, 202) and other.get_json()["id"] != job["id"]


# -- end to end: real gunicorn, real workers ---------------------------------------------------

def submit_file(api: Api, path: Path, wait: int = 0, **fields: str) -> dict[str, Any]:
    headers = {"Prefer": f"wait={wait}"} if wait else {}
    with open(path, "rb") as fh:
        r = api.post("/api/v1/csv", files={"file": (path.name, fh, "text/csv")}, data=fields, headers=headers,
                     timeout=300)
    assert r.status_code in (200, 202), r.text
    return r.json()


def download(api: Api, job: dict[str, Any], query: str = "") -> Any:
    r = api.get(job["result_url"] + query, timeout=300)
    assert r.status_code == 200, r.text
    return r


def expected_bytes(header: list[str], rows: list[list[str]]) -> bytes:
    """What the job writes for input made by csv.writer: the same records, CRLF-terminated."""
    return to_csv(header, rows)


@pytest.mark.e2e
def test_upload_filter_sort_and_download(api: Api, tmp_path: Path) -> None:
    rows = make_rows(20_000, random.randrange(10**9))
    data = to_csv(HEADER, rows)
    path = tmp_path / "sales.csv"
    path.write_bytes(data)
    opts = {"date_column": "day", "from": "2023-04-01", "till": "2024-09-30", "sort_by": "amount",
            "descending": "true"}
    job = submit_file(api, path, wait=30, **opts)
    assert job["status"] == "finished", job
    header, expected, skipped = reference(data, "day", "2023-04-01", "2024-09-30", "amount", True)
    assert job["result"]["rows"] == len(expected) and job["result"]["skipped"] == skipped > 0
    assert job["result"]["columns"] == HEADER and job["result"]["sorted_as"] == "number"
    assert job["stats"]["rows_read"] == len(rows)
    r = download(api, job)
    assert r.headers["Content-Type"].startswith("text/csv")
    assert r.headers["Content-Disposition"].startswith("attachment")
    assert r.content == expected_bytes(header, expected)
    assert int(r.headers["Content-Length"]) == len(r.content)
    assert download(api, job, "?format=json").json() == job["result"]
    page = download(api, job, "?offset=100&limit=50")
    assert parse(page.content) == (header, expected[100:150])
    # The same file again, under another name: answered from the cache.
    path2 = tmp_path / "copy.csv"
    path2.write_bytes(data)
    again = submit_file(api, path2, **opts)
    assert again["id"] == job["id"] and again["cached"] is True
    # No options: the file comes back as it was.
    plain = submit_file(api, path, wait=30)
    assert download(api, plain).content == data


def write_big_csv(path: Path, target_bytes: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """A generated file of about target_bytes: (days as int ordinals, amounts in cents, line offsets).

    Lines are id,day,amount,category,note with ~75 bytes each; no quoting, so expected output can be
    cut from the file by offsets instead of parsing 200 MB with the csv module.
    """
    rng = np.random.default_rng(seed)
    n = target_bytes // 75 + 1000
    days = rng.integers(0, 5 * 365, n)
    amount = rng.integers(-10_000_000, 10_000_000, n)
    cats = [f"cat{i:02d}" for i in range(20)]
    notes = ["".join(chr(97 + (j * 7 + k) % 26) for k in range(20 + j % 40)) for j in range(997)]
    day_str = np.datetime_as_string(np.datetime64("2020-01-01") + days).tolist()
    ci, ni = rng.integers(0, 20, n).tolist(), rng.integers(0, 997, n).tolist()
    tag = uuid.uuid4().hex[:8]  # a fresh file each session, so nothing is answered from the cache
    offsets = []
    pos = 0
    with open(path, "wb") as fh:
        head = f"id,day,amount,category,note_{tag}\r\n".encode()
        fh.write(head)
        pos = len(head)
        step = 100_000
        for s in range(0, n, step):
            lines = [f"{i},{d},{a / 100:.2f},{cats[c]},{notes[m]}\r\n".encode()
                     for i, d, a, c, m in zip(range(s, s + step), day_str[s:s + step], amount[s:s + step].tolist(),
                                              ci[s:s + step], ni[s:s + step], strict=False)]
            for line in lines:
                offsets.append(pos)
                pos += len(line)
            fh.write(b"".join(lines))
    offsets.append(pos)
    return days, amount, offsets


class RssPeaks(threading.Thread):
    """Samples the RSS of the web and worker process trees, keeping the peaks."""

    def __init__(self, trees: dict[str, Proc]) -> None:
        super().__init__(daemon=True)
        self.trees = trees
        self.stop_event = threading.Event()
        self.peak_process = {name: 0 for name in trees}
        self.peak_tree = {name: 0 for name in trees}
        self.baseline_tree = {name: self._sample()[name][1] for name in trees}

    def _sample(self) -> dict[str, tuple[int, int]]:
        out = {}
        for name, proc in self.trees.items():
            sizes = []
            for pid in proc.session():
                try:
                    sizes.append(psutil.Process(pid).memory_info().rss)
                except psutil.Error:
                    continue
            out[name] = (max(sizes, default=0), sum(sizes))
        return out

    def run(self) -> None:
        while not self.stop_event.wait(0.1):
            for name, (biggest, total) in self._sample().items():
                self.peak_process[name] = max(self.peak_process[name], biggest)
                self.peak_tree[name] = max(self.peak_tree[name], total)

    def stop(self) -> None:
        self.stop_event.set()
        self.join()


def wait_progress(api: Api, job_id: str, percent: float, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = api.get(f"/api/v1/jobs/{job_id}").json()
        if job["status"] != "queued" and ((job["progress"] or {}).get("percent", 0) >= percent
                                          or job["status"] in ("finished", "failed")):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.03)


@pytest.mark.e2e
def test_pause_mid_file_and_resume_gives_the_uninterrupted_output(api: Api, tmp_path: Path,
                                                                 redis_conn: Redis) -> None:
    path = tmp_path / "pause.csv"
    days, amount, offsets = write_big_csv(path, 40 << 20, random.randrange(10**9))
    opts = {"date_column": "day", "from": "2021-01-01", "till": "2023-12-31", "sort_by": "amount"}
    job = submit_file(api, path, **opts)
    running = wait_progress(api, job["id"], 10)
    assert running["status"] == "started", "the pause must land mid-file"
    r = api.post(f"/api/v1/jobs/{job['id']}/pause")
    assert r.status_code == 200, r.text
    paused = r.json()
    assert paused["status"] == "paused"
    assert 0 < paused["progress"]["percent"] < 100
    time.sleep(0.5)
    assert api.get(f"/api/v1/jobs/{job['id']}").json()["progress"] == paused["progress"]
    assert api.post(f"/api/v1/jobs/{job['id']}/resume").status_code == 202
    lowest = None  # the least progress seen while the resumed run works: not back to zero
    deadline = time.monotonic() + 180
    while (done := api.get(f"/api/v1/jobs/{job['id']}").json())["status"] in ("queued", "started"):
        if done["status"] == "started":
            seen = done["progress"]["done"]
            lowest = seen if lowest is None else min(lowest, seen)
        assert time.monotonic() < deadline, done
        time.sleep(0.02)
    assert lowest is None or lowest >= paused["progress"]["done"], "resume continues from the checkpoint"
    assert done["status"] == "finished", done
    assert done["runs"] == 2 and done["stats"]["runs"] >= 2, "the pause stored the rows read so far as a run"
    assert not redis_conn.keys(f"crunch:job:{job['id']}:scratch*"), "the runs are dropped once finished"
    # The uninterrupted output: kept rows in a stable sort by amount, cut from the file itself.
    data = path.read_bytes()
    lo = (date(2021, 1, 1) - date(2020, 1, 1)).days
    hi = (date(2023, 12, 31) - date(2020, 1, 1)).days
    kept = np.flatnonzero((days >= lo) & (days <= hi))
    order = kept[np.argsort(amount[kept], kind="stable")]
    expected = hashlib.sha256(data[:offsets[0]])
    for i in order.tolist():
        expected.update(data[offsets[i]:offsets[i + 1]])
    got = download(api, done)
    assert done["result"]["rows"] == len(order)
    assert hashlib.sha256(got.content).hexdigest() == expected.hexdigest()


@pytest.mark.e2e
def test_cancel_mid_file_drops_the_scratch_runs(api: Api, tmp_path: Path, redis_conn: Redis) -> None:
    path = tmp_path / "cancel.csv"
    write_big_csv(path, 40 << 20, random.randrange(10**9))  # over RUN_BYTES: the split stores a run
    job = submit_file(api, path, sort_by="category", descending="true")
    deadline = time.monotonic() + 60
    while not redis_conn.keys(f"crunch:job:{job['id']}:scratch*"):
        assert time.monotonic() < deadline, api.get(f"/api/v1/jobs/{job['id']}").json()
        time.sleep(0.01)
    r = api.post(f"/api/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "canceled", r.text
    assert api.get(job["result_url"]).status_code == 409
    # Dropped by the worker, not expired (their TTL is a day): by the horse at its next checkpoint, or by
    # its worker's main process once a horse stuck in a long step was killed. Seconds at load 15.
    deadline = time.monotonic() + 30
    while redis_conn.keys(f"crunch:job:{job['id']}:scratch*"):
        assert time.monotonic() < deadline, "the canceled job's runs are dropped"
        time.sleep(0.05)


@pytest.mark.e2e
@pytest.mark.slow
def test_a_200_mb_file_end_to_end_in_bounded_memory(api: Api, web: Proc, workers: Proc, tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    days, amount, offsets = write_big_csv(path, 200 << 20, random.randrange(10**9))
    size = path.stat().st_size
    peaks = RssPeaks({"web": web, "workers": workers})
    peaks.start()
    t0 = time.perf_counter()
    try:
        opts = {"date_column": "day", "from": "2020-07-01", "till": "2024-06-30", "sort_by": "amount",
                "descending": "true"}
        job = submit_file(api, path, **opts)
        t_upload = time.perf_counter() - t0
        done = api.wait_done(job["id"], timeout=600)
        t_job = time.perf_counter() - t0
        assert done["status"] == "finished", done
        digest = hashlib.sha256()
        got_bytes = 0
        r = api.s.get(api.base + done["result_url"], stream=True, timeout=300)
        assert r.status_code == 200
        for piece in r.iter_content(1 << 20):
            digest.update(piece)
            got_bytes += len(piece)
        t_total = time.perf_counter() - t0
    finally:
        peaks.stop()
    lo = (date(2020, 7, 1) - date(2020, 1, 1)).days
    hi = (date(2024, 6, 30) - date(2020, 1, 1)).days
    kept = np.flatnonzero((days >= lo) & (days <= hi))
    order = kept[np.argsort(-amount[kept], kind="stable")]
    with open(path, "rb") as fh:
        data = fh.read()
    expected = hashlib.sha256(data[:offsets[0]])
    for i in order.tolist():
        expected.update(data[offsets[i]:offsets[i + 1]])
    del data
    mb = 1 << 20
    print(f"\n200 MB csv: {size / mb:.0f} MiB, {len(days)} rows, {len(order)} kept, {done['stats']['runs']} runs; "
          f"upload {t_upload:.1f} s, finished {t_job:.1f} s (run {done['duration_ms'] / 1000:.1f} s), "
          f"downloaded {t_total:.1f} s; peak RSS web process {peaks.peak_process['web'] / mb:.0f} MiB "
          f"(tree {peaks.peak_tree['web'] / mb:.0f}, idle {peaks.baseline_tree['web'] / mb:.0f}), "
          f"worker process {peaks.peak_process['workers'] / mb:.0f} MiB "
          f"(tree {peaks.peak_tree['workers'] / mb:.0f}, idle {peaks.baseline_tree['workers'] / mb:.0f})")
    assert done["result"]["rows"] == len(order) and done["result"]["skipped"] == 0
    assert digest.hexdigest() == expected.hexdigest()
    assert done["stats"]["runs"] >= 2, "an external sort, not one buffer"
    assert peaks.peak_process["workers"] < 1500 * mb
    assert peaks.peak_process["web"] < 600 * mb
