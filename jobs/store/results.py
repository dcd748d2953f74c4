"""Chunked result storage: big results never sit in one Redis key, and pages need no decoding.

Array results are stored as JSON text of the items, comma-joined without brackets, in
chunks of at most CHUNK_ITEMS items; a parallel list holds the item count of each chunk.
Numbers never contain commas, so a page is a slice of comma-split tokens: exact for
integers of any size, with no JSON decoding at all.

Text results (the CSV job's file) are raw bytes in chunks of about 1 MiB as the kernel wrote
them, each holding whole CSV records (the counts list says how many), plus a small JSON summary kept in
the result meta and shown inline as the job's result. Chunk 0 is the header row.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import orjson
from redis import Redis
from redis.exceptions import WatchError

from jobs.store.keys import PREFIX, RESULT_CHUNKS_KEY, RESULT_COUNTS_KEY

CHUNK_ITEMS = 65_536
VALUE_CHUNK_BYTES = 1 << 20
#: Results this small are inlined in the job resource (the contract's limits).
INLINE_MAX_ITEMS = 10_000
INLINE_MAX_BYTES = 1 << 20
#: Flush buffered chunks to Redis once this many bytes are pending.
_FLUSH_BYTES = 8 << 20
#: List of byte chunks: one scratch list of a job (an external-sort run of the CSV kernel).
SCRATCH_KEY = PREFIX + "job:{id}:scratch:{name}"
#: Set: the names of a job's scratch lists, so they can be dropped without SCAN.
SCRATCH_NAMES_KEY = PREFIX + "job:{id}:scratch"


def _encode_items(items: Sequence[Any]) -> bytes:
    """Comma-joined JSON numbers; orjson for speed, stdlib json for ints beyond 64 bits."""
    if hasattr(items, "dtype"):
        return orjson.dumps(items, option=orjson.OPT_SERIALIZE_NUMPY)[1:-1]
    try:
        return orjson.dumps(items)[1:-1]
    except (orjson.JSONEncodeError, TypeError, OverflowError):
        # Ints beyond 64 bits: GMP's digits() is subquadratic where int.__str__ is quadratic. Only a
        # worker writes results, so the web never loads gmpy2.
        import gmpy2

        return b",".join(gmpy2.mpz(x).digits(10).encode() if type(x) is int else orjson.dumps(x)
                         for x in items)


class RedisResultWriter:
    """ResultWriter that streams a kernel's output into Redis lists with pipelined pushes."""

    def __init__(self, conn: Redis, job_id: str, position: dict[str, Any] | None = None,
                 reset: bool = True) -> None:
        """reset=False: the caller records reset_commands() in a write of its own (the runner's start)."""
        self.conn = conn
        self.chunks_key = RESULT_CHUNKS_KEY.format(id=job_id)
        self.counts_key = RESULT_COUNTS_KEY.format(id=job_id)
        pos = position or {}
        self.kind: str | None = pos.get("kind")
        self.chunks = int(pos.get("chunks", 0))
        self.items = int(pos.get("items", 0))
        self.bytes = int(pos.get("bytes", 0))
        self.nonempty = int(pos.get("nonempty", 0))
        self.summary: Any = None
        #: RPUSHes not sent yet, as command tuples (the finish can send them in its own atomic step).
        self._buffered: list[tuple[Any, ...]] = []
        self._pending = 0
        if reset:
            pipe = conn.pipeline(transaction=False)
            self.reset_commands(pipe)
            pipe.execute()

    def reset_commands(self, pipe: Any) -> None:
        """Drop anything a crashed or stopped run wrote after its last checkpoint (recorded on pipe)."""
        if self.chunks:
            pipe.ltrim(self.chunks_key, 0, self.chunks - 1)
            pipe.ltrim(self.counts_key, 0, self.chunks - 1)
        else:
            pipe.delete(self.chunks_key, self.counts_key)

    def take_pending(self, max_bytes: int) -> list[tuple[Any, ...]]:
        """Hand buffered pushes of at most max_bytes to the caller's atomic write (the runner's finish);
        larger ones are sent here first. Returns the raw commands; the caller must send them."""
        if self._pending > max_bytes:
            self.flush()
        taken, self._buffered = self._buffered, []
        self._pending = 0
        return taken

    def _push(self, data: bytes, count: int) -> None:
        self._buffered.append(("RPUSH", self.chunks_key, data))
        self._buffered.append(("RPUSH", self.counts_key, count))
        self.chunks += 1
        self.items += count
        self.bytes += len(data)
        self.nonempty += 1 if data else 0
        self._pending += len(data)
        if self._pending >= _FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        """Send buffered chunks; called before checkpoints so saved positions are durable."""
        if self._buffered:
            pipe = self.conn.pipeline(transaction=False)
            for cmd in self._buffered:
                pipe.execute_command(*cmd)
            pipe.execute()
            self._buffered = []
        self._pending = 0

    def write_value(self, value: Any) -> None:
        self.kind = "value"
        data = orjson.dumps(value)
        for i in range(0, max(len(data), 1), VALUE_CHUNK_BYTES):
            self._push(data[i:i + VALUE_CHUNK_BYTES], 0)
        self.items = 1
        # Sent by the next flush: finish(), a checkpoint's position(), or the runner's finishing write.

    def append(self, items: Sequence[Any]) -> None:
        self.kind = "array"
        for i in range(0, len(items), CHUNK_ITEMS):
            piece = items[i:i + CHUNK_ITEMS]
            self._push(_encode_items(piece), len(piece))

    def write_text(self, data: bytes, items: int = 0) -> None:
        """One chunk of raw bytes, never cut, so it keeps whole records (kernels send about 1 MiB at a time)."""
        self.kind = "text"
        self._push(data, items)

    def set_summary(self, summary: Any) -> None:
        self.summary = summary

    def position(self) -> dict[str, Any]:
        """Where the output stands, saved with each checkpoint."""
        self.flush()
        return {"kind": self.kind, "chunks": self.chunks, "items": self.items,
                "bytes": self.bytes, "nonempty": self.nonempty}

    def finish(self) -> dict[str, Any]:
        """Result metadata for the job record."""
        meta = self.position()
        meta["kind"] = self.kind or "array"
        if meta["kind"] == "array":
            meta["json_bytes"] = meta["bytes"] + max(meta["nonempty"] - 1, 0) + 2
        elif meta["kind"] == "text":
            meta["summary"] = self.summary
            meta["json_bytes"] = len(orjson.dumps(self.summary))
        else:
            meta["json_bytes"] = meta["bytes"]
        return meta


class ResultReader:
    """Streams a stored result as JSON, CSV or text, whole or one page at a time."""

    def __init__(self, conn: Redis, job_id: str, meta: dict[str, Any], column: str = "value",
                 prefetched: list[bytes] | None = None) -> None:
        """prefetched: the first chunks, when read along with the record (a waiter woken by the finish)."""
        self.conn = conn
        self.meta = meta
        #: The CSV header of an array result's download (its type's JobSpec.result_column).
        self.column = column
        self.chunks_key = RESULT_CHUNKS_KEY.format(id=job_id)
        self.counts_key = RESULT_COUNTS_KEY.format(id=job_id)
        self.prefetched = prefetched

    @property
    def is_array(self) -> bool:
        return self.meta.get("kind") == "array"

    @property
    def is_text(self) -> bool:
        return self.meta.get("kind") == "text"

    @property
    def total(self) -> int:
        return int(self.meta.get("items", 0))

    def exists(self) -> bool:
        """False once the chunks expired or were deleted."""
        if self.prefetched:
            return True
        return bool(self.conn.exists(self.chunks_key)) or self.meta.get("chunks", 0) == 0

    def inline_allowed(self) -> bool:
        """Whether the job resource may carry the result itself."""
        return self.meta.get("json_bytes", 0) <= INLINE_MAX_BYTES and (
            not self.is_array or self.total <= INLINE_MAX_ITEMS)

    @property
    def text_bytes(self) -> int:
        """Size of the whole text result (the CSV file), for Content-Length."""
        return int(self.meta.get("bytes", 0))

    def _chunks(self, start: int = 0, stop: int = -1, batch: int = 16) -> Iterator[bytes]:
        """Fetch chunks in batches so memory stays bounded while streaming."""
        last = self.meta.get("chunks", 0) - 1 if stop < 0 else stop
        i = start
        if self.prefetched is not None and start == 0 and len(self.prefetched) > last:
            yield from self.prefetched[:last + 1]
            return
        while i <= last:
            j = min(i + batch - 1, last)
            yield from self.conn.lrange(self.chunks_key, i, j)
            i = j + 1

    def json_bytes(self) -> bytes:
        """The whole result as JSON (only for small results)."""
        return b"".join(self.iter_json())

    def iter_json(self) -> Iterator[bytes]:
        if self.is_text:  # the file itself is served as text; JSON gets its summary
            yield orjson.dumps(self.meta.get("summary"))
            return
        if not self.is_array:
            yield from self._chunks()
            return
        yield b"["
        first = True
        for chunk in self._chunks():
            if not chunk:
                continue
            if not first:
                yield b","
            yield chunk
            first = False
        yield b"]"

    def value(self) -> Any:
        """Decoded value result (count, Fibonacci)."""
        return orjson.loads(b"".join(self._chunks()))

    def _page_tokens(self, offset: int, limit: int | None) -> Iterator[list[bytes]]:
        """Token lists of the items in [offset, offset+limit), chunk by chunk."""
        counts = [int(c) for c in self.conn.lrange(self.counts_key, 0, -1)]
        end = self.total if limit is None else min(self.total, offset + limit)
        pos = 0
        for idx, n in enumerate(counts):
            lo, hi = pos, pos + n
            pos = hi
            if hi <= offset or n == 0:
                continue
            if lo >= end:
                break
            chunk = self.conn.lindex(self.chunks_key, idx) or b""
            tokens = chunk.split(b",")
            yield tokens[max(offset - lo, 0): min(end, hi) - lo]

    def iter_page_json(self, offset: int, limit: int | None) -> Iterator[bytes]:
        yield b"["
        first = True
        for tokens in self._page_tokens(offset, limit):
            if not tokens:
                continue
            if not first:
                yield b","
            yield b",".join(tokens)
            first = False
        yield b"]"

    def iter_text(self, offset: int = 0, limit: int | None = None) -> Iterator[bytes]:
        """A text result as stored, or its header plus the records [offset, offset+limit)."""
        if offset == 0 and limit is None:
            yield from self._chunks()
            return
        counts = [int(c) for c in self.conn.lrange(self.counts_key, 0, -1)]
        yield from self.conn.lrange(self.chunks_key, 0, 0)  # the header row
        end = self.total if limit is None else min(self.total, offset + limit)
        pos = 0
        for idx, n in enumerate(counts):
            lo, hi = pos, pos + n
            pos = hi
            if idx == 0 or hi <= offset or n == 0:
                continue
            if lo >= end:
                break
            records = split_records(self.conn.lindex(self.chunks_key, idx) or b"")
            page = records[max(offset - lo, 0): min(end, hi) - lo]
            if page:
                yield b"".join(page)

    def iter_lines(self, offset: int = 0, limit: int | None = None,
                   header: bool = False) -> Iterator[bytes]:
        """One item per line, for CSV and TXT downloads."""
        if self.is_text:
            yield from self.iter_text(offset, limit)
            return
        if not self.is_array:
            value = self.value()
            yield from _value_lines(value, header)
            return
        if header:
            yield self.column.encode() + b"\r\n"
        eol = b"\r\n" if header else b"\n"
        if offset == 0 and limit is None:
            for chunk in self._chunks():
                if chunk:
                    yield chunk.replace(b",", eol) + eol
            return
        for tokens in self._page_tokens(offset, limit):
            if tokens:
                yield eol.join(tokens) + eol


def _value_lines(value: Any, csv: bool) -> Iterator[bytes]:
    """Text forms of object results: the bare value for TXT, a header and a row for CSV."""
    if not isinstance(value, dict):
        yield orjson.dumps(value) + b"\n"
        return
    if csv:
        yield ",".join(value).encode() + b"\r\n"
        yield ",".join(str(v) for v in value.values()).encode() + b"\r\n"
        return
    if "value" in value:
        yield str(value["value"]).encode() + b"\n"
    elif len(value) == 1:
        yield str(next(iter(value.values()))).encode() + b"\n"
    else:
        for k, v in value.items():
            yield f"{k}: {v}\n".encode()


def split_records(chunk: bytes) -> list[bytes]:
    """CRLF-terminated CSV records of a text chunk, each with its CRLF; a CRLF inside quotes stays put."""
    lines = chunk.split(b"\r\n")
    if lines and not lines[-1]:
        lines.pop()
    if b'"' not in chunk:
        return [line + b"\r\n" for line in lines]
    records: list[bytes] = []
    pending: list[bytes] = []
    odd = False
    for line in lines:
        pending.append(line)
        if line.count(b'"') & 1:
            odd = not odd
        if not odd:
            records.append(b"\r\n".join(pending) + b"\r\n")
            pending = []
    if pending:
        records.append(b"\r\n".join(pending) + b"\r\n")
    return records


class RedisScratch:
    """ScratchStore in Redis lists, so a paused job's sort runs survive and any worker host can resume it."""

    def __init__(self, conn: Redis, job_id: str, ttl: int) -> None:
        self.conn = conn
        self.job_id = job_id
        self.ttl = ttl
        self.names_key = SCRATCH_NAMES_KEY.format(id=job_id)
        #: Whether this run wrote anything, so jobs that never use scratch skip the cleanup.
        self.used = False

    def _key(self, name: str) -> str:
        return SCRATCH_KEY.format(id=self.job_id, name=name)

    def write(self, name: str, chunks: Iterable[bytes]) -> None:
        """Pipelined pushes; the TTL only guards against jobs abandoned while paused."""
        self.used = True
        key = self._key(name)
        pipe = self.conn.pipeline(transaction=False)
        pipe.sadd(self.names_key, name)
        pipe.expire(self.names_key, self.ttl)
        pipe.delete(key)
        pending = 0
        for chunk in chunks:
            pipe.rpush(key, chunk)
            pending += len(chunk)
            if pending >= _FLUSH_BYTES:
                pipe.execute()
                pending = 0
        pipe.expire(key, self.ttl)
        pipe.execute()

    def read(self, name: str, index: int) -> bytes:
        data = self.conn.lindex(self._key(name), index)
        if data is None:
            raise KeyError(f"scratch list {name!r} of job {self.job_id} has no chunk {index} (expired?)")
        return data

    def clear(self) -> None:
        names = [n.decode() for n in self.conn.smembers(self.names_key)]
        self.conn.delete(self.names_key, *[self._key(n) for n in names])

    def clear_if_ended(self, job_key: str, ended: Iterable[bytes]) -> bool:
        """Drop the lists if the job (its hash at job_key) is gone or its status is in `ended`, checked and
        dropped under WATCH: a job re-queued, resumed or retried in between keeps its runs (another run
        may be reading them). For a work horse that was killed (a cancel's stop command): it could not
        drop them itself. False when the job can still resume, nothing was stored, or the check raced."""
        ended = frozenset(ended)
        with self.conn.pipeline() as pipe:
            try:
                pipe.watch(job_key, self.names_key)
                status = pipe.hget(job_key, "status")
                if status is not None and status not in ended:
                    return False
                names = [n.decode() for n in pipe.smembers(self.names_key)]
                if not names:
                    return False
                pipe.multi()
                pipe.delete(self.names_key, *[self._key(n) for n in names])
                pipe.execute()
                return True
            except WatchError:
                return False
