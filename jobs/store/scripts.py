"""Every Lua script of the job lifecycle. jobs.store.commands sends them and records the commands they replay.

Each script is headed by what its KEYS and ARGV hold, as rq's own scripts are. A state change and
all its bookkeeping are one script, hence one atomic round trip: the packed-command tail (see
jobs.store.commands.packed()) lets a caller add writes (rq's enqueue, a worker's own hash) to the same step.
jobs.store.lifecycle names the operations that run them.
"""

from __future__ import annotations

from jobs.store.batches import STATUS_HOOK_LUA

#: Shared by the scripts below, so a state change and all its bookkeeping cost one round trip and
#: happen atomically: replay(i) runs the commands packed in ARGV from index i on, each as its
#: argument count then its arguments (see jobs.store.commands.packed()); one that starts with "?eq KEY VALUE" runs only
#: while GET KEY == VALUE (the request cache's compare-and-set); "?head ZSET LIST HASH MEMBER" re-scores
#: MEMBER in ZSET by LIST's first item's entry in HASH, or removes it when LIST is empty (a lane's waiting
#: client after its line changed at the head; see jobs.store.dispatch).
REPLAY_LUA = """
local function replay(i)
  while i <= #ARGV do
    local n = tonumber(ARGV[i])
    if ARGV[i + 1] == '?eq' then
      if redis.call('GET', ARGV[i + 2]) == ARGV[i + 3] then redis.call(unpack(ARGV, i + 4, i + n)) end
    elseif ARGV[i + 1] == '?head' then
      local head = redis.call('LINDEX', ARGV[i + 3], 0)
      if head then
        redis.call('ZADD', ARGV[i + 2], redis.call('HGET', ARGV[i + 4], head) or '0', ARGV[i + 5])
      else
        redis.call('ZREM', ARGV[i + 2], ARGV[i + 5])
      end
    else
      redis.call(unpack(ARGV, i + 1, i + n))
    end
    i = i + n + 1
  end
end
"""

#: ADMIT (a function; see jobs.store.admission): the checks, as the opening of a script: KEYS[first] is the
#: live count, then two keys per limit
#: (Admission.script_keys), then the client's stored-bytes total when a quota applies; ARGV from `a` on as
#: Admission.script_args (ending with the quota and the bytes to add). Returns a rejection reply (the quota
#: first, so a refused submission spends no budget), or counts the submission in every limit and falls through.
ADMIT_LUA = """
local function admit(first, a)
  local bound, n = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  local quota = tonumber(ARGV[a + 3 * n + 2] or '0')
  if quota > 0 then
    local held = tonumber(redis.call('GET', KEYS[first + 2 * n + 1]) or '0')
    if held + tonumber(ARGV[a + 3 * n + 3]) > quota then return {'quota', held} end
  end
  for i = 1, n do
    local amount, share = tonumber(ARGV[a + 3 * i - 1]), tonumber(ARGV[a + 3 * i + 1])
    local cur = tonumber(redis.call('GET', KEYS[first + 2 * i - 1]) or '0')
    local prev = tonumber(redis.call('GET', KEYS[first + 2 * i]) or '0')
    if prev * (1 - share) + cur + 1 > amount then return {'limited', i} end
  end
  for i = 1, n do
    local key = KEYS[first + 2 * i - 1]
    redis.call('INCR', key)
    redis.call('EXPIRE', key, 2 * tonumber(ARGV[a + 3 * i]))
  end
  if bound > 0 then
    local live = tonumber(redis.call('GET', KEYS[first]) or '0')
    if live >= bound then return {'busy', live} end
  end
  return false
end
"""

#: TRANSITION: compare-and-set a job's status, with its bookkeeping.
#: KEYS[1] = job hash. ARGV[1] = statuses it may leave (comma list), ARGV[2] = new status,
#: ARGV[3] = the `runs` the job must still have ('' = any: guards a re-enqueue against a run it did not see),
#: ARGV[4] = count n of the field/value arguments that follow, ARGV[5..4+n] = fields, then packed commands
#: replayed only when the status matched. Returns the previous status, or false.
TRANSITION_LUA = REPLAY_LUA + STATUS_HOOK_LUA + """
local f = redis.call('HMGET', KEYS[1], 'status', 'runs', 'batches', 'webhooks')
local cur = f[1]
if not cur then return false end
local ok = false
for s in string.gmatch(ARGV[1], '[^,]+') do if s == cur then ok = true end end
if not ok then return false end
if ARGV[3] ~= '' and f[2] ~= ARGV[3] then return false end
local n = tonumber(ARGV[4])
redis.call('HSET', KEYS[1], 'status', ARGV[2], unpack(ARGV, 5, 4 + n))
on_status(KEYS[1], cur, ARGV[2], {f[3], f[4]})
replay(5 + n)
return cur
"""

#: CLAIM: a new job's creation. KEYS[1] = request-cache entry. ARGV[1] = the entry's value (the job id,
#: JSON), then packed commands (write the record, enqueue it) replayed only if the entry was free (SET NX,
#: no expiry): nobody ever sees the entry without its job. Returns false once claimed, else the entry.
CLAIM_LUA = REPLAY_LUA + """
if redis.call('SET', KEYS[1], ARGV[1], 'NX') then
  replay(2)
  return false
end
return redis.call('GET', KEYS[1])
"""

#: Reads a job (flat HGETALL) and, when its result is small (at most `max` JSON bytes), the result's chunks.
READ_JOB_LUA = """
local function read_job(key, result_key, max)
  local h = redis.call('HGETALL', key)
  local raw = redis.call('HGET', key, 'result_meta')
  if raw and raw ~= '' then
    local meta = cjson.decode(raw)
    if meta.kind ~= 'text' and (meta.json_bytes or 0) <= max then
      return h, redis.call('LRANGE', result_key, 0, (meta.chunks or 0) - 1)
    end
  end
  return h, false
end
"""

#: READ_WITH_RESULT: KEYS[1] = job hash, KEYS[2] = its result chunks; ARGV[1] = most JSON bytes.
#: Returns {HGETALL flat, chunks or false}.
READ_WITH_RESULT_LUA = READ_JOB_LUA + """
local h, chunks = read_job(KEYS[1], KEYS[2], tonumber(ARGV[1]))
return {h, chunks}
"""

#: LOOKUP: a submission's first step, one round trip. KEYS[1] = request-cache entry, then (when ARGV[5]
#: is 1) the admission keys (jobs.store.admission). ARGV: job key prefix, result key prefix and suffix,
#: most JSON bytes, admission flag, admission args. Returns a rejection, {'free'}, {'other', entry}
#: (not a job id) or {'taken', entry, job flat, chunks or false}.
LOOKUP_LUA = ADMIT_LUA + READ_JOB_LUA + """
if ARGV[5] == '1' then
  local no = admit(2, 6)
  if no then return no end
end
local v = redis.call('GET', KEYS[1])
if not v then return {'free'} end
local id = string.match(v, '^"([0-9a-f]+)"$')
if not id then return {'other', v} end
local h, chunks = read_job(ARGV[1] .. id, ARGV[2] .. id .. ARGV[3], tonumber(ARGV[4]))
return {'taken', v, h, chunks}
"""

#: ADMIT_ONLY: admission alone (a submission that never reaches the lookup still spends its budget).
#: KEYS and ARGV as Admission.script_keys/script_args. Returns a rejection or {'ok'}.
ADMIT_ONLY_LUA = ADMIT_LUA + """
local no = admit(1, 1)
if no then return no end
return {'ok'}
"""

#: BEGIN: a run's start. KEYS[1] = job hash, KEYS[2] = control request, KEYS[3] = checkpoint.
#: ARGV[1] = rq id of this run, ARGV[2] = worker, ARGV[3] = now, then packed commands.
#: Reads the job, its control request and checkpoint; when the run is current, the job queued and
#: neither a control request nor a checkpoint exists (a fresh run), also takes STARTED (worker,
#: started_at if unset) and replays the commands. Returns {HGETALL before, control, checkpoint, 1 if taken}.
BEGIN_LUA = REPLAY_LUA + STATUS_HOOK_LUA + """
local h = redis.call('HGETALL', KEYS[1])
if #h == 0 then return {h, false, false, 0} end
local control = redis.call('GET', KEYS[2])
local checkpoint = redis.call('GET', KEYS[3])
local f = {}
for i = 1, #h, 2 do f[h[i]] = h[i + 1] end
if f['rq_id'] ~= ARGV[1] or control or checkpoint or f['status'] ~= 'queued' then
  return {h, control, checkpoint, 0}
end
if not f['started_at'] or f['started_at'] == '' then
  redis.call('HSET', KEYS[1], 'status', 'started', 'worker', ARGV[2], 'started_at', ARGV[3])
else
  redis.call('HSET', KEYS[1], 'status', 'started', 'worker', ARGV[2])
end
on_status(KEYS[1], 'queued', 'started', {f['batches'] or false, f['webhooks'] or false})
replay(4)
return {h, false, false, 1}
"""

#: RELEASE: compare-and-delete a request-cache entry. KEYS[1] = entry; ARGV[1] = the job id (JSON) it
#: must still name. Returns 1 if deleted, else 0.
RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


#: DISPATCH: the next runs of one lane, fair between clients (see jobs.store.dispatch).
#: KEYS[1] = the lane's waiting clients (zset: client -> when its first waiting run joined, ms),
#: KEYS[2] = the lane's join times (hash: run id -> ms), KEYS[3] = rq's list of the lane,
#: KEYS[4] = the set of clients that have runs on record as running (for the reaper's check).
#: ARGV[1] = prefix of a client's line of waiting runs in this lane (the client's name follows),
#: ARGV[2], ARGV[3] = prefix and suffix of a client's running runs (zset: run id -> dispatch time),
#: ARGV[4] = the entry the worker popped off rq's list ('' = none), ARGV[5] = now (epoch seconds),
#: ARGV[6] = now (ms), ARGV[7] = the most runs to take (1 unless the worker runs a lane inline),
#: ARGV[8] = the share: take at most one run per this many waiting (so other workers get theirs).
#: Each run is picked as a single dispatch would pick it (so a take of several is fair too), taken off
#: every waiting structure and counted as its client's running run; rq's list loses the taken runs'
#: entries, and the popped entry goes back when its run still waits (the list holds exactly the waiting
#: runs' ids, so it never carries an entry for a run that is gone).
#: Returns {run id, client, run id, client, ...}; {entry, ''} for a popped entry no lane knows (queued
#: before fair dispatch existed); false when nothing waits.
DISPATCH_LUA = """
local function pick()
  local best, bestn
  local from = 0
  while true do
    local page = redis.call('ZRANGE', KEYS[1], from, from + 63)
    for _, c in ipairs(page) do
      local n = redis.call('ZCARD', ARGV[2] .. c .. ARGV[3])
      if not best or n < bestn then best, bestn = c, n end
      if n == 0 then return best end
    end
    if #page < 64 then return best end
    from = from + 64
  end
end
local function take()
  for _ = 1, 8 do
    local client = pick()
    if not client then return nil end
    local line = ARGV[1] .. client
    local run = redis.call('LPOP', line)
    if run then
      local head = redis.call('LINDEX', line, 0)
      if head then
        redis.call('ZADD', KEYS[1], redis.call('HGET', KEYS[2], head) or ARGV[6], client)
      else
        redis.call('ZREM', KEYS[1], client)
      end
      redis.call('HDEL', KEYS[2], run)
      redis.call('ZADD', ARGV[2] .. client .. ARGV[3], ARGV[5], run)
      return run, client
    end
    redis.call('ZREM', KEYS[1], client)
  end
  return nil
end
local most = tonumber(ARGV[7])
if most > 1 then
  local share = tonumber(ARGV[8])
  most = math.min(most, math.max(1, math.floor(redis.call('HLEN', KEYS[2]) / share)))
end
local out = {}
local popped_taken = false
for _ = 1, most do
  local run, client = take()
  if not run then break end
  out[#out + 1] = run
  out[#out + 1] = client
  if run == ARGV[4] then
    popped_taken = true
  else
    redis.call('LREM', KEYS[3], 1, run)
  end
  if #out == 2 or client ~= out[#out - 2] then redis.call('SADD', KEYS[4], client) end
end
if #out == 0 then
  if ARGV[4] ~= '' and redis.call('HEXISTS', KEYS[2], ARGV[4]) == 0 then return {ARGV[4], ''} end
  return false
end
if ARGV[4] ~= '' and not popped_taken and redis.call('HEXISTS', KEYS[2], ARGV[4]) == 1 then
  redis.call('LPUSH', KEYS[3], ARGV[4])
end
return out
"""

#: HEAL_LANE: put back on rq's list of a lane the waiting runs that have no entry there. An entry is lost
#: when a worker pops it (BLPOP) and stops before its DISPATCH (a SIGTERM landing on an idle worker as
#: a shutting-down neighbour re-queues its job): the run still waits in its client's line, but no
#: worker ever pops for it. A run is put back only if it was found missing by the previous check too
#: (seconds earlier), so a worker's pop-to-dispatch moment (milliseconds) is never mistaken for a loss.
#: KEYS[1] = the lane's join times (hash: waiting run id -> ms), KEYS[2] = rq's list of the lane.
#: ARGV = the runs found missing by the previous check.
#: Returns {how many entries were pushed, the runs missing now that were not missing before...}.
HEAL_LANE_LUA = """
local waiting = redis.call('HLEN', KEYS[1])
if waiting == 0 or (#ARGV == 0 and redis.call('LLEN', KEYS[2]) >= waiting) then return {0} end
local listed = {}
for _, e in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do listed[e] = true end
local before = {}
for i = 1, #ARGV do before[ARGV[i]] = true end
local out = {0}
for _, run in ipairs(redis.call('HKEYS', KEYS[1])) do
  if not listed[run] then
    if before[run] then
      redis.call('RPUSH', KEYS[2], run)
      out[1] = out[1] + 1
    else
      out[#out + 1] = run
    end
  end
end
return out
"""

#: POSITION: how many runs of a lane DISPATCH would take before one waiting run if no new work arrived.
#: KEYS[1] = the lane's waiting clients, KEYS[2] = the lane's join times (as DISPATCH).
#: ARGV[1] = prefix of a client's line in this lane, ARGV[2], ARGV[3] = prefix and suffix of a client's
#: running runs, ARGV[4] = the run's client, ARGV[5] = the run id.
#: Returns the count (0 for a run already dispatched that its worker has yet to start), or false when the
#: run is not waiting in the lane.
POSITION_LUA = """
local k = redis.call('LPOS', ARGV[1] .. ARGV[4], ARGV[5])
if not k then
  if redis.call('ZSCORE', ARGV[2] .. ARGV[4] .. ARGV[3], ARGV[5]) then return 0 end
  return false
end
local t = tonumber(redis.call('HGET', KEYS[2], ARGV[5]) or '0')
local key = redis.call('ZCARD', ARGV[2] .. ARGV[4] .. ARGV[3]) + k
local pos = k
for _, c in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if c ~= ARGV[4] then
    local line = ARGV[1] .. c
    local len = redis.call('LLEN', line)
    local before = key - redis.call('ZCARD', ARGV[2] .. c .. ARGV[3])
    if before > 0 then pos = pos + math.min(len, before) end
    if before >= 0 and before < len then
      local ti = tonumber(redis.call('HGET', KEYS[2], redis.call('LINDEX', line, before)) or '0')
      if ti < t or (ti == t and c < ARGV[4]) then pos = pos + 1 end
    end
  end
end
return pos
"""

#: YIELD: whether a long run should give its worker to another client (preemption; see jobs.worker.runner).
#: KEYS[1] = the lane's waiting clients, KEYS[2] = the lane's preemption lock (string).
#: ARGV[1], ARGV[2] = prefix and suffix of a client's running runs, ARGV[3] = the run's client,
#: ARGV[4] = a waiting client counts once its first run joined at or before this (ms),
#: ARGV[5] = how long the lock holds (ms), ARGV[6] = the run id (the lock's value).
#: Returns 1, and takes the lock (one preemption at a time, so one waiting run does not empty every
#: worker), when another client that has waited that long runs fewer runs than this run's client; else 0.
YIELD_LUA = """
local mine = redis.call('ZCARD', ARGV[1] .. ARGV[3] .. ARGV[2])
for _, c in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[4], 'LIMIT', 0, 64)) do
  if c ~= ARGV[3] and redis.call('ZCARD', ARGV[1] .. c .. ARGV[2]) < mine then
    if redis.call('SET', KEYS[2], ARGV[6], 'NX', 'PX', ARGV[5]) then return 1 end
    return 0
  end
end
return 0
"""

#: UNDUE: drop PAUSED_DUE entries that are still due. KEYS[1] = PAUSED_DUE_KEY; ARGV[1] = now (epoch
#: seconds), ARGV[2..] = job ids. A job paused again since it was read has a later score and keeps it.
UNDUE_LUA = """
local n = 0
for i = 2, #ARGV do
  local s = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if s and tonumber(s) <= tonumber(ARGV[1]) then n = n + redis.call('ZREM', KEYS[1], ARGV[i]) end
end
return n
"""

#: The reaper's sweep over the jobs index, one bounded slice per call, resuming where the last call
#: stopped (wrapping around): an entry whose job hash expired is dropped, so the index cannot grow
#: without bound even when no listing ever reaches old entries. (Runs a dead worker took but never
#: started are the dispatch heal's concern: Lifecycle.heal_dispatch.)
#: KEYS[1] the jobs index (zset: job id -> created ms), KEYS[2] the sweep cursor (string: the score to
#: resume after; absent: from the start). ARGV[1] the job hash key's prefix ("crunch:job:"), ARGV[2] how
#: many entries to look at. Returns how many entries it removed. The job hashes it checks are named by
#: the index, not KEYS: standalone Redis and Sentinel (what Crunch supports) allow that; Cluster would not.
SWEEP_INDEX_LUA = """
local cursor = redis.call('GET', KEYS[2])
local from = cursor and ('(' .. cursor) or '-inf'
local n = tonumber(ARGV[2])
local batch = redis.call('ZRANGEBYSCORE', KEYS[1], from, '+inf', 'WITHSCORES', 'LIMIT', 0, n)
local removed = 0
for i = 1, #batch, 2 do
  if redis.call('EXISTS', ARGV[1] .. batch[i]) == 0 then
    redis.call('ZREM', KEYS[1], batch[i])
    removed = removed + 1
  end
end
if #batch < 2 * n then
  redis.call('DEL', KEYS[2])
else
  redis.call('SET', KEYS[2], batch[#batch], 'EX', 3600)
end
return removed
"""

#: FANOUT_COPY: one step of a split list job's result copy (jobs.store.fanout): its parts' results, in range
#: order, appended inside Redis (no prime crosses the network twice) to the copy's own scratch lists, at most
#: ARGV[2] chunks a step, so no script holds Redis for long (the one-script copy of a [0, 10^9] list, 776
#: chunks and 479 MiB, held it seconds: every other client met BUSY, and the web answered 503).
#: KEYS[1] = the whole job's hash, KEYS[2], KEYS[3] = the scratch chunks and counts, KEYS[4], KEYS[5] = one
#: part's chunks and counts. ARGV[1] = the part's first chunk to copy, ARGV[2] = most chunks, ARGV[3] = 1 to
#: start the scratch lists afresh. Only while the whole job is queued or started (else the scratch lists go).
#: Returns the chunks copied (fewer than ARGV[2]: the part is done), or -1.
#: Shared opening of FANOUT_COPY and FANOUT_COMMIT: KEYS[1] = the whole job's hash, KEYS[2], KEYS[3] = the
#: copy's scratch lists; a job no longer queued or started ends the copy, its scratch lists dropped.
_FANOUT_LIVE_LUA = """
local st = redis.call('HGET', KEYS[1], 'status')
if st ~= 'queued' and st ~= 'started' then
  redis.call('DEL', KEYS[2], KEYS[3])
  return -1
end
"""

FANOUT_COPY_LUA = _FANOUT_LIVE_LUA + """
if ARGV[3] == '1' then redis.call('DEL', KEYS[2], KEYS[3]) end
local a, most = tonumber(ARGV[1]), tonumber(ARGV[2])
local chunks = redis.call('LRANGE', KEYS[4], a, a + most - 1)
if #chunks > 0 then
  redis.call('RPUSH', KEYS[2], unpack(chunks))
  redis.call('RPUSH', KEYS[3], unpack(redis.call('LRANGE', KEYS[5], a, a + #chunks - 1)))
  redis.call('EXPIRE', KEYS[2], 3600)
  redis.call('EXPIRE', KEYS[3], 3600)
end
return #chunks
"""

#: FANOUT_COMMIT: the copy's scratch lists become the whole job's result lists (RENAME: O(1)), while the whole
#: job is still queued or started; a copy that lost the race to another settle's finish drops its lists.
#: KEYS[1] = the whole job's hash, KEYS[2], KEYS[3] = the scratch chunks and counts, KEYS[4], KEYS[5] = the
#: job's result chunks and counts. Returns 1, or -1.
FANOUT_COMMIT_LUA = _FANOUT_LIVE_LUA + """
redis.call('DEL', KEYS[4], KEYS[5])
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('RENAME', KEYS[2], KEYS[4])
  redis.call('RENAME', KEYS[3], KEYS[5])
  redis.call('PERSIST', KEYS[4])
  redis.call('PERSIST', KEYS[5])
end
return 1
"""
