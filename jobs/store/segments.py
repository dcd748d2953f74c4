"""Redis-backed cache of sieved prime segments, shared by every primes job (see jobs.kernels.primes).

Bitmaps are 1 MiB each, so they expire after the result TTL; counts are a few bytes per
segment and never change, so they live in one hash whose (much longer) TTL is refreshed
on every write. The cache is best effort: a Redis error reads as a miss and a failed
save is only logged, because the kernel can always sieve again.
"""

from __future__ import annotations

import logging

from redis import Redis
from redis.exceptions import RedisError

from jobs.store.keys import PREFIX

log = logging.getLogger("crunch.segments")

#: String: Segment.to_bytes() of grid segment k (primes.SEGMENT_BYTES bytes).
SEGMENT_KEY = PREFIX + "primes:segment:{k}"
#: Hash: grid segment k -> number of primes in the whole segment.
SEGMENT_COUNTS_KEY = PREFIX + "primes:counts"
#: Counts outlive bitmaps: at least this long (30 days), refreshed whenever one is added.
MIN_COUNTS_TTL = 30 * 86400
#: Fields per HMGET in a pipeline, so one call never builds a huge reply.
_HMGET_BATCH = 1000


class RedisSegmentStore:
    """SegmentStore (jobs.kernels.primes) on a redis-py connection with decode_responses=False."""

    def __init__(self, connection: Redis, ttl_seconds: int, counts_ttl_seconds: int | None = None) -> None:
        self.conn = connection
        self.ttl = max(1, int(ttl_seconds))
        self.counts_ttl = max(self.ttl, MIN_COUNTS_TTL) if counts_ttl_seconds is None else int(counts_ttl_seconds)

    def counts(self, ks: list[int]) -> list[int | None]:
        """Known whole-segment counts, one pipelined round trip."""
        if not ks:
            return []
        try:
            pipe = self.conn.pipeline(transaction=False)
            for i in range(0, len(ks), _HMGET_BATCH):
                pipe.hmget(SEGMENT_COUNTS_KEY, [str(k) for k in ks[i:i + _HMGET_BATCH]])
            replies = pipe.execute()
        except RedisError:
            log.warning("segment counts lookup failed; sieving instead", exc_info=True)
            return [None] * len(ks)
        return [int(v) if v is not None else None for batch in replies for v in batch]

    def load(self, k: int) -> bytes | None:
        """Bitmap of segment k, or None if absent or Redis is unavailable."""
        try:
            data = self.conn.get(SEGMENT_KEY.format(k=k))
        except RedisError:
            log.warning("segment %d load failed; sieving instead", k, exc_info=True)
            return None
        return bytes(data) if data is not None else None

    def save(self, k: int, data: bytes | None, count: int) -> None:
        """Store the count (and the bitmap unless None), refreshing both TTLs."""
        try:
            pipe = self.conn.pipeline(transaction=False)
            if data is not None:
                pipe.set(SEGMENT_KEY.format(k=k), data, ex=self.ttl)
            pipe.hset(SEGMENT_COUNTS_KEY, str(k), int(count))
            pipe.expire(SEGMENT_COUNTS_KEY, self.counts_ttl)
            pipe.execute()
        except RedisError:
            log.warning("segment %d save failed", k, exc_info=True)
