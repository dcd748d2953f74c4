"""Batches: many jobs in one request, each item submitted exactly as its own POST would be.

Submitting a batch of N items costs a few Redis round trips, not N: one for the admission (the
client's one unit of submit budget, and the live-job bound checked against all N items at once),
then the items' writes in scripts of CHUNK items each (jobs.store.batches.ITEMS_LUA): the first
alone (it creates the batch and loads the script after a restart), the rest pipelined together.
Each item is a dedupe lookup, a cache answer or a claimed and enqueued job, decided inside the
script, so identical requests from anywhere still make exactly one job.

Validation is all or nothing and happens first (parse_batch): one bad item is a 422 naming it,
and nothing is written. The batch's counts are kept by the lifecycle's own transitions (see
jobs.store.batches), so reading a batch is one HGETALL whatever its size.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import NoScriptError

from jobs.errors import InvalidParams
from jobs.service import JobService
from jobs.settings import Settings
from jobs.sharing import share_many
from jobs.store.admission import Admission, Rejected
from jobs.store.batches import COUNTED, ITEMS_LUA
from jobs.store.commands import LuaScript, packed
from jobs.store.deliveries import DeliveryStore
from jobs.store.fanout import plan
from jobs.store.keys import (
    BATCH_JOBS_KEY,
    BATCH_KEY,
    FANOUT_LIVE_KEY,
    INPUT_CHUNK_BYTES,
    JOB_CONTROL_KEY,
    JOB_INPUT_KEY,
    JOB_KEY,
    PREFETCH_MAX_BYTES,
    RESULT_CHUNKS_KEY,
)
from jobs.store.record import JobRecord, rfc3339
from jobs.store.scripts import READ_WITH_RESULT_LUA
from jobs.store.status import JobStatus
from jobs.types.registry import JOB_TYPES
from jobs.types.spec import Limits, Submission, decode_json
from jobs.webhooks import WebhookURLError, check_url

BATCH_ID_RE = re.compile(r"^[0-9a-f]{32}$")
#: Items per script. Each item's writes are about 1.3 KB of arguments and 50-100 us of Redis time (measured
#: on this machine, loaded), so a chunk holds Redis for ~10-25 ms: short enough not to stall other clients.
CHUNK = 250
#: A 422 lists at most this many item errors (the detail says how many more there were).
MAX_ERRORS = 100
#: Seconds a batch waits for its running items to stop on a cancel before killing their work horses.
CANCEL_GRACE = 2.0
#: The keys an item may have: a single submit's body is its params plus an optional webhook, so an item is too.
_ITEM_KEYS = frozenset({"type", "params", "webhook"})
_CURSOR = re.compile(r"^[0-9]{1,9}$")


def json_types() -> tuple[str, ...]:
    """The job types a batch may hold: those submitted as JSON (not csv, which takes a file)."""
    return tuple(name for name, spec in JOB_TYPES.items() if spec.accepts_json)


def decode_batch_body(raw: bytes) -> Any:
    """The JSON body with every integer exact, as a single submit decodes its own (a sort item may hold
    integers past 64 bits); ValueError when malformed."""
    try:
        return decode_json(raw)
    except RecursionError:
        raise ValueError("the body is nested too deeply") from None


@dataclass
class BatchRequest:
    """A validated batch: its items as submissions, in order, the batch's own webhook (batch.finished), and
    each item's webhook (job.*, as its own POST's `webhook`), None where an item named none."""

    items: list[Submission]
    webhook: str | None = None
    item_webhooks: list[str | None] = field(default_factory=list)


def parse_batch(body: Any, limits: Limits, settings: Settings) -> BatchRequest:
    """`{"jobs": [{"type", "params", "webhook"?}, ...], "webhook"?}` with every item parsed exactly as its own
    POST would be (its webhook checked as that POST's would be); InvalidParams with every error located at
    ["jobs", index, ...] (so a client fixes its batch in one go)."""
    if not isinstance(body, dict):
        raise InvalidParams([{"loc": ["body"], "msg": "must be a JSON object with a jobs array"}])
    errors: list[dict[str, Any]] = [{"loc": [key], "msg": "unknown field; a batch has jobs and webhook"}
                                    for key in body if key not in ("jobs", "webhook")]
    checked: dict[str, str | None] = {}  # URL -> why it is refused; each distinct URL is resolved once

    def check(url: Any, loc: list[Any]) -> None:
        key = url if isinstance(url, str) else repr(url)
        if key not in checked:
            try:
                check_url(url, settings.webhook_allow_private)
                checked[key] = None
            except WebhookURLError as exc:
                checked[key] = str(exc)
        if checked[key] is not None:
            errors.append({"loc": loc, "msg": checked[key]})

    webhook = body.get("webhook")
    if webhook is not None:  # null: no webhook, as if the key were absent
        check(webhook, ["webhook"])
    items = body.get("jobs")
    if not isinstance(items, list) or not items or len(items) > settings.max_batch_jobs:
        msg = ("must be an array of {type, params} objects" if not isinstance(items, list) else
               "must hold at least one job" if not items else
               f"at most {settings.max_batch_jobs} jobs are allowed in one batch (MAX_BATCH_JOBS), got {len(items)}")
        raise InvalidParams([*errors, {"loc": ["jobs"], "msg": msg}])
    types = json_types()
    subs: list[Submission] = []
    hooks: list[str | None] = []
    for i, item in enumerate(items):
        where: list[Any] = ["jobs", i]
        if not isinstance(item, dict):
            errors.append({"loc": where, "msg": 'must be an object {"type": ..., "params": {...}}'})
            continue
        for key in item:
            if key not in _ITEM_KEYS:
                errors.append({"loc": [*where, key], "msg": "unknown field; an item has type, params and webhook"})
        hook = item.get("webhook")
        if hook is not None:
            check(hook, [*where, "webhook"])
        job_type = item.get("type")
        if not isinstance(job_type, str) or job_type not in types:
            errors.append({"loc": [*where, "type"], "msg": f"must be one of {', '.join(types)}"})
            continue
        params = item.get("params", {})
        if not isinstance(params, dict):
            errors.append({"loc": [*where, "params"], "msg": "must be an object"})
            continue
        try:
            subs.append(JOB_TYPES[job_type].parse_json(params, limits))
            hooks.append(hook)
        except InvalidParams as exc:
            for e in exc.errors:
                loc = list(e.get("loc") or [])
                errors.append({"loc": [*where, "params", *(loc[1:] if loc[:1] == ["body"] else loc)],
                               "msg": e["msg"]})
    if errors:
        shown = errors[:MAX_ERRORS]
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in shown[:5])
        if len(errors) > 5:
            detail += f"; and {len(errors) - 5} more error(s)"
        if len(errors) > MAX_ERRORS:
            shown.append({"loc": ["jobs"], "msg": f"{len(errors) - MAX_ERRORS} more errors not listed"})
        raise InvalidParams(shown, detail)
    return BatchRequest(subs, webhook, hooks)


@dataclass
class Batch:
    """One batch as stored (jobs.store.batches)."""

    id: str
    total: int
    counts: dict[str, int]
    created_at: float
    ended_at: float | None
    client: str = ""
    owner: str = ""
    webhooks: bool = False

    @property
    def finished(self) -> bool:
        """Every item is terminal, whatever their statuses."""
        return self.ended_at is not None

    @classmethod
    def from_hash(cls, h: dict[bytes, bytes]) -> Batch:
        d = {k.decode(): v.decode() for k, v in h.items()}
        return cls(id=d["id"], total=int(d.get("total") or 0),
                   counts={s: max(0, int(d.get(s) or 0)) for s in COUNTED},
                   created_at=float(d.get("created_at") or 0),
                   ended_at=float(d["ended_at"]) if d.get("ended_at") else None,
                   client=d.get("client", ""), owner=d.get("owner", ""), webhooks=d.get("webhooks") == "1")


@dataclass
class BatchSubmitted:
    """How a batch was answered: the batch, and how many items were created, joined or served from cache."""

    batch: Batch
    outcomes: dict[str, int] = field(default_factory=dict)

    @property
    def all_cached(self) -> bool:
        return self.outcomes.get("cached", 0) == self.batch.total


class BatchService:
    """Submit, read, wait on and cancel batches; the web's facade over jobs.store.batches."""

    def __init__(self, jobs: JobService, settings: Settings) -> None:
        self.jobs = jobs
        self.conn = jobs.conn
        self.settings = settings
        self.deliveries = DeliveryStore(jobs.conn, settings.result_ttl)
        self._items_script = LuaScript(jobs.conn, ITEMS_LUA)
        self._read_script = LuaScript(jobs.conn, READ_WITH_RESULT_LUA)

    # -- submitting -------------------------------------------------------------------------

    def submit(self, req: BatchRequest, admission: Admission, owner: str | None,
               extra: dict[str, str] | None = None) -> BatchSubmitted:
        """Admit the batch (one unit of budget, all items against the live bound) and write its items;
        raises Rejected (nothing written) when the client is over either."""
        total = len(req.items)
        bound = admission.live_bound
        if bound and total > bound:
            raise Rejected("live", 5, f"a batch of {total} jobs is more than the {bound} live jobs one client may "
                                      f"have (MAX_QUEUED_PER_CLIENT); send smaller batches")
        if bound:  # the script's check is `live >= bound`: all the batch's items must fit
            admission.live_bound = bound - total + 1
        try:
            self.jobs.admit(admission)
        except Rejected as r:
            if r.kind == "live":
                raise Rejected("live", r.retry_after, f"this batch of {total} jobs would pass the {bound} live jobs "
                                                      f"this client may have (MAX_QUEUED_PER_CLIENT); wait for some "
                                                      f"to end, or cancel them") from None
            raise
        batch_id = uuid.uuid4().hex
        now = time.time()
        base_extra = {"client": admission.client, **(extra or {})}
        if owner:
            base_extra["owner"] = owner
        meta = {"client": admission.client, "owner": owner or "", "webhooks": "1" if req.webhook else ""}
        outcomes = {"created": 0, "deduplicated": 0, "cached": 0}
        if owner:
            for sub in req.items:
                sub.scope = owner
            # Another owner's finished result is copied in first, as a single POST would (jobs.sharing).
            share_many(self.jobs, req.items, base_extra)
        chunks = self.chunks(req.items)
        keys = [BATCH_KEY.format(id=batch_id), BATCH_JOBS_KEY.format(id=batch_id)]
        head = [batch_id, repr(now)]
        fields = [x for kv in meta.items() for x in kv]
        replies = [self._items_script(keys=keys, args=[*head, 1, total, self.settings.result_ttl, len(fields),
                                                        *fields, *self._item_args(chunks[0], owner, base_extra, now)])]
        if len(chunks) > 1:
            pipe = self.conn.pipeline(transaction=False)
            for chunk in chunks[1:]:
                pipe.evalsha(self._items_script.sha, len(keys), *keys, *head, 0, total, self.settings.result_ttl,
                             0, *self._item_args(chunk, owner, base_extra, now))
            replies += pipe.execute()
        written: list[tuple[Submission, str | None, str, str]] = []  # per item: sub, webhook, job id, outcome
        hooks_of = req.item_webhooks or [None] * total
        for k, reply in enumerate(replies):
            if len(reply) < 2:  # {'gone'}: the batch vanished under a later chunk (deleted, or RESULT_TTL tiny)
                continue
            start = sum(len(c) for c in chunks[:k])  # chunks vary in length (see _chunks)
            for j, (job_id, outcome) in enumerate(zip(reply[0::2], reply[1::2], strict=True)):
                name = outcome.decode()
                outcomes["deduplicated" if name == "joined" else name] += 1
                written.append((req.items[start + j], hooks_of[start + j], job_id.decode(), name))
        after = self.conn.pipeline(transaction=False)
        if owner:  # a new job of an owner is offered to other owners once finished, as submit_owned does
            cache, ttl = self.jobs.cache, self.settings.result_ttl
            for sub, _hook, job_id, name in written:
                if name == "created" and not JOB_TYPES[sub.type].private_input:
                    after.set(cache.full_key(sub.shared_key), cache.serializer.dumps(job_id), nx=True, ex=ttl)
        if len(after):
            after.execute()
        hooks = [("job", job_id, url, admission.client) for _sub, url, job_id, _name in written if url]
        if req.webhook:
            hooks.append(("batch", batch_id, req.webhook, admission.client))
        if hooks:  # each item's own delivery (job.*), and the batch's (batch.finished)
            self.deliveries.register_many(hooks)
        batch = self.get(batch_id)
        if batch is None:  # expired already (RESULT_TTL tiny) or deleted: answer what was written
            batch = Batch(batch_id, total, dict.fromkeys(COUNTED, 0), now, now, admission.client, owner or "")
        return BatchSubmitted(batch, outcomes)

    def chunks(self, subs: list[Submission]) -> list[list[Submission]]:
        """The items in script-sized chunks: CHUNK runs' writes each, where a wide primes item that splits
        (jobs.store.fanout) weighs one run per part plus its whole job, so no script holds Redis much longer."""
        chunks: list[list[Submission]] = [[]]
        weight = 0
        for sub in subs:
            split = getattr(JOB_TYPES[sub.type], "split", None)
            w = 1 + (len(split(sub.params, self.settings.fanout_min_seconds, self.settings.fanout_max_parts))
                     if split is not None and sub.input is None and sub.input_chunks is None else 0)
            if chunks[-1] and weight + w > CHUNK:
                chunks.append([])
                weight = 0
            chunks[-1].append(sub)
            weight += w
        return chunks

    def _item_args(self, subs: Sequence[Submission], owner: str | None, extra: dict[str, str],
                   now: float) -> list[Any]:
        """Per item: its request-cache key, the id a new job would get, and the packed commands creating it
        (subs are scoped to their owner already, see submit)."""
        life = self.jobs.life
        args: list[Any] = []
        for sub in subs:
            spec = JOB_TYPES[sub.type]
            rec = JobRecord(id=uuid.uuid4().hex, type=sub.type, params=sub.params, queue=sub.queue,
                            cache_key=sub.cache_key, pausable=spec.pausable, created_at=now,
                            has_input=sub.input is not None or sub.input_chunks is not None,
                            progress={"done": 0, "total": 0, "percent": 0.0},
                            extra={**extra, **{k: str(v) for k, v in sub.extra.items()}})
            rec.runs, rec.rq_id = 1, f"{rec.id}-1"
            before: list[tuple[Any, ...]] = []
            if rec.has_input:
                blob = b"".join(sub.iter_input())
                rec.extra["input_bytes"] = str(len(blob))  # counted in the client's storage (jobs.store.quota)
                ikey = JOB_INPUT_KEY.format(id=rec.id)
                before = [("RPUSH", ikey, blob[i:i + INPUT_CHUNK_BYTES])
                          for i in range(0, len(blob), INPUT_CHUNK_BYTES)] or [("RPUSH", ikey, b"")]
            # A wide primes item splits exactly as its own POST would (JobService.submit): the whole job
            # and its parts are written and enqueued by this item's commands, once the script claims it.
            parts = plan(rec, spec, self.settings.fanout_min_seconds, self.settings.fanout_max_parts)
            cmds = life.creation_commands(rec, before, enqueue=not parts)
            if parts:
                cmds += life.parts_commands(parts) + packed([("SADD", FANOUT_LIVE_KEY, rec.id)])
            args += [self.jobs.cache.full_key(sub.cache_key), rec.id, len(cmds), *cmds]
        return args

    # -- reading -----------------------------------------------------------------------------

    def get(self, batch_id: str) -> Batch | None:
        if not BATCH_ID_RE.match(batch_id):
            return None
        h = self.conn.hgetall(BATCH_KEY.format(id=batch_id))
        return Batch.from_hash(h) if h and b"id" in h else None

    def resource(self, batch: Batch, client: str | None = None) -> dict[str, Any]:
        """The batch resource of the API contract, with the deliveries `client` registered on it."""
        base = f"/api/v1/batches/{batch.id}"
        hooks = self.deliveries.for_client("batch", batch.id, client) if batch.webhooks and client else []
        return {
            "id": batch.id,
            "status": "finished" if batch.finished else "running",
            "total": batch.total,
            "counts": batch.counts,
            "created_at": rfc3339(batch.created_at),
            "ended_at": rfc3339(batch.ended_at),
            "links": {"self": base, "jobs": f"{base}/jobs", "events": f"{base}/events", "cancel": f"{base}/cancel"},
            "webhooks": hooks,
        }

    def wait(self, batch_id: str, timeout: float, slots: threading.Semaphore | None = None) -> Batch | None:
        """The batch once it is finished, or after `timeout` seconds, woken by its end event (the hook
        publishes it). Without a free wait slot it answers at once, as a job's long-poll does."""
        if timeout <= 0 or (slots is not None and not slots.acquire(blocking=False)):
            return self.get(batch_id)
        deadline = time.monotonic() + timeout
        watch = self.jobs.hub.watch(batch_id)
        try:
            while True:
                batch = self.get(batch_id)
                remaining = deadline - time.monotonic()
                if batch is None or batch.finished or remaining <= 0:
                    return batch
                watch.get(min(remaining, 2.0))  # the 2 s cap only guards a lost pub/sub connection
        finally:
            self.jobs.hub.unwatch(watch)
            if slots is not None:
                slots.release()

    def items(self, batch: Batch, offset: int, limit: int, inline: bool = True) -> tuple[list[dict[str, Any]],
                                                                                         int | None]:
        """One page of the items' job resources in submission order (small results inline), and the
        offset of the next page (None at the end). One round trip for the ids, one for the records."""
        ids = [m.decode() for m in self.conn.lrange(BATCH_JOBS_KEY.format(id=batch.id), offset, offset + limit - 1)]
        pipe = self.conn.pipeline(transaction=False)
        for job_id in ids:
            if inline:
                pipe.evalsha(self._read_script.sha, 2, JOB_KEY.format(id=job_id), RESULT_CHUNKS_KEY.format(id=job_id),
                             PREFETCH_MAX_BYTES)
            else:
                pipe.hgetall(JOB_KEY.format(id=job_id))
        try:
            replies = pipe.execute() if ids else []
        except NoScriptError:  # a restarted server: load the script once and read again
            self._read_script(keys=[JOB_KEY.format(id=ids[0]), RESULT_CHUNKS_KEY.format(id=ids[0])],
                              args=[PREFETCH_MAX_BYTES])
            return self.items(batch, offset, limit, inline)
        out: list[dict[str, Any]] = []
        for job_id, reply in zip(ids, replies, strict=True):
            if inline:
                flat, chunks = reply
                h = dict(zip(flat[::2], flat[1::2], strict=True)) if flat else {}
            else:
                h, chunks = reply, None
            if not h:
                out.append({"id": job_id, "status": None, "expired": True})
                continue
            rec = self.jobs.fanout.with_progress(JobRecord.from_hash(h))  # a live split item: its parts' sum
            if chunks and rec.status is JobStatus.FINISHED:
                rec.prefetched = chunks
            out.append(self.jobs.resource(rec, inline=inline))
        end = offset + len(ids)
        return out, (end if end < batch.total and len(ids) == limit else None)

    @staticmethod
    def encode_cursor(offset: int) -> str:
        """A page cursor is the offset of the page's first item: items never move within a batch."""
        return str(offset)

    @staticmethod
    def decode_cursor(cursor: str) -> int:
        """Inverse of encode_cursor; ValueError on anything else (length bounded before int())."""
        if not _CURSOR.match(cursor):
            raise ValueError("invalid cursor")
        return int(cursor)

    # -- canceling ---------------------------------------------------------------------------

    def cancel(self, batch: Batch) -> Batch:
        """Cancel every live item as POST /jobs/{id}/cancel would: queued and paused ones at once (each its
        lifecycle cancel, in one pipelined pass), running ones asked to stop at their next checkpoint, and
        those still running after CANCEL_GRACE seconds stopped by force (their work horse killed)."""
        ids = list(dict.fromkeys(m.decode() for m in self.conn.lrange(BATCH_JOBS_KEY.format(id=batch.id), 0, -1)))
        recs = self._records(ids)
        running = []
        for rec in recs:
            if rec.extra.get("parts") and rec.status.live:  # a split item: the whole job and every part
                self.jobs.fanout.cancel(rec)
            elif rec.status in (JobStatus.QUEUED, JobStatus.PAUSED):
                if not self.jobs.life.cancel(rec, (JobStatus.QUEUED, JobStatus.PAUSED)):
                    running.append(rec.id)  # it just started: stop it below
            elif rec.status is JobStatus.STARTED:
                running.append(rec.id)
        if running:
            pipe = self.conn.pipeline(transaction=False)
            for job_id in running:
                pipe.set(JOB_CONTROL_KEY.format(id=job_id), "cancel", ex=3600)
            pipe.execute()
            deadline = time.monotonic() + CANCEL_GRACE
            while running and time.monotonic() < deadline:
                time.sleep(0.05)
                running = [r.id for r in self._records(running) if r.status.live]
            for job_id in running:
                try:
                    self.jobs.cancel(job_id, wait=1.0)
                except Exception:  # noqa: BLE001 - it ended or vanished meanwhile: nothing left to cancel
                    pass
        return self.get(batch.id) or batch

    def _records(self, ids: Sequence[str]) -> list[JobRecord]:
        pipe = self.conn.pipeline(transaction=False)
        for job_id in ids:
            pipe.hgetall(JOB_KEY.format(id=job_id))
        return [JobRecord.from_hash(h) for h in (pipe.execute() if ids else []) if h]
