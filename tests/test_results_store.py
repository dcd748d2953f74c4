"""Chunked result storage on a real Redis: whole, paged, exact, and resumable after a crash."""

from __future__ import annotations

import json
import sys
import uuid

import numpy as np
import orjson
from redis import Redis

from jobs.store.keys import RESULT_CHUNKS_KEY
from jobs.store.results import CHUNK_ITEMS, RedisResultWriter, ResultReader


def new_id() -> str:
    return uuid.uuid4().hex


def read_all(conn: Redis, job_id: str, meta: dict) -> bytes:
    return b"".join(ResultReader(conn, job_id, meta).iter_json())


def test_array_chunks_round_trip_and_pages(redis_conn: Redis) -> None:
    job_id = new_id()
    w = RedisResultWriter(redis_conn, job_id)
    data = np.arange(0, 3 * CHUNK_ITEMS + 17, dtype=np.int64) * 7
    w.append(data[:100])
    w.append(data[100:])
    meta = w.finish()
    assert meta["items"] == len(data) and meta["chunks"] == 4
    body = read_all(redis_conn, job_id, meta)
    assert len(body) == meta["json_bytes"]
    assert orjson.loads(body) == data.tolist()
    reader = ResultReader(redis_conn, job_id, meta)
    for offset, limit in [(0, 1), (99, 2), (CHUNK_ITEMS - 1, 3), (len(data) - 1, 100), (len(data), 1), (5, 0)]:
        page = orjson.loads(b"".join(reader.iter_page_json(offset, limit)))
        assert page == data[offset:offset + limit].tolist()
    assert not reader.inline_allowed()


def test_big_ints_and_floats_stay_exact(redis_conn: Redis) -> None:
    sys.set_int_max_str_digits(0)
    job_id = new_id()
    items = [-(10**40), -1.5, 0, 0.1, 2**64, 10**300 + 1]
    w = RedisResultWriter(redis_conn, job_id)
    w.append(items)
    meta = w.finish()
    got = json.loads(read_all(redis_conn, job_id, meta))
    assert got == items and [type(x) for x in got] == [type(x) for x in items]
    page = json.loads(b"".join(ResultReader(redis_conn, job_id, meta).iter_page_json(4, 2)))
    assert page == [2**64, 10**300 + 1]


def test_empty_array_and_value_results(redis_conn: Redis) -> None:
    job_id = new_id()
    meta = RedisResultWriter(redis_conn, job_id).finish()
    assert read_all(redis_conn, job_id, meta) == b"[]"
    job_id = new_id()
    w = RedisResultWriter(redis_conn, job_id)
    w.write_value({"n": 5, "digits": 1, "value": "5"})
    meta = w.finish()
    reader = ResultReader(redis_conn, job_id, meta, "fibonacci")
    assert reader.value() == {"n": 5, "digits": 1, "value": "5"}
    assert b"".join(reader.iter_lines()) == b"5\n"
    assert b"".join(reader.iter_lines(header=True)) == b"n,digits,value\r\n5,1,5\r\n"
    assert reader.inline_allowed()


def test_big_value_is_split_over_keys(redis_conn: Redis) -> None:
    job_id = new_id()
    w = RedisResultWriter(redis_conn, job_id)
    w.write_value({"value": "7" * (3 << 20)})
    meta = w.finish()
    assert redis_conn.llen(RESULT_CHUNKS_KEY.format(id=job_id)) == 4
    assert orjson.loads(read_all(redis_conn, job_id, meta))["value"] == "7" * (3 << 20)
    assert not ResultReader(redis_conn, job_id, meta).inline_allowed()


def test_writer_resumes_from_a_checkpoint_position(redis_conn: Redis) -> None:
    job_id = new_id()
    w = RedisResultWriter(redis_conn, job_id)
    w.append(list(range(10)))
    pos = w.position()
    w.append(list(range(10, 20)))  # written after the checkpoint, then the worker crashed
    w.flush()
    resumed = RedisResultWriter(redis_conn, job_id, pos)
    resumed.append(list(range(10, 15)))
    meta = resumed.finish()
    assert orjson.loads(read_all(redis_conn, job_id, meta)) == list(range(15))
