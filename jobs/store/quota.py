"""Per-client storage quota (MAX_STORED_BYTES_PER_CLIENT): the inputs and results one client holds.

Counting. Each client has a hash STORED_KEY (job id -> bytes that job holds) and a total
STORED_TOTAL_KEY. A job's bytes are added inside the atomic steps that store them: the input in
the job's creation step (Lifecycle.creation_commands), the result in its finish step
(Lifecycle.finish), a result copied from another owner's job (jobs.sharing) in the copy's step.
They are released by the delete (RELEASE_LUA), and, for jobs whose keys simply expired (results
after RESULT_TTL, paused jobs after PAUSED_TTL), by the reaper's sweep (SWEEP_STORED_LUA): it walks
one client's hash a slice at a time and drops the entries whose job hash is gone, so the count
heals whatever happened (a crash between two steps included) within a pass.

Checking. A submission is refused with 429 before anything is stored when the client's total plus
the new input would pass the limit: for the API's submit inside its admission script (Admission.stored_limit,
ADMIT_LUA; a separate GET was one more round trip per job, 7 instead of 6 for a trivial job), elsewhere
(pages, batches) with check(). The check reads the total once; submissions of one
client racing each other can overshoot by what they store at once (at most a few uploads), which
the next check then refuses. The bytes counted are the stored payload (input blob, result items
or text), not Redis's per-key overhead.
"""

from __future__ import annotations

import math
from typing import Any

from jobs.store.admission import Rejected
from jobs.store.keys import JOB_KEY, PREFIX

#: Hash: job id -> bytes of input and result that job holds, for one client.
STORED_KEY = PREFIX + "client:{client}:stored"
#: Integer: the sum of STORED_KEY's values (kept beside it so the check is one GET).
STORED_TOTAL_KEY = PREFIX + "client:{client}:stored:total"
#: Set: clients with a STORED_KEY, for the sweep.
STORED_CLIENTS_KEY = PREFIX + "stored:clients"
#: String: where the sweep resumes (client, HSCAN cursor).
STORED_SWEEP_KEY = PREFIX + "stored:sweep"


def count_commands(client: str | None, job_id: str, nbytes: int) -> list[tuple[Any, ...]]:
    """Commands adding a job's stored bytes to its client's count (none for jobs without a client)."""
    if not client or nbytes <= 0:
        return []
    return [("HINCRBY", STORED_KEY.format(client=client), job_id, nbytes),
            ("INCRBY", STORED_TOTAL_KEY.format(client=client), nbytes),
            ("SADD", STORED_CLIENTS_KEY, client)]


#: RELEASE: a deleted job's bytes leave its client's count.
#: KEYS[1] = the client's STORED_KEY, KEYS[2] = its STORED_TOTAL_KEY. ARGV[1] = the job id.
RELEASE_LUA = """
local b = redis.call('HGET', KEYS[1], ARGV[1])
if b then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('DECRBY', KEYS[2], b)
end
return b
"""

#: SWEEP_STORED: one slice of the sweep that releases the bytes of jobs whose keys expired.
#: KEYS[1] = STORED_CLIENTS_KEY, KEYS[2] = STORED_SWEEP_KEY. ARGV[1] = STORED_KEY's prefix (the client
#: follows), ARGV[2] = its suffix, ARGV[3] = STORED_TOTAL_KEY's suffix, ARGV[4] = the job hash key's
#: prefix, ARGV[5] = HSCAN COUNT. Returns the bytes released. Touches keys named by the set (a client's
#: hash, its jobs): standalone Redis and Sentinel allow that; Cluster would not.
SWEEP_STORED_LUA = """
local state = redis.call('HMGET', KEYS[2], 'client', 'cursor')
local client, cursor = state[1], state[2] or '0'
if not client or redis.call('SISMEMBER', KEYS[1], client) == 0 then
  client = redis.call('SRANDMEMBER', KEYS[1])
  cursor = '0'
  if not client then return 0 end
end
local hash = ARGV[1] .. client .. ARGV[2]
local total = ARGV[1] .. client .. ARGV[3]
local page = redis.call('HSCAN', hash, cursor, 'COUNT', tonumber(ARGV[5]))
local released = 0
for i = 1, #page[2], 2 do
  if redis.call('EXISTS', ARGV[4] .. page[2][i]) == 0 then
    redis.call('HDEL', hash, page[2][i])
    released = released + tonumber(page[2][i + 1])
  end
end
if released > 0 then redis.call('DECRBY', total, released) end
if page[1] == '0' then
  if redis.call('HLEN', hash) == 0 then
    redis.call('SREM', KEYS[1], client)
    redis.call('DEL', total)
  end
  redis.call('DEL', KEYS[2])
else
  redis.call('HSET', KEYS[2], 'client', client, 'cursor', page[1])
end
return released
"""


def sweep_args(count: int = 500) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of one SWEEP_STORED slice."""
    prefix, _, suffix = STORED_KEY.partition("{client}")
    return ([STORED_CLIENTS_KEY, STORED_SWEEP_KEY],
            [prefix, suffix, suffix + ":total", JOB_KEY.format(id=""), count])


def input_bytes(sub: Any) -> int:
    """Bytes a submission stores as its input (a sort's packed numbers, a CSV upload), 0 for none."""
    if getattr(sub, "input", None) is not None:
        return len(sub.input)
    if getattr(sub, "input_chunks", None) is not None:
        return int(sub.params.get("size", 0))
    return 0


def check(conn: Any, client: str, adding: int, limit: int) -> None:
    """Raise the quota's Rejected (429) when the client holds `limit` bytes, or would with `adding` more.
    (The API's single submit checks it inside its lookup script instead: Admission.stored_limit.)"""
    if limit <= 0:
        return
    held = int(conn.get(STORED_TOTAL_KEY.format(client=client)) or 0)
    if held + adding > limit:
        raise rejection(held, adding, limit)


def rejection(held: int, adding: int, limit: int) -> Rejected:
    """The quota's 429 for a client holding `held` bytes that asked to store `adding` more."""
    return Rejected("quota", 60, f"this client holds {held} bytes of inputs and results; with this request's "
                                 f"{adding} it would pass MAX_STORED_BYTES_PER_CLIENT ({limit} bytes). Delete "
                                 "jobs you no longer need (DELETE /api/v1/jobs/{id}), or wait for results to "
                                 f"expire (retry in {math.ceil(60)} s or later)")
