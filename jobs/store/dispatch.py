"""Dispatch: which waiting run a worker starts next, fair between clients, per lane.

A lane is one of rq's queues (`fast` for cheap jobs, `default` for the rest). A client is the job
record's `client`: the token owner (`owner:NAME`) when API_TOKENS is set, else the client address.
Every waiting run is kept in three places, written by the lifecycle's enqueue in the same atomic step:

    rq:queue:{lane}                    rq's own list, one entry per waiting run: rq stays the transport
                                       (workers block on it with BLPOP; /rq and Queue.count still see it)
    crunch:lane:{lane}:client:{c}      the client's waiting runs, oldest first (submission order)
    crunch:lane:{lane}:clients         zset: clients with waiting runs, scored by when their first one joined
    crunch:lane:{lane}:since           hash: run id -> when it joined the lane (ms)

and every dispatched run in `crunch:client:{c}:running` (zset: run id -> dispatch time) until it
ends, so a client's running count is one ZCARD, parts of a split job included (each part is a run).

A worker's BLPOP pops *an* entry of rq's list; the entry stands for "some run of this lane waits",
not for itself. The worker then calls the lifecycle's `dispatch` (one Lua script, DISPATCH_LUA): it
picks the client with the fewest running runs (ties: the client whose first waiting run joined
first), pops that client's oldest run, counts it as running, and swaps the entries in rq's list so
the list again holds exactly the waiting runs. One script per dispatch, so two workers on two hosts
never take the same run or miscount. Without it (a plain BLPOP on one list), dispatch is FIFO and
one client's backlog holds everyone else back.

The order is a static sort, which is what makes `position` cheap: the i-th waiting run (from 0) of
client c is dispatched in the order of the key (running(c) + i, since(run), c), because each step
takes the client with the smallest (running, since of its first run, name) and then that client's
running count grows by one. So a run's position is its own index plus, for each other client, how
many of its runs have a smaller key: O(clients), one script (POSITION_LUA).

Why the waiting clients are scored by time and not by running count: a running count changes at
every run's end, in many scripts (finish, fail, cancel, pause, requeue, recover), and each would have
to re-score the client in every lane; scored by time, only the lane's own steps touch the zset, and
DISPATCH scans it in time order and stops at the first client that runs nothing (the common case),
else takes the least-running one it saw (O(waiting clients), pages of 64).

Taking several runs: a worker that runs the fast lane inline asks for up to FAST_TAKE runs
(jobs.worker.rq_worker) and gets at most one per DISPATCH_SHARE waiting runs, each picked as a single
dispatch would pick it, so the order (and `position`) is unchanged; it starts them one after another
and gives back the ones it did not start if it stops (Lifecycle.undispatch; a worker that dies is
healed by the reaper). A burst of thousands (a batch) then costs one pop and one dispatch per handful
of runs instead of per run; one or two waiting runs are still taken one at a time, so an idle
neighbour gets the next.

rq's list holds exactly the waiting runs' ids. The popped entry goes back only when its run still
waits: two workers whose pops cross (each pops the entry of the run the other gets) would otherwise
leave an entry for a run already taken, and every later dispatch would swap it around (an LREM and an
LPUSH per job, seen on 97 % of the trivial jobs of the throughput bench before this was fixed).

A split job's parts: enqueue each part as its own run (Lifecycle._enqueue_commands with the part's
run id, or join_commands), so parts wait in their client's line and dispatch one by one, and ride
ended_commands(client, part run id) along with each part's end; the reaper's check (heal_dispatch)
leaves run ids it does not recognise (not RUN_ID_RE) to their owner.

Cost: the worker's one more round trip per dispatch (BLPOP, then DISPATCH), about 12 Redis commands
inside the script per run; measured in README "Dispatch".
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from redis import Redis

from jobs.store.commands import LuaScript
from jobs.store.keys import (
    CLIENT_RUNNING_KEY,
    LANE_CLIENT_KEY,
    LANE_CLIENTS_KEY,
    LANE_SINCE_KEY,
    RUNNING_CLIENTS_KEY,
)
from jobs.store.queues import JsonQueue
from jobs.store.record import JobRecord
from jobs.store.scripts import POSITION_LUA

#: A worker that runs a lane inline (the fast lane) takes up to this many runs per dispatch, and at most
#: one per DISPATCH_SHARE waiting runs, so a burst is shared between the idle workers and one or two
#: cheap jobs never wait behind a worker's handful. See the module doc ("Taking several runs").
DISPATCH_SHARE = 4
#: A run of a whole Crunch job, as rq queues it: "<job id>-<run>".
RUN_ID_RE = re.compile(r"^([0-9a-f]{32})-[0-9]+$")
#: The client of a job that has none on record (made before clients were recorded).
ANONYMOUS = "-"
_LANE_LIST_PREFIX = LANE_CLIENT_KEY.split("{client}")[0]
_RUNNING_AFFIXES = CLIENT_RUNNING_KEY.split("{client}")


def client_of(rec: JobRecord) -> str:
    """Who the job belongs to for fair share: the token owner, else the client address."""
    return rec.extra.get("client") or ANONYMOUS


def rq_list(lane: str) -> str:
    """rq's list of a lane."""
    return JsonQueue.redis_queue_namespace_prefix + lane


def lane_keys(lane: str) -> list[str]:
    """KEYS of DISPATCH_LUA and POSITION_LUA (the first two), for one lane."""
    return [LANE_CLIENTS_KEY.format(lane=lane), LANE_SINCE_KEY.format(lane=lane), rq_list(lane),
            RUNNING_CLIENTS_KEY]


def lane_args(lane: str) -> list[str]:
    """The key prefixes DISPATCH_LUA, POSITION_LUA and YIELD_LUA build per-client keys from."""
    return [LANE_CLIENT_KEY.format(lane=lane, client=""), *_RUNNING_AFFIXES]


def join_commands(lane: str, client: str, run_id: str, now_ms: int, front: bool = False) -> list[tuple[Any, ...]]:
    """A run joins its client's line in a lane (rq's own enqueue writes rq's entry beside these).

    front: a preempted run goes back to the head of its client's line (it was submitted before the
    client's other waiting runs), and its client is re-scored by it (`?head`, see REPLAY_LUA): a
    client that just gave a worker back comes after clients with as many runs running."""
    line = LANE_CLIENT_KEY.format(lane=lane, client=client)
    clients = LANE_CLIENTS_KEY.format(lane=lane)
    since = LANE_SINCE_KEY.format(lane=lane)
    if front:
        return [("LPUSH", line, run_id), ("HSET", since, run_id, now_ms), ("?head", clients, line, since, client)]
    return [("RPUSH", line, run_id), ("HSET", since, run_id, now_ms), ("ZADD", clients, "NX", now_ms, client)]


def leave_commands(lane: str, client: str, run_id: str) -> list[tuple[Any, ...]]:
    """A waiting run leaves its lane (pause or cancel while queued): the client's line and times."""
    line = LANE_CLIENT_KEY.format(lane=lane, client=client)
    clients = LANE_CLIENTS_KEY.format(lane=lane)
    since = LANE_SINCE_KEY.format(lane=lane)
    return [("LREM", line, 1, run_id), ("HDEL", since, run_id), ("?head", clients, line, since, client)]


def ended_commands(client: str, run_id: str) -> list[tuple[Any, ...]]:
    """A dispatched run is no longer running (it ended, paused, was re-queued or preempted)."""
    return [("ZREM", CLIENT_RUNNING_KEY.format(client=client), run_id)]


class Schedule:
    """The read side of dispatch: the waiting runs of a lane in dispatch order, and a run's position."""

    def __init__(self, conn: Redis) -> None:
        self.conn = conn
        self._position = LuaScript(conn, POSITION_LUA)

    def position(self, rec: JobRecord) -> int | None:
        """How many runs would be dispatched before this queued job's run if no new work arrived."""
        if not rec.rq_id:
            return None
        got = self._position(keys=lane_keys(rec.queue)[:2],
                             args=[*lane_args(rec.queue), client_of(rec), rec.rq_id])
        return None if got is None else int(got)

    def order(self, lane: str, limit: int | None = None) -> list[str]:
        """Run ids waiting in the lane, in the order DISPATCH_LUA will take them (see the module doc)."""
        clients = [c.decode() for c in self.conn.zrange(LANE_CLIENTS_KEY.format(lane=lane), 0, -1)]
        if not clients:
            return []
        pipe = self.conn.pipeline(transaction=False)
        for c in clients:
            pipe.zcard(CLIENT_RUNNING_KEY.format(client=c))
            pipe.lrange(LANE_CLIENT_KEY.format(lane=lane, client=c), 0, -1 if limit is None else limit - 1)
        replies = pipe.execute()
        lines = [(c, int(replies[2 * k]), [r.decode() for r in replies[2 * k + 1]]) for k, c in enumerate(clients)]
        runs = [run for _, _, line in lines for run in line]
        times = dict(zip(runs, self.conn.hmget(LANE_SINCE_KEY.format(lane=lane), runs), strict=True)) if runs else {}
        keyed = [((running + i, int(times.get(run) or 0), client.encode()), run)
                 for client, running, line in lines for i, run in enumerate(line)]
        keyed.sort()
        out = [run for _, run in keyed]
        return out if limit is None else out[:limit]


def job_ids(runs: Sequence[str]) -> list[str]:
    """Crunch job ids of run ids ("<job id>-<run>")."""
    return [r.rsplit("-", 1)[0] for r in runs]
