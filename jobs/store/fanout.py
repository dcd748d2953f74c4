"""Fan-out: a wide primes job runs as parts on every idle worker at once, and is still one job.

A job whose spec splits it (jobs.types.primes.PrimesJob.split: more than FANOUT_MIN_SECONDS of one
worker's work) is written at claim as a *whole job* that no worker runs (no rq run, `parts` lists its
parts' ids in range order) and its parts: ordinary primes jobs over consecutive sub-ranges, with the
same client, owner and request id and a `parent` field, enqueued in the same claim script. So a part
is a run of the job's own client in fair-share dispatch (jobs.store.dispatch), runs, checkpoints,
is preempted and is recovered from its own checkpoint by the reaper exactly as any job; parts are
in neither the jobs index nor the request cache, and count neither as live jobs nor as stored bytes
(the whole job does).

The whole job follows its parts:
    queued ─(a part starts: started)─► started ─(the last part finishes: settle)─► finished
    a part fails or is canceled ─► the whole job fails, its other parts are canceled
    (except a part marked at a retry, RERUN_FIELD: it runs again; see Fanout.retry)
and pause, resume, cancel, retry and delete of the whole job act on every part (JobService calls
this module). Its progress is the sum of its parts' (read with it). Its result is built by `settle`
from its parts' results: a count is their sum; a list is their chunks copied, in range order, into
its own result lists inside Redis (FANOUT_COPY_LUA), so /result paging stays exact and the inline rules
apply unchanged; a list's parts drop theirs in the step that finishes the whole job (a part's resource
then says `finished` with no result).

`settle` runs after every part's end (in the runner) and from the reaper (FANOUT_LIVE_KEY), and is
idempotent: the copy starts from empty lists and the ending is the lifecycle's compare-and-set.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from typing import Any, TypeVar

import orjson

from jobs.store.commands import Commands, LuaScript, packed, recorded
from jobs.store.events import publish
from jobs.store.keys import (
    FANOUT_COPY_KEY,
    FANOUT_LIVE_KEY,
    JOB_CONTROL_KEY,
    JOB_KEY,
    RESULT_CHUNKS_KEY,
    RESULT_COUNTS_KEY,
    job_keys,
)
from jobs.store.lifecycle import _RETRY_FIELDS, Lifecycle, count_live
from jobs.store.record import JobRecord
from jobs.store.scripts import FANOUT_COMMIT_LUA, FANOUT_COPY_LUA
from jobs.store.status import JobStatus

QUEUED, STARTED, PAUSED = JobStatus.QUEUED, JobStatus.STARTED, JobStatus.PAUSED
FINISHED, FAILED, CANCELED = JobStatus.FINISHED, JobStatus.FAILED, JobStatus.CANCELED
R = TypeVar("R", JobRecord, JobRecord | None)
#: A part's hash field, "1" from its whole job's retry until its own: its stop (or failure) may still come
#: from a run of before the retry, so settle runs it again instead of failing the retried job (Fanout.retry).
RERUN_FIELD = "rerun"
#: Result chunks one copy step moves (FANOUT_COPY_LUA): 16 chunks of 65,536 primes, about 10 MB of JSON,
#: hold Redis some 10-30 ms.
COPY_STEP = 16


def plan(rec: JobRecord, spec: Any, min_seconds: float, max_parts: int) -> list[JobRecord]:
    """The parts of a new job (none when it runs whole); marks `rec` as their whole job."""
    split = getattr(spec, "split", None)
    if split is None or rec.has_input:
        return []
    ranges = split(rec.params, min_seconds, max_parts)
    if not ranges:
        return []
    parts = []
    for lo, hi in ranges:
        params = {**rec.params, "start": lo, "end": hi}
        pid = uuid.uuid4().hex
        extra = {k: v for k, v in rec.extra.items() if k in ("client", "owner", "request_id")}
        parts.append(JobRecord(
            id=pid, type=rec.type, params=params, queue=spec.queue_for(params), cache_key=rec.cache_key,
            pausable=rec.pausable, created_at=rec.created_at, runs=1, rq_id=f"{pid}-1",
            progress={"done": 0, "total": hi - lo + 1, "percent": 0.0}, extra={**extra, "parent": rec.id}))
    rec.extra["parts"] = ",".join(p.id for p in parts)
    rec.rq_id, rec.runs = "", 0
    return parts


class Fanout:
    """The whole job's side of a split job: its start, its end, its progress and its steering."""

    def __init__(self, life: Lifecycle) -> None:
        self.life = life
        self.conn = life.conn
        self._copy = LuaScript(life.conn, FANOUT_COPY_LUA)
        self._commit = LuaScript(life.conn, FANOUT_COMMIT_LUA)

    # -- reading --------------------------------------------------------------------

    def get(self, job_id: str) -> JobRecord | None:
        h = self.conn.hgetall(JOB_KEY.format(id=job_id))
        return JobRecord.from_hash(h) if h else None

    def parts(self, rec: JobRecord) -> list[JobRecord | None]:
        """The parts' records, in range order (None for one that is gone)."""
        return [p for p, _ in self._parts_marked(rec)]

    def _parts_marked(self, rec: JobRecord) -> list[tuple[JobRecord | None, bool]]:
        """The parts' records, in range order, each with whether it carries the retry's RERUN_FIELD."""
        ids = [p for p in rec.extra.get("parts", "").split(",") if p]
        pipe = self.conn.pipeline(transaction=False)
        for pid in ids:
            pipe.hgetall(JOB_KEY.format(id=pid))
        return [(JobRecord.from_hash(h), h.get(RERUN_FIELD.encode()) == b"1") if h else (None, False)
                for h in pipe.execute()]

    def with_progress(self, rec: JobRecord) -> JobRecord:
        """The whole job as its client sees it while it is live: progress summed over its parts, `started`
        while a part runs and `queued` while none does (all waiting, or sent back by a worker's shutdown),
        and `attempt` / `runs` the most of any part's (a part recovered from a lost worker shows)."""
        return self.with_progress_all([rec])[0]

    def with_progress_all(self, recs: list[R]) -> list[R]:
        """with_progress() of many records (a page of the job list) in one round trip; a record that is
        not a live split job (or None, a job gone) is returned as it is, and costs nothing."""
        split = [r for r in recs if r is not None and r.extra.get("parts") and r.status.live]
        if not split:
            return recs
        pipe = self.conn.pipeline(transaction=False)
        for rec in split:
            for pid in rec.extra["parts"].split(","):
                pipe.hmget(JOB_KEY.format(id=pid), "progress", "status", "attempt", "runs")
        replies = iter(pipe.execute())
        for rec in split:
            done, running = 0, False
            for _ in rec.extra["parts"].split(","):
                raw, status, attempt, runs = next(replies)
                if raw:
                    done += int(orjson.loads(raw).get("done") or 0)
                running = running or status == b"started"
                rec.attempt = max(rec.attempt, int(attempt or 0))
                rec.runs = max(rec.runs, int(runs or 0))
            total = int(rec.params["end"]) - int(rec.params["start"]) + 1
            rec.progress = {"done": done, "total": total,
                            "percent": round(100.0 * done / total, 2) if total else 0.0}
            if rec.status in (QUEUED, STARTED):
                rec.status = STARTED if running else QUEUED
        return recs

    # -- the runner's hooks ---------------------------------------------------------------

    def started(self, parent_id: str) -> None:
        """A part started: the whole job is `started` (once; a no-op after)."""
        pipe = Commands()
        publish(pipe, parent_id, STARTED.value)
        fields = {}
        if not self.conn.hget(JOB_KEY.format(id=parent_id), "started_at"):
            fields["started_at"] = repr(time.time())
        self.life.transition(parent_id, (QUEUED,), STARTED, fields, then=packed(recorded(pipe)))

    def settle(self, parent_id: str) -> JobStatus | None:
        """Bring the whole job in line with its parts: end it when every part finished (or one failed),
        resume a part left paused while the whole job runs. Returns the whole job's status."""
        rec = self.get(parent_id)
        if rec is None or not rec.status.live:
            self.conn.srem(FANOUT_LIVE_KEY, parent_id)
            return None if rec is None else rec.status
        if rec.status is PAUSED:
            return rec.status
        marked = self._parts_marked(rec)
        if any(m and p is not None and p.status in (FAILED, CANCELED) for p, m in marked):
            # Stopped by a run of before the retry (Fanout.retry): that ending is not this job's; run it again.
            for p, m in marked:
                if m and p is not None and p.status in (FAILED, CANCELED):
                    self.life.retry(replace(p), also=[("HDEL", JOB_KEY.format(id=p.id), RERUN_FIELD)])
            marked = self._parts_marked(rec)
        # A marked part that ended after the first read is not a failure either: the settle that follows its
        # ending (or the reaper's sweep) runs it again. Two old runs stopping at once made this one read it.
        parts = [p for p, _ in marked]
        bad = next((p for p, m in marked if p is None or (p.status in (FAILED, CANCELED) and not m)), False)
        if bad is not False:
            error = {"type": "PartFailed", "message": "a part of this job is gone"}
            if bad is not None:  # the part's own error (a timeout stays a JobTimeoutException), naming the part
                where = f"part [{bad.params['start']}, {bad.params['end']}]"
                error = {"type": (bad.error or {}).get("type") or "PartFailed",
                         "message": f"{where}: {(bad.error or {}).get('message') or bad.status.value}"}
            if self.life.fail(rec, error, from_=(QUEUED, STARTED)):
                self.conn.srem(FANOUT_LIVE_KEY, parent_id)
                self.stop_parts(rec, "cancel")
            return self.get(parent_id).status if self.get(parent_id) else None
        for p in parts:
            if p is not None and p.status is PAUSED:
                self.life.resume(p)
        if not all(p is not None and p.status is FINISHED for p in parts):
            return rec.status
        return self._finish(rec, [p for p in parts if p is not None])

    def _finish(self, rec: JobRecord, parts: list[JobRecord]) -> JobStatus | None:
        metas = [p.result_meta or {} for p in parts]
        pushes: list[tuple[Any, ...]] = []
        chunks_key, counts_key = RESULT_CHUNKS_KEY.format(id=rec.id), RESULT_COUNTS_KEY.format(id=rec.id)
        if rec.params.get("output") == "count":
            pipe = self.conn.pipeline(transaction=False)
            for p in parts:
                pipe.lrange(RESULT_CHUNKS_KEY.format(id=p.id), 0, -1)
            total = sum(int(orjson.loads(b"".join(chunks))["count"]) for chunks in pipe.execute())
            data = orjson.dumps({"count": total})
            pushes = [("DEL", chunks_key, counts_key), ("RPUSH", chunks_key, data), ("RPUSH", counts_key, 0)]
            meta = {"kind": "value", "chunks": 1, "items": 1, "bytes": len(data), "nonempty": 1,
                    "json_bytes": len(data)}
        else:
            if not self.copy_parts(rec, parts):
                return self.get(rec.id).status if self.get(rec.id) else None
            meta = {"kind": "array"}
            for name in ("chunks", "items", "bytes", "nonempty"):
                meta[name] = sum(int(m.get(name) or 0) for m in metas)
            meta["json_bytes"] = meta["bytes"] + max(meta["nonempty"] - 1, 0) + 2
        stats: dict[str, int] = {}
        for p in parts:
            for k, v in (p.stats or {}).items():
                if isinstance(v, int):
                    stats[k] = stats.get(k, 0) + v
        run_ms = sum(p.run_ms for p in parts)
        total_n = int(rec.params["end"]) - int(rec.params["start"]) + 1
        fields = {"result_meta": orjson.dumps(meta).decode(), "ended_at": repr(time.time()), "run_ms": repr(run_ms),
                  "progress": orjson.dumps({"done": total_n, "total": total_n, "percent": 100.0}).decode(),
                  "stats": orjson.dumps({**stats, "parts": len(parts)}).decode(),
                  "runs": str(max(p.runs for p in parts)), "attempt": str(max(p.attempt for p in parts))}
        drop: list[tuple[Any, ...]] = [("SREM", FANOUT_LIVE_KEY, rec.id)]
        if meta["kind"] == "array":  # the primes now live in the whole job's lists; a count's parts keep theirs
            for p in parts:
                drop += [("DEL", RESULT_CHUNKS_KEY.format(id=p.id), RESULT_COUNTS_KEY.format(id=p.id)),
                         ("HSET", JOB_KEY.format(id=p.id), "result_meta", "")]
        self.life.finish(rec, fields, run_ms / 1000, {}, pushes=pushes, then=drop, from_=(QUEUED, STARTED))
        got = self.get(rec.id)
        return got.status if got else None

    def copy_parts(self, rec: JobRecord, parts: list[JobRecord]) -> bool:
        """A split list job's parts' results into its own result lists, COPY_STEP chunks a script (FANOUT_COPY),
        then swapped in at once (FANOUT_COMMIT). Two settles of one job may copy at the same time: each fills
        its own scratch lists, so neither sees the other's half. False: the job ended meanwhile."""
        job_key = JOB_KEY.format(id=rec.id)
        token = uuid.uuid4().hex
        scratch = [FANOUT_COPY_KEY.format(id=rec.id, token=token, what=w) for w in ("chunks", "counts")]
        first = True
        for p in parts:
            lists = [RESULT_CHUNKS_KEY.format(id=p.id), RESULT_COUNTS_KEY.format(id=p.id)]
            a = 0
            while True:
                n = int(self._copy(keys=[job_key, *scratch, *lists], args=[a, COPY_STEP, int(first)]))
                if n < 0:
                    return False
                first, a = False, a + n
                if n < COPY_STEP:
                    break
        if first:  # no parts at all: the commit below leaves empty result lists
            self.conn.delete(*scratch)
        return int(self._commit(keys=[job_key, *scratch, RESULT_CHUNKS_KEY.format(id=rec.id),
                                      RESULT_COUNTS_KEY.format(id=rec.id)])) > 0

    def sweep(self) -> int:
        """The reaper's pass over split jobs not yet ended (a part's end whose settle a crash cut short)."""
        n = 0
        for raw in self.conn.smembers(FANOUT_LIVE_KEY):
            self.settle(raw.decode())
            n += 1
        return n

    # -- steering (JobService) ---------------------------------------------------------------

    def stop_parts(self, rec: JobRecord, action: str) -> None:
        """Cancel or pause every live part: a waiting one at once, a running one at its next checkpoint."""
        for p in self.parts(rec):
            if p is None or not p.status.live:
                continue
            if p.status is PAUSED and action == "pause":
                continue
            if action == "cancel" and self.life.cancel(p, (QUEUED, PAUSED)):
                continue
            if action == "pause" and p.status is QUEUED and self.life.pause(p, (QUEUED,)):
                continue
            self.conn.set(JOB_CONTROL_KEY.format(id=p.id), action, ex=3600)

    def cancel(self, rec: JobRecord) -> bool:
        if not self.life.cancel(rec, (QUEUED, STARTED, PAUSED)):
            return False
        self.conn.srem(FANOUT_LIVE_KEY, rec.id)
        self.stop_parts(rec, "cancel")
        return True

    def expire_paused(self, rec: JobRecord) -> bool:
        """The reaper's end of a split job paused for PAUSED_TTL (Lifecycle.expire_paused), then its parts'
        cancel, as cancel() does."""
        if not self.life.expire_paused(rec):
            return False
        self.conn.srem(FANOUT_LIVE_KEY, rec.id)
        self.stop_parts(rec, "cancel")
        return True

    def pause(self, rec: JobRecord) -> bool:
        if not self.life.pause(rec, (QUEUED, STARTED)):
            return False
        self.stop_parts(rec, "pause")
        return True

    def resume(self, rec: JobRecord) -> bool:
        """PAUSED -> QUEUED (STARTED once a part runs), every paused part back on its queue."""
        pipe = Commands()
        for key in job_keys(rec.id):
            pipe.persist(key)
        publish(pipe, rec.id, QUEUED.value)
        if self.life.transition(rec.id, (PAUSED,), QUEUED, then=packed(recorded(pipe))) is None:
            return False
        running = False
        for p in self.parts(rec):
            if p is None:
                continue
            if p.status is STARTED:
                # Told to pause, not there yet: let it run on (one that pauses anyway is resumed by settle).
                self.conn.delete(JOB_CONTROL_KEY.format(id=p.id))
                running = True
            elif p.status is PAUSED:
                self.life.resume(p)
        if running:
            self.started(rec.id)
        self.settle(rec.id)
        return True

    def retry(self, rec: JobRecord) -> bool:
        """FAILED or CANCELED -> QUEUED: the parts that did not finish run again, the finished ones stay.

        A part may still run when the retry lands: the cancel that ended the whole job stops a running part
        only at its next checkpoint (JobService.cancel answers at once), and a part's run that stops on it
        after the retry ends the part `canceled` (a run of it requeued meanwhile reads the same pending
        cancel at its start). settle took that ending for a part of the retried job being canceled and
        failed the job (seen once in three runs of test_browser's cancel-and-retry; test_fanout's
        test_a_split_job_retried_while_its_parts_still_stop_finishes, which holds the parts' work horses
        across the cancel and the retry, failed so in its first round in each of 5 runs before this).
        So before the whole job leaves its ending (while settle still leaves it alone), every part that
        did not finish is marked (RERUN_FIELD): a marked part that fails or is canceled is run again by
        settle, whenever its old run stops, and only the part's own retry drops the mark; an old run
        can no longer end the retried job. A still-running part is not given a new run at once instead: a
        list's part writes its result lists as it goes, and two runs would write the same lists."""
        if not all(self._mark_rerun(p) for p in self.parts(rec)):
            return False
        live = Commands()
        count_live(live, rec, 1)
        then: list[tuple[Any, ...]] = [("DEL", RESULT_CHUNKS_KEY.format(id=rec.id), RESULT_COUNTS_KEY.format(id=rec.id),
                                        JOB_CONTROL_KEY.format(id=rec.id))]
        then += [("PERSIST", key) for key in job_keys(rec.id)]
        then += recorded(live)
        then.append(("SET", self.life.cache.full_key(rec.cache_key), self.life.cache.serializer.dumps(rec.id), "NX"))
        then.append(("SADD", FANOUT_LIVE_KEY, rec.id))
        pub = Commands()
        publish(pub, rec.id, QUEUED.value)
        then += recorded(pub)
        if self.life.transition(rec.id, (FAILED, CANCELED), QUEUED, _RETRY_FIELDS, then=packed(then)) is None:
            return False
        self.settle(rec.id)  # runs the marked parts that ended again
        return True

    def _mark_rerun(self, part: JobRecord | None) -> bool:
        """Set RERUN_FIELD on a part that did not finish, by a compare-and-set on its status (its old run may
        move it meanwhile: then read it again), so a part deleted meanwhile is not written back. False: it
        kept moving (the retry answers 409, try again)."""
        for _ in range(8):
            if part is None or part.status is FINISHED:
                return True
            if self.life.transition(part.id, (part.status,), part.status, {RERUN_FIELD: "1"}) is not None:
                return True
            part = self.get(part.id)
        return False
