"""What the queues and workers are doing: the API's /queues and /workers, the operations page, the job
page's waiting line and the health check's worker count. It only reads.

Apart from jobs.service (the facade that submits and steers jobs), so that each reads in one sitting;
JobService.overview is the one instance the web uses.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from redis import Redis
from rq.queue import Queue
from rq.worker import Worker, WorkerStatus

from jobs.settings import Settings
from jobs.store.dispatch import Schedule, job_ids
from jobs.store.keys import JOB_KEY, QUEUE_STATS_KEY, QUEUES, RUNNING_KEY
from jobs.store.record import JobRecord
from jobs.store.status import JobStatus


class Overview:
    """The queues' depths and totals, the live workers and what they run, and why a queued job waits."""

    def __init__(self, conn: Redis, settings: Settings, schedule: Schedule,
                 queue: Callable[[str], Queue]) -> None:
        self.conn = conn
        self.settings = settings
        self.schedule = schedule
        self.queue = queue

    def running_per_queue(self) -> dict[str, int]:
        """Started jobs per queue, from Crunch's running set (fast runs leave no trace in rq's registries)."""
        ids = [m.decode() for m in self.conn.zrange(RUNNING_KEY, 0, -1)]
        pipe = self.conn.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(JOB_KEY.format(id=job_id), "queue", "status")
        counts: dict[str, int] = {}
        for queue, status in pipe.execute() if ids else ():
            if queue and status == JobStatus.STARTED.value.encode():
                counts[queue.decode()] = counts.get(queue.decode(), 0) + 1
        return counts

    def queues(self) -> list[dict[str, Any]]:
        workers = Worker.all(connection=self.conn)
        started = self.running_per_queue()
        out = []
        for name in QUEUES:
            q = self.queue(name)
            stats = {k.decode(): int(v) for k, v in
                     self.conn.hgetall(QUEUE_STATS_KEY.format(name=name)).items()}
            out.append({
                "name": name,
                "queued": q.count,
                "started": started.get(name, 0),
                "finished": stats.get("finished", 0),
                "failed": stats.get("failed", 0),
                "canceled": stats.get("canceled", 0),
                "workers": sum(1 for w in workers if name in w.queue_names()),
            })
        return out

    def queue_job_ids(self, name: str) -> list[str]:
        """Crunch job ids waiting in a queue, in dispatch order (jobs.store.dispatch): the lane's runs, then
        any run rq's list holds that no lane knows (queued before fair dispatch; taken once the lane is empty)."""
        runs = self.schedule.order(name)
        known = set(runs)
        runs += [r for r in self.queue(name).get_job_ids() if r not in known]
        return job_ids(runs)

    def waiting_line(self, rec: JobRecord) -> str | None:
        """Why a queued job waits, for the job page: "waiting: N ahead, all W workers busy"."""
        pos = self.schedule.position(rec) if rec.status is JobStatus.QUEUED else None
        if pos is None:
            return None
        states = [w.get_state() for w in Worker.all(connection=self.conn) if rec.queue in w.queue_names()]
        return waiting_phrase(pos, len(states), sum(1 for s in states if s == WorkerStatus.BUSY))

    def live_workers(self) -> list[Worker]:
        """rq's registered workers that heartbeat within HEARTBEAT_TIMEOUT. A SIGKILLed worker stays
        registered until its key expires (minutes); it leaves this list within the timeout instead.
        Workers heartbeat at least every HEARTBEAT_TIMEOUT / 2 (jobs.worker.supervisor sets their ttl)."""
        now = datetime.now(UTC)
        limit = self.settings.heartbeat_timeout
        return [w for w in Worker.all(connection=self.conn)
                if w.last_heartbeat is None or (now - w.last_heartbeat).total_seconds() <= limit]

    def workers(self) -> list[dict[str, Any]]:
        """Live workers; a worker running a part of a split job names the whole job (jobs.store.fanout),
        the one resource its client knows, so every worker on a wide job shows that job."""
        out = []
        for w in self.live_workers():
            current = w.get_current_job_id()
            hb = w.last_heartbeat
            out.append({
                "name": w.name,
                "state": str(w.get_state()),
                "queues": w.queue_names(),
                "current_job": current.rsplit("-", 1)[0] if current else None,
                "last_heartbeat": hb.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z" if hb else None,
            })
        busy = [o for o in out if o["current_job"]]
        if busy:
            pipe = self.conn.pipeline(transaction=False)
            for o in busy:
                pipe.hget(JOB_KEY.format(id=o["current_job"]), "parent")
            for o, parent in zip(busy, pipe.execute(), strict=True):
                if parent:
                    o["current_job"] = parent.decode()
        return out


def waiting_phrase(ahead: int, workers: int, busy: int) -> str:
    """The job page's line for a queued job (the crunch CLI words it the same way)."""
    if not workers:
        return f"waiting: {ahead} ahead, no worker running"
    if busy >= workers:
        return f"waiting: {ahead} ahead, all {workers} workers busy"
    return f"waiting: {ahead} ahead, {busy} of {workers} workers busy"
