"""`python -m bench.batch_counts`: why batch counts are kept by the lifecycle's transitions (jobs.store.batches).

Redis CPU of the TRANSITION script with the status hook, for jobs in no batch and in one, against
the script without the hook; and counting a 10,000-item batch's statuses from its items instead.
Runs its own valkey (the embedded one) in a temporary directory.
"""

import tempfile
import time
import uuid
from pathlib import Path

from redis import Redis

from infra.embedded_redis import EmbeddedRedis
from jobs.store import scripts
from jobs.store.commands import LuaScript
from jobs.store.scripts import REPLAY_LUA

_tmp = tempfile.TemporaryDirectory(prefix="crunch-batch-counts-")
_srv = EmbeddedRedis(Path(_tmp.name)).start()
conn = Redis.from_url(_srv.url)
#: TRANSITION without the hook, for comparison.
PLAIN = REPLAY_LUA + scripts.TRANSITION_LUA.split(scripts.STATUS_HOOK_LUA, 1)[1].replace(
    "on_status(KEYS[1], cur, ARGV[2])\n", "")
assert "on_status" not in PLAIN
hooked, plain = LuaScript(conn, scripts.TRANSITION_LUA), LuaScript(conn, PLAIN)
N = 10000


def cpu() -> float:
    i = conn.info("cpu")
    return i["used_cpu_user"] + i["used_cpu_sys"]


def run(script: LuaScript, batch: str | None = None) -> tuple[list[str], list[float]]:
    ids = [uuid.uuid4().hex for _ in range(N)]
    p = conn.pipeline(transaction=False)
    for j in ids:
        p.hset(f"crunch:job:{j}", mapping={"status": "queued", "runs": 1, **({"batches": batch} if batch else {})})
    p.execute()
    if batch:
        conn.hset(f"crunch:batch:{batch}", mapping={"id": batch, "total": N, "added": N, "queued": N, "started": 0,
                  "paused": 0, "finished": 0, "failed": 0, "canceled": 0, "ended_at": "", "ttl": 600})
    script(keys=["crunch:job:x"], args=["queued", "started", "", 0])  # load
    res = []
    for frm, to in (("queued", "started"), ("started", "finished")):
        c0 = cpu()
        for k in range(0, N, 500):
            p = conn.pipeline(transaction=False)
            for j in ids[k:k + 500]:
                p.evalsha(script.sha, 1, f"crunch:job:{j}", frm, to, "", 0)
            p.execute()
        res.append((cpu() - c0) / N * 1e6)
    return ids, res
for label, script, batch in (("no hook", plain, None), ("hook, job in no batch", hooked, None),
                             ("hook, job in a batch", hooked, uuid.uuid4().hex)):
    ids, res = run(script, batch)
    print(f"{label:28s} Redis CPU per transition: start {res[0]:.1f} us, finish {res[1]:.1f} us")
count = LuaScript(conn, """
local c = {}
for _, id in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  local s = redis.call('HGET', 'crunch:job:' .. id, 'status') or 'gone'
  c[s] = (c[s] or 0) + 1
end
return cjson.encode(c)
""")
conn.rpush("crunch:batch:x:jobs", *ids)
count(keys=["crunch:batch:x:jobs"])
t0, c0 = time.perf_counter(), cpu()
for _ in range(20):
    count(keys=["crunch:batch:x:jobs"])
print(f"counting 10,000 items' statuses in one script: {(time.perf_counter() - t0) / 20 * 1000:.1f} ms wall, "
      f"{(cpu() - c0) / 20 * 1000:.1f} ms Redis CPU per read; reading the kept counts: one HGETALL")
_srv.stop()
_tmp.cleanup()
