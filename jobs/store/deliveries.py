"""Webhook deliveries in Redis: registered at submit, made due by the job's (or batch's) ending, claimed
by one deliverer at a time, and settled after each attempt.

A delivery is a hash (DELIVERY_KEY) plus, while it is due, a member of the DELIVERIES_DUE sorted
set scored by when its next attempt may start. Its states (DeliveryStatus):

- waiting: registered on a job or batch that has not ended; the lifecycle's terminal transition
  (or the batch's last item) moves it to pending in that same atomic step (DUE_LUA);
- pending: due now or at its next retry; a deliverer claims it with CLAIM_LUA, which pushes its
  score forward by a lease, so no other deliverer sees it due while the attempt runs, and a
  deliverer that dies mid-attempt (SIGKILL, lost host) only delays it by the lease;
- delivered: a 2xx came back; failed: the retry window (24 h) ended without one.

Settling (SETTLE_LUA) checks the lease token, so an attempt that outlived its lease (and was
claimed again) cannot overwrite the newer attempt's outcome. Delivery is at least once: a
receiver sees a second call only when a deliverer died after sending and before settling; the
webhook-id header is the same on every attempt, for the receiver's idempotency.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from enum import Enum
from typing import Any

from redis import Redis

from jobs.store.commands import LuaScript
from jobs.store.keys import (
    BATCH_KEY,
    BATCH_WEBHOOKS_KEY,
    DELIVERIES_DUE_KEY,
    DELIVERY_KEY,
    JOB_KEY,
    JOB_WEBHOOKS_KEY,
    WEBHOOK_SECRET_KEY,
)

#: A waiting delivery on a job nobody ends (deleted, or paused until it expired) is forgotten after this
#: long rather than kept forever.
WAITING_TTL = 30 * 86_400
_DELIVERY_PREFIX = DELIVERY_KEY.format(id="")


class DeliveryStatus(str, Enum):
    WAITING = "waiting"
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


#: Lua helper shared with the lifecycle's terminal transition and the batch counters: move every
#: waiting delivery of one job or batch to pending, due at `now`, with its event type. Keys are built
#: from PREFIX inside (the target's list names its deliveries). Returns how many became due.
DUE_LUA = """
local function webhooks_due(list_key, event_type, now)
  local n = 0
  for _, d in ipairs(redis.call('LRANGE', list_key, 0, -1)) do
    local dk = '""" + _DELIVERY_PREFIX + """' .. d
    if redis.call('HGET', dk, 'status') == 'waiting' then
      redis.call('HSET', dk, 'status', 'pending', 'type', event_type, 'due_at', now)
      redis.call('PERSIST', dk)
      redis.call('ZADD', '""" + DELIVERIES_DUE_KEY + """', now, d)
      n = n + 1
    end
  end
  return n
end
"""

#: REGISTER: one delivery on a job or a batch. KEYS: the target's hash, the target's delivery list, the
#: delivery hash; ARGV: delivery id, now, waiting TTL, kind ('job' or 'batch'), then the delivery's
#: field/value pairs. The target's state decides at once: a job that already ended (a cache hit, or one
#: that ended since the submit) or a batch that already finished makes it due now; otherwise it waits
#: for the lifecycle (STATUS_HOOK). Returns the status it got, or false for an unknown target.
REGISTER_LUA = DUE_LUA + """
local ended
if ARGV[4] == 'job' then
  local status = redis.call('HGET', KEYS[1], 'status')
  if not status then return false end
  if status == 'finished' or status == 'failed' or status == 'canceled' then ended = 'job.' .. status end
else
  local at = redis.call('HGET', KEYS[1], 'ended_at')
  if not at then return false end
  if at ~= '' then ended = 'batch.finished' end
end
redis.call('HSET', KEYS[3], 'status', 'waiting', unpack(ARGV, 5))
redis.call('EXPIRE', KEYS[3], tonumber(ARGV[3]))
redis.call('RPUSH', KEYS[2], ARGV[1])
local ttl = redis.call('TTL', KEYS[1])
if ttl > 0 then redis.call('EXPIRE', KEYS[2], ttl) end
redis.call('HSET', KEYS[1], 'webhooks', '1')
if ended then
  webhooks_due(KEYS[2], ended, ARGV[2])
  return 'pending'
end
return 'waiting'
"""

#: Claim up to ARGV[2] deliveries due at ARGV[1]: each one's score moves to ARGV[1] + ARGV[3] (the
#: lease) and its hash gets the lease token ARGV[4]. Returns {id, flat hash} pairs, and ids whose hash is
#: gone are dropped from the set.
CLAIM_LUA = """
local out = {}
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, d in ipairs(ids) do
  local dk = '""" + _DELIVERY_PREFIX + """' .. d
  if redis.call('EXISTS', dk) == 1 then
    redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[3]), d)
    redis.call('HSET', dk, 'lease', ARGV[4])
    table.insert(out, d)
    table.insert(out, redis.call('HGETALL', dk))
  else
    redis.call('ZREM', KEYS[1], d)
  end
end
return out
"""

#: Settle one attempt, only while it still holds its lease. KEYS: delivery hash, due set; ARGV: id,
#: lease token, outcome ('delivered', 'retry' or 'failed'), next due (for retry), TTL of a settled
#: delivery, then field/value pairs to set. Returns 1, or 0 when the lease was lost.
SETTLE_LUA = """
if redis.call('HGET', KEYS[1], 'lease') ~= ARGV[2] then return 0 end
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
if #ARGV > 6 then redis.call('HSET', KEYS[1], unpack(ARGV, 7)) end
redis.call('HDEL', KEYS[1], 'lease')
if ARGV[3] == 'retry' then
  redis.call('HSET', KEYS[1], 'status', 'pending', 'due_at', ARGV[4])
  redis.call('ZADD', KEYS[2], tonumber(ARGV[4]), ARGV[1])
else
  redis.call('HSET', KEYS[1], 'status', ARGV[3])
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[5]))
end
return 1
"""

#: The deliveries a target lists, read in one step: KEYS[1] = the target's list. Returns flat hashes.
READ_LUA = """
local out = {}
for _, d in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  local h = redis.call('HGETALL', '""" + _DELIVERY_PREFIX + """' .. d)
  if #h > 0 then table.insert(out, h) end
end
return out
"""


@dataclass
class Delivery:
    """One delivery as stored; `body` is fixed at its first attempt, so every retry sends the same bytes."""

    id: str
    url: str
    kind: str  # "job" or "batch"
    target: str
    status: DeliveryStatus
    client: str = ""
    type: str = ""
    attempts: int = 0
    last_error: str = ""
    created_at: float = 0.0
    first_attempt_at: float | None = None
    due_at: float | None = None
    body: bytes = b""
    lease: str = ""

    @classmethod
    def from_flat(cls, flat: list[bytes]) -> Delivery:
        d = {k.decode(): v for k, v in zip(flat[::2], flat[1::2], strict=True)}
        text = {k: v.decode() for k, v in d.items() if k != "body"}
        return cls(
            id=text.get("id", ""), url=text.get("url", ""), kind=text.get("kind", "job"),
            target=text.get("target", ""), status=DeliveryStatus(text.get("status", "waiting")),
            client=text.get("client", ""), type=text.get("type", ""), attempts=int(text.get("attempts") or 0),
            last_error=text.get("last_error", ""), created_at=float(text.get("created_at") or 0),
            first_attempt_at=float(text["first_attempt_at"]) if text.get("first_attempt_at") else None,
            due_at=float(text["due_at"]) if text.get("due_at") else None,
            body=d.get("body") or b"", lease=text.get("lease", ""),
        )

    def public(self) -> dict[str, Any]:
        """The job (or batch) resource's entry: {url, status, attempts, last_error}."""
        return {"url": self.url, "status": self.status.value, "attempts": self.attempts,
                "last_error": self.last_error or None}


class DeliveryStore:
    """Registration, claiming and settling of deliveries; every step is one atomic script."""

    def __init__(self, conn: Redis, settled_ttl: int = 86_400) -> None:
        self.conn = conn
        self.settled_ttl = settled_ttl
        self._register = LuaScript(conn, REGISTER_LUA)
        self._claim = LuaScript(conn, CLAIM_LUA)
        self._settle = LuaScript(conn, SETTLE_LUA)
        self._read = LuaScript(conn, READ_LUA)

    @staticmethod
    def fields(delivery_id: str, url: str, kind: str, target: str, client: str, now: float) -> list[Any]:
        return ["id", delivery_id, "url", url, "kind", kind, "target", target, "client", client,
                "attempts", 0, "created_at", repr(now)]

    def register(self, kind: str, target: str, url: str, client: str) -> str | None:
        """Register a delivery on a job or batch (kind "job" or "batch"); returns its status ("waiting" or
        "pending"), None when the target is unknown."""
        now = time.time()
        did = uuid.uuid4().hex
        hash_key, list_key = ((JOB_KEY, JOB_WEBHOOKS_KEY) if kind == "job" else (BATCH_KEY, BATCH_WEBHOOKS_KEY))
        reply = self._register(
            keys=[hash_key.format(id=target), list_key.format(id=target), DELIVERY_KEY.format(id=did)],
            args=[did, repr(now), WAITING_TTL, kind, *self.fields(did, url, kind, target, client, now)])
        return reply.decode() if reply else None

    def register_many(self, targets: list[tuple[str, str, str, str]]) -> list[str | None]:
        """register() for many (kind, target, url, client) at once, pipelined: a batch's items with their own
        webhooks cost one round trip, not one each (the first goes alone, loading the script if needed)."""
        if not targets:
            return []
        first, *rest = targets
        out = [self.register(*first)]
        if rest:
            now = time.time()
            pipe = self.conn.pipeline(transaction=False)
            for kind, target, url, client in rest:
                did = uuid.uuid4().hex
                hash_key, list_key = ((JOB_KEY, JOB_WEBHOOKS_KEY) if kind == "job" else (BATCH_KEY, BATCH_WEBHOOKS_KEY))
                pipe.evalsha(self._register.sha, 3, hash_key.format(id=target), list_key.format(id=target),
                             DELIVERY_KEY.format(id=did), did, repr(now), WAITING_TTL, kind,
                             *self.fields(did, url, kind, target, client, now))
            out += [r.decode() if r else None for r in pipe.execute()]
        return out

    def for_client(self, kind: str, target: str, client: str) -> list[dict[str, Any]]:
        """The deliveries on a job or batch that `client` registered, as the resource lists them."""
        list_key = (JOB_WEBHOOKS_KEY if kind == "job" else BATCH_WEBHOOKS_KEY).format(id=target)
        return [d.public() for d in self.list_for(list_key) if d.client == client]

    def claim(self, limit: int, lease: float, now: float | None = None) -> tuple[str, list[Delivery]]:
        """Up to `limit` due deliveries, leased for `lease` seconds; returns the lease token with them."""
        token = uuid.uuid4().hex
        now = time.time() if now is None else now
        flat = self._claim(keys=[DELIVERIES_DUE_KEY], args=[repr(now), limit, repr(lease), token])
        return token, [Delivery.from_flat(h) for h in flat[1::2]]

    def settle(self, d: Delivery, token: str, outcome: str, due: float | None = None,
               fields: dict[str, Any] | None = None) -> bool:
        """Record an attempt's outcome ("delivered", "retry" at `due`, or "failed"); False if the lease was lost."""
        pairs = [x for kv in (fields or {}).items() for x in kv]
        return bool(self._settle(keys=[DELIVERY_KEY.format(id=d.id), DELIVERIES_DUE_KEY],
                                 args=[d.id, token, outcome, repr(due or 0.0), self.settled_ttl, "", *pairs]))

    def list_for(self, list_key: str) -> list[Delivery]:
        return [Delivery.from_flat(h) for h in self._read(keys=[list_key])]

    def next_due(self) -> float | None:
        """When the earliest pending delivery is due (epoch seconds), or None when none is."""
        first = self.conn.zrange(DELIVERIES_DUE_KEY, 0, 0, withscores=True)
        return float(first[0][1]) if first else None

    def secret(self, configured: str) -> str:
        """The signing key: WEBHOOK_SECRET when set, else the one generated once and kept in Redis."""
        if configured:
            return configured
        from jobs.webhooks import new_secret

        self.conn.set(WEBHOOK_SECRET_KEY, new_secret(), nx=True)
        return self.conn.get(WEBHOOK_SECRET_KEY).decode()
