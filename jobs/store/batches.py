"""Batches in Redis: the batch record with its counts by status, its items in submission order, and the
Lua that the job lifecycle runs so the counts follow every item's transitions.

Keys (BATCH_KEY, BATCH_JOBS_KEY, BATCH_WEBHOOKS_KEY): a hash with `total`, `added` (items written
so far), the six status counts, created_at/ended_at, client and owner; a list of the items' job ids;
the deliveries registered on the batch. A job that belongs to batches carries their ids in its own
hash (field `batches`, space-separated, once per item, so a job that is two items of one batch counts
twice there, as its items do).

Why counters kept by the transitions, rather than counting the items' statuses when asked: the
counts are then exact at every moment under any concurrency, because the item's status and the
batch's counts change in the same atomic step (STATUS_HOOK_LUA inside the lifecycle's scripts), and
that same step sees the batch reach its end, so it wakes the waiters and makes the batch.finished
webhook due once, with nothing polling for it. Measured (valkey 8 on this 2-CPU machine under a load
average of ~12, 10,000 transitions each; `python -m bench.batch_counts` measures it again): the TRANSITION
script costs Redis 4.4-5.2 us per call without the hook, 5.7-5.8 us with it for a job in no batch, and
13-16 us for a job in a batch; counting a 10,000-item batch's statuses from its items instead costs
11 ms of Redis CPU (34 ms wall) on every read, and would still need a poller to notice the end.
"""

from __future__ import annotations

from jobs.store.deliveries import DUE_LUA
from jobs.store.keys import BATCH_KEY, EVENTS_CHANNEL, JOB_KEY

#: The statuses counted, as the resource lists them.
COUNTED = ("queued", "started", "paused", "finished", "failed", "canceled")

_BATCH_PREFIX = BATCH_KEY.format(id="")
_JOB_PREFIX = JOB_KEY.format(id="")

#: STATUS_HOOK (functions, included in the lifecycle's TRANSITION and BEGIN scripts): on_status(job_key,
#: from, to, pre) runs right after a job's status changed from `from` to `to` in that same script. For every
#: batch the job belongs to it moves one count, and when that was the batch's last live item (and all its
#: items are written) it ends the batch: ended_at, expiry (the batch's `ttl`), an event for its waiters
#: and its webhooks due; an item going live again (retry) reopens it. A job that ends makes its own
#: webhooks due. A job in no batch and with no webhook pays one HMGET, or nothing when the caller already
#: read its `batches` and `webhooks` fields (pre = {batches, webhooks}, false when absent). A batch key
#: that expired is left alone (HINCRBY would re-create it).
STATUS_HOOK_LUA = DUE_LUA + """
local function hook_now()
  local t = redis.call('TIME')
  return t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
end
local function batch_end_check(bid)
  local bk = '""" + _BATCH_PREFIX + """' .. bid
  local f = redis.call('HMGET', bk, 'total', 'added', 'queued', 'started', 'paused', 'ended_at', 'ttl')
  local live = tonumber(f[3] or '0') + tonumber(f[4] or '0') + tonumber(f[5] or '0')
  local ended = f[6] and f[6] ~= ''
  if f[1] == f[2] and live == 0 then
    if not ended then
      local now = hook_now()
      redis.call('HSET', bk, 'ended_at', now)
      local ttl = tonumber(f[7] or '86400')
      for _, k in ipairs({bk, bk .. ':jobs', bk .. ':webhooks'}) do redis.call('EXPIRE', k, ttl) end
      redis.call('PUBLISH', '""" + EVENTS_CHANNEL + """', '{"id":"' .. bid .. '","status":"finished","kind":"batch"}')
      webhooks_due(bk .. ':webhooks', 'batch.finished', now)
    end
  elseif ended then
    redis.call('HSET', bk, 'ended_at', '')
    for _, k in ipairs({bk, bk .. ':jobs', bk .. ':webhooks'}) do redis.call('PERSIST', k) end
    redis.call('PUBLISH', '""" + EVENTS_CHANNEL + """', '{"id":"' .. bid .. '","status":"running","kind":"batch"}')
  end
end
local function on_status(job_key, from, to, pre)
  if from == to then return end
  local f = pre or redis.call('HMGET', job_key, 'batches', 'webhooks')
  if not f[1] and not f[2] then return end
  local terminal = to == 'finished' or to == 'failed' or to == 'canceled'
  if f[2] and terminal then webhooks_due(job_key .. ':webhooks', 'job.' .. to, hook_now()) end
  if not f[1] or f[1] == '' then return end
  for bid in string.gmatch(f[1], '%S+') do
    local bk = '""" + _BATCH_PREFIX + """' .. bid
    if redis.call('EXISTS', bk) == 1 then
      redis.call('HINCRBY', bk, from, -1)
      redis.call('HINCRBY', bk, to, 1)
      if terminal or from == 'finished' or from == 'failed' or from == 'canceled' then
        batch_end_check(bid)
      end
    end
  end
end
"""

#: Write one chunk of a batch's items. KEYS: batch hash, batch items list, batch webhooks list.
#: ARGV: batch id, now, 1 for the first chunk (creates the batch) else 0, total items, result TTL,
#: field/value count of the batch hash, its field/value pairs, then per item: request-cache key,
#: the new job's id, the count of packed command arguments that create and enqueue it, those arguments.
#: Each item is answered as its own submit would be: a live identical job is joined, a finished one
#: whose result is still kept answers from cache, otherwise the new job is created and enqueued (its
#: request-cache entry claimed in this same step, so it is never seen without its job). Returns
#: {'gone'} when a later chunk finds its batch missing, else {job id, outcome, ...} per item.
ITEMS_LUA = STATUS_HOOK_LUA + """
local bk, lk = KEYS[1], KEYS[2]
local bid, now, first = ARGV[1], ARGV[2], ARGV[3]
local nf = tonumber(ARGV[6])
if first == '1' then
  redis.call('HSET', bk, 'id', bid, 'total', ARGV[4], 'ttl', ARGV[5], 'added', 0, 'created_at', now, 'ended_at', '',
             'queued', 0, 'started', 0, 'paused', 0, 'finished', 0, 'failed', 0, 'canceled', 0)
  if nf > 0 then redis.call('HSET', bk, unpack(ARGV, 7, 6 + nf)) end
elseif redis.call('EXISTS', bk) == 0 then
  return {'gone'}
end
local out, counts, ids = {}, {}, {}
-- Writes that commute within this one atomic step, applied once for the chunk: the items' INCRBYs of one
-- key summed (a client's live count) with that key's EXPIRE after them, and repeats of an SADD or a
-- ZADD NX of the same member (rq's queue set, a lane's waiting client) sent once.
local sums, summed, expiry, once = {}, {}, {}, {}
local i = 7 + nf
while i <= #ARGV do
  local ck, newid, n = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local id, st, outcome = nil, nil, nil
  local v = redis.call('GET', ck)
  local old = v and string.match(v, '^"([0-9a-f]+)"$')
  if old then
    local jk = '""" + _JOB_PREFIX + """' .. old
    local s = redis.call('HGET', jk, 'status')
    if s == 'queued' or s == 'started' or s == 'paused' then
      id, st, outcome = old, s, 'joined'
    elseif s == 'finished' then
      local meta = redis.call('HGET', jk, 'result_meta')
      local chunks = 0
      if meta and meta ~= '' then chunks = cjson.decode(meta).chunks or 0 end
      if chunks == 0 or redis.call('EXISTS', jk .. ':result') == 1 then id, st, outcome = old, s, 'cached' end
    end
  end
  if not id then
    redis.call('SET', ck, '"' .. newid .. '"')
    local j, stop = i + 3, i + 2 + n
    while j <= stop do
      local c, name = tonumber(ARGV[j]), ARGV[j + 1]
      if name == 'INCRBY' and c == 3 then
        local k = ARGV[j + 2]
        if not sums[k] then sums[k] = 0; table.insert(summed, k) end
        sums[k] = sums[k] + tonumber(ARGV[j + 3])
      elseif name == 'EXPIRE' and c == 3 and sums[ARGV[j + 2]] then
        expiry[ARGV[j + 2]] = ARGV[j + 3]
      elseif (name == 'SADD' and c == 3) or (name == 'ZADD' and c == 5 and ARGV[j + 3] == 'NX') then
        local m = name .. ' ' .. ARGV[j + 2] .. ' ' .. ARGV[j + c]
        if not once[m] then once[m] = true; redis.call(unpack(ARGV, j + 1, j + c)) end
      else
        redis.call(unpack(ARGV, j + 1, j + c))
      end
      j = j + c + 1
    end
    id, st, outcome = newid, 'queued', 'created'
  end
  local jk = '""" + _JOB_PREFIX + """' .. id
  local b = outcome ~= 'created' and redis.call('HGET', jk, 'batches')
  redis.call('HSET', jk, 'batches', (b and b ~= '' and (b .. ' ') or '') .. bid)
  counts[st] = (counts[st] or 0) + 1
  table.insert(ids, id)
  table.insert(out, id)
  table.insert(out, outcome)
  i = i + 3 + n
end
for _, k in ipairs(summed) do
  redis.call('INCRBY', k, sums[k])
  if expiry[k] then redis.call('EXPIRE', k, expiry[k]) end
end
for a = 1, #ids, 500 do redis.call('RPUSH', lk, unpack(ids, a, math.min(#ids, a + 499))) end
for s, c in pairs(counts) do redis.call('HINCRBY', bk, s, c) end
redis.call('HINCRBY', bk, 'added', #out / 2)
batch_end_check(bid)
return out
"""


#: FORGET: a live job about to be deleted ends, for its batches and webhooks, as canceled: KEYS[1] = job hash.
#: Its status becomes canceled in this same step (so a worker's finish can no longer count it again), its
#: batches' counts move, and its waiting webhooks become due as job.canceled. Returns the status it had.
FORGET_LUA = STATUS_HOOK_LUA + """
local cur = redis.call('HGET', KEYS[1], 'status')
if cur == 'queued' or cur == 'started' or cur == 'paused' then
  redis.call('HSET', KEYS[1], 'status', 'canceled')
  on_status(KEYS[1], cur, 'canceled')
end
return cur
"""
