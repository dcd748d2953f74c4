"""The csv job type: an uploaded CSV file, filtered by a date column and sorted by a column.

Multipart only (JSON gets 415). The web process never holds the file whole: werkzeug spools a
big upload to a temporary file, parse_form reads it once in INPUT_PIECE_BYTES pieces to hash it
(sha256) and check that all of it is UTF-8 without NUL bytes, and the Submission's input_chunks
reads it again, piece by piece, only when the service stores a new job's input in Redis.

The job's identity is the file's hash plus the canonical options, so the same file uploaded
again (under any name) with the same options is answered from the cache or joins the job in
flight. Empty form values count as absent, so browser forms can send every field.

The job resource's params are {"filename", "size", "sha256", "date_column", "from", "till",
"sort_by", "descending"}, the options being null when not given.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import re
from collections.abc import Callable, Iterator
from datetime import date
from typing import IO, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from jobs.errors import InvalidParams
from jobs.types.form import STRIPPED, FormField, blank_value, stripped_words
from jobs.types.spec import DEFAULT_QUEUE, FAST_QUEUE, JobSpec, Limits, Submission, canonical_json

#: Bytes read per piece while hashing and while streaming into Redis.
INPUT_PIECE_BYTES = 4 << 20
#: The header row must end within this many bytes.
HEADER_MAX_BYTES = 1 << 20
#: Files up to this size filter and sort in milliseconds, so they skip the fork.
FAST_BYTES = 1 << 20
#: Rough kernel throughput, for Retry-After.
BYTES_PER_SECOND = 10 << 20

_UTF8_BOM = b"\xef\xbb\xbf"
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_TRUE = frozenset(("true", "1", "on", "yes"))
_FALSE = frozenset(("false", "0", "off", "no"))
_OPTIONS = ("date_column", "from", "till", "sort_by", "descending")
#: What the form schema says of a column name (with the whitespace the server strips around it):
#: no control characters. Of a date: format "date" (RFC 3339's full-date) from year 0001, since date()
#: has no year 0.
_NAME_END = f"[^{STRIPPED}\\x00-\\x08\\x0e-\\x1f\\x7f]"
COLUMN_PATTERN = f"^[{STRIPPED}]*{_NAME_END}(?:[^\\x00-\\x08\\x0a-\\x1f\\x7f]*{_NAME_END})?[{STRIPPED}]*$"
DATE_PATTERN = r"^(?:[0-9]{3}[1-9]|[0-9]{2}[1-9][0-9]|[0-9][1-9][0-9]{2}|[1-9][0-9]{3})-[0-9]{2}-[0-9]{2}$"
#: Control characters that never appear in text CSV (tab, CR and LF excepted).
_BINARY = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f]")


class CsvParams(BaseModel):
    """The form fields of POST /api/v1/csv besides `file` (documentation; parse_form checks them)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    date_column: str | None = Field(None, description="Column holding ISO dates or datetimes to filter on.")
    from_: date | None = Field(None, alias="from", description="First date kept (YYYY-MM-DD, inclusive).")
    till: date | None = Field(None, description="Last date kept (YYYY-MM-DD, inclusive).")
    sort_by: str | None = Field(None, description="Column to sort by: numerically if every non-empty "
                                "value is a number, else as text.")
    descending: bool = Field(False, description="Largest first (needs sort_by).")


def _looks_like_data(value: str) -> bool:
    """Whether a header field is a number or a date, as data rows hold and column names do not."""
    value = value.strip()
    if not value:
        return False
    try:
        float(value)
        return True
    except ValueError:
        pass
    try:
        date.fromisoformat(value)
        return True
    except ValueError:
        return False


def _header_columns(head: bytes, whole: bool) -> list[str]:
    """Column names from the first bytes of the file; raises InvalidParams on ["body", "file"]."""
    if head.startswith(_UTF8_BOM):
        head = head[len(_UTF8_BOM):]
    text = codecs.getincrementaldecoder("utf-8")("strict")
    try:
        decoded = text.decode(head, final=whole)
    except UnicodeDecodeError as exc:
        raise _file_error(f"is not UTF-8 text: byte 0x{exc.object[exc.start]:02x} at offset {exc.start} "
                          "cannot be decoded (save the file as UTF-8)") from None
    if "\x00" in decoded:
        raise _file_error("is not a CSV file: it holds NUL bytes (binary data)")
    rows = csv.reader(io.StringIO(decoded, newline=""), strict=True)
    try:
        header = next(rows, None)
        if header is not None and not whole and not _header_complete(decoded):
            raise _file_error(f"is not a CSV file with a header row: no complete header row in the "
                              f"first {HEADER_MAX_BYTES} bytes")
    except csv.Error as exc:
        raise _file_error(f"is not a CSV file: the header row cannot be parsed ({exc})") from None
    if header is None or not any(name.strip() for name in header):
        raise _file_error("has no header row: the first line is empty")
    if _BINARY.search("".join(header)):
        raise _file_error("is not a CSV file: its header row holds control characters (binary data?)")
    if all(_looks_like_data(name) for name in header):
        raise _file_error("has no header row: every field of the first row is a number or a date, "
                          "which looks like data; add a row of column names")
    return header


def _header_complete(text: str) -> bool:
    """Whether the first record of `text` ends with a newline outside quotes."""
    odd = False
    pos = 0
    while True:
        nl = text.find("\n", pos)
        if nl < 0:
            return False
        if text.count('"', pos, nl) & 1:
            odd = not odd
        pos = nl + 1
        if not odd:
            return True


def _file_error(msg: str) -> InvalidParams:
    return InvalidParams([{"loc": ["body", "file"], "msg": f"the file {msg}"}])


def _scan(stream: IO[bytes]) -> tuple[str, int]:
    """sha256 and size of the whole upload, checking that all of it is UTF-8 without NUL bytes."""
    digest = hashlib.sha256()
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    offset = 0
    stream.seek(0)
    while True:
        piece = stream.read(INPUT_PIECE_BYTES)
        if not piece:
            break
        digest.update(piece)
        nul = piece.find(b"\x00")
        if nul >= 0:
            raise _file_error(f"is not a CSV file: it holds a NUL byte at offset {offset + nul} (binary data)")
        # ASCII pieces need no decoding, unless a multi-byte character straddles the piece before.
        if not (piece.isascii() and not decoder.getstate()[0]):
            pending = len(decoder.getstate()[0])  # bytes of a character begun in the piece before
            try:
                decoder.decode(piece)
            except UnicodeDecodeError as exc:
                raise _file_error(f"is not UTF-8 text: byte 0x{exc.object[exc.start]:02x} at offset "
                                  f"{offset + exc.start - pending} cannot be decoded "
                                  "(save the file as UTF-8)") from None
        offset += len(piece)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise _file_error("is not UTF-8 text: it ends in the middle of a character") from None
    return digest.hexdigest(), offset


def _pieces(stream: IO[bytes]) -> Callable[[], Iterator[bytes]]:
    """The upload again, from the start, in pieces: the Submission's input_chunks."""

    def read() -> Iterator[bytes]:
        stream.seek(0)
        while True:
            piece = stream.read(INPUT_PIECE_BYTES)
            if not piece:
                return
            yield piece

    return read


def _single(form: Any, name: str, errors: list[dict[str, Any]]) -> str | None:
    """A form value given at most once; empty means absent."""
    values = form.getlist(name)
    if len(values) > 1:
        errors.append({"loc": ["body", name], "msg": f"give {name} at most once"})
        return None
    value = values[0].strip() if values else ""
    return value or None


def _iso_date(value: str | None, name: str, errors: list[dict[str, Any]]) -> date | None:
    if value is None:
        return None
    if _ISO_DATE.fullmatch(value):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    errors.append({"loc": ["body", name], "msg": f"must be an ISO date YYYY-MM-DD, got {value[:40]!r}"})
    return None


def _column(value: str | None, name: str, header: list[str], errors: list[dict[str, Any]]) -> None:
    if value is None:
        return
    count = header.count(value)
    if count == 0:
        shown = ", ".join(header[:50]) + (", ..." if len(header) > 50 else "")
        errors.append({"loc": ["body", name], "msg": f"column {value!r} is not in the header ({shown})"})
    elif count > 1:
        errors.append({"loc": ["body", name], "msg": f"column {value!r} appears {count} times in the header"})


class CsvJob(JobSpec):
    """Filter and sort an uploaded CSV: streamed, pausable, external sort in bounded memory."""

    name: ClassVar[str] = "csv"
    params_model = CsvParams
    kernel = "jobs.kernels.csv:run"
    timeout = 3600
    pausable = True
    accepts_json = False
    private_input = True
    accepts_form = True

    label = "CSV"
    description = "Keep the rows of a CSV file whose date lies in a range, sorted by a column."
    button = "Filter and sort"
    form = (
        FormField("file", "CSV file", kind="file", accept=".csv,text/csv", required=True, hint="With a header row."),
        FormField("date_column", "Date column", kind="text", hint="The header of the column that holds the dates."),
        FormField("from", "From", kind="date", hint="The first date kept (inclusive)."),
        FormField("till", "Till", kind="date", hint="The last date kept (inclusive)."),
        FormField("sort_by", "Sort by column", kind="text"),
        FormField("descending", "Largest first (descending)", kind="checkbox"),
    )
    downloads = ("csv",)
    progress_unit = "bytes (read, then written)"

    title = "Filter a CSV by a date range and sort it by a column"
    examples: ClassVar[dict[str, dict[str, Any]]] = {"q1": {
        "summary": "The rows of Q1 2024, largest amount first",
        "value": {"file": "date,region,amount\n2024-01-05,north,120.50\n2024-02-11,south,99\n2024-04-02,east,310\n",
                  "date_column": "date", "from": "2024-01-01", "till": "2024-03-31", "sort_by": "amount",
                  "descending": "true"}}}

    def summary(self, params: dict[str, Any]) -> str:
        return f"Filter and sort {params.get('filename') or 'a CSV file'}"

    def rerun(self, params: dict[str, Any]) -> tuple[dict[str, str], str | None]:
        """A CSV job keeps only its file's name and digest: the form comes back with its options."""
        values, _ = super().rerun(params)
        name = params.get("filename") or "the CSV file"
        return values, f"Choose the file again ({name}): a job keeps its result, not its input."

    def form_schema(self, limits: Limits) -> dict[str, Any]:
        """What parse_form accepts. A value blank once stripped counts as absent (browsers send every
        field), so each option is also allowed blank, and from or till given (not blank) needs a
        date_column given: an if/then per field, where dependentRequired would also demand one for a
        blank from. x-crunch-rules state the rest: from <= till, columns of the file's header."""
        column = {"type": "string", "maxLength": 200, "pattern": COLUMN_PATTERN}
        day = {"type": "string", "format": "date", "pattern": DATE_PATTERN}
        given = {"not": blank_value()}
        needs_column = [{"if": {"required": [name], "properties": {name: given}},
                         "then": {"required": ["date_column"], "properties": {"date_column": given}}}
                        for name in ("from", "till")]
        return {
            "type": "object",
            "required": ["file"],
            "additionalProperties": False,
            "allOf": needs_column,
            "properties": {
                "file": {"type": "string", "format": "binary", "contentMediaType": "text/csv",
                         "description": "A UTF-8 CSV file whose first row names the columns (not every one of "
                                        "them a number or a date), without NUL bytes, at most "
                                        f"{limits.max_body_bytes} bytes (MAX_BODY_BYTES)."},
                "date_column": {"anyOf": [column, blank_value()],
                                "description": "The column holding ISO dates or datetimes to filter on: a column "
                                               "of the file's header row. Needed by from and till."},
                "from": {"anyOf": [day, blank_value()], "description": "Keep rows dated on or after this day "
                                                                       "(YYYY-MM-DD, year 0001 or later)."},
                "till": {"anyOf": [day, blank_value()], "description": "Keep rows dated on or before this day "
                                                                       "(YYYY-MM-DD); not before from."},
                "sort_by": {"anyOf": [column, blank_value()],
                            "description": "The column to sort the kept rows by: numerically if every non-empty "
                                           "value is a number, else as text. A column of the file's header row."},
                "descending": {"anyOf": [stripped_words(tuple(sorted(_TRUE | _FALSE))), blank_value()],
                               "default": "false",
                               "description": "Largest first (true/false, 1/0, on/off, yes/no in any case; needs "
                                              "sort_by)."},
            },
            "x-crunch-rules": [
                {"kind": "order", "low": "from", "high": "till"},
                {"kind": "column", "field": "date_column", "file": "file"},
                {"kind": "column", "field": "sort_by", "file": "file"},
            ],
        }

    def parse_form(self, form: Any, files: Any, limits: Limits) -> Submission:
        """Options first (cheap), then the header from the first bytes, then one pass over the file."""
        errors: list[dict[str, Any]] = []
        if "file" in form:
            errors.append({"loc": ["body", "file"], "msg": "must be a file part (with a filename), not a text field"})
        for name in sorted((set(form.keys()) - {*_OPTIONS, "file"}) | (set(files.keys()) - {"file"})):
            errors.append({"loc": ["body", name],
                           "msg": f"unexpected field; send 'file' and optionally {', '.join(_OPTIONS)}"})
        date_column = _single(form, "date_column", errors)
        lo = _iso_date(_single(form, "from", errors), "from", errors)
        hi = _iso_date(_single(form, "till", errors), "till", errors)
        sort_by = _single(form, "sort_by", errors)
        flag = _single(form, "descending", errors)
        descending = False
        if flag is not None:
            if flag.lower() in _TRUE or flag.lower() in _FALSE:
                descending = flag.lower() in _TRUE
            else:
                errors.append({"loc": ["body", "descending"], "msg": "must be one of true, false, 1, 0, on, off"})
        if lo is not None and hi is not None and lo > hi:
            errors.append({"loc": ["body", "from"], "msg": f"from ({lo}) is after till ({hi})"})
        if date_column is None and (form.get("from", "").strip() or form.get("till", "").strip()):
            errors.append({"loc": ["body", "date_column"], "msg": "required when from or till is given"})
        uploads = [f for f in files.getlist("file") if f.filename or f.content_length]
        if len(uploads) != 1 or "file" in form:
            if "file" not in form:
                errors.append({"loc": ["body", "file"],
                               "msg": "field required" if not uploads else "give exactly one file"})
            raise InvalidParams(errors)
        upload = uploads[0]
        stream = upload.stream
        head = stream.read(HEADER_MAX_BYTES + 1)
        if not head or head == _UTF8_BOM:
            errors.append({"loc": ["body", "file"], "msg": "the file is empty"})
            raise InvalidParams(errors)
        try:
            header = _header_columns(head[:HEADER_MAX_BYTES], whole=len(head) <= HEADER_MAX_BYTES)
        except InvalidParams as exc:
            raise InvalidParams(errors + exc.errors) from None
        _column(date_column, "date_column", header, errors)
        _column(sort_by, "sort_by", header, errors)
        if errors:
            raise InvalidParams(errors)
        digest, size = _scan(stream)
        if size > limits.max_body_bytes:
            raise _file_error(f"is larger than MAX_BODY_BYTES ({limits.max_body_bytes} bytes)")
        options = {"date_column": date_column, "from": lo.isoformat() if lo else None,
                   "till": hi.isoformat() if hi else None, "sort_by": sort_by,
                   "descending": descending if sort_by else False}
        params = {"filename": (upload.filename or "")[:200], "size": size, "sha256": digest, **options}
        key = b"csv|" + digest.encode() + b"|" + canonical_json(options)
        return Submission(self.name, params, key, self.queue_for(params), input_chunks=_pieces(stream))

    def queue_for(self, params: dict[str, Any]) -> str:
        return FAST_QUEUE if params["size"] <= FAST_BYTES else DEFAULT_QUEUE

    def expected_seconds(self, params: dict[str, Any]) -> float:
        return max(1.0, params["size"] / BYTES_PER_SECOND)
