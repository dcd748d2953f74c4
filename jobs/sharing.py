"""Submissions by token owners (API_TOKENS on): own jobs only, yet finished results are shared.

Design. With tokens off, identical requests share one request-cache entry, hence one job, and
every client sees its id. With tokens on, a job id is a capability of its owner, so:

- Each owner's requests use the owner's own request-cache entry (Submission.scope, key
  `type:@owner:sha`). Dedupe of in-flight work and the answer-from-cache of a finished job
  therefore happen within an owner exactly as before; another owner's identical request while
  that job is still running starts its own job (a rare duplicate computation, never a leak).
- Finished results cross owners by copy. A second, shared entry under the unscoped key
  (`type:sha`, the key tokens-off jobs use) points at the job that first computed the request.
  When owner B misses its own entry and that pointer leads to a finished job with a stored
  result, B gets a new job record of its own, already finished, whose result lists are a
  server-side COPY of the source's: 200 with `cached: true` and B's own id. B never learns the
  source id; deleting either job or letting it expire never affects the other; cancel, pause,
  retry and delete all act on B's record alone. The cost is the result's size in Redis again,
  for at most RESULT_TTL.
- A pointer to a job that failed, was canceled, was deleted or expired is dropped (compare and
  delete) on the next lookup; a pointer to a live job is left alone (it may still finish). The
  pointer expires after RESULT_TTL, so it is never kept longer than a result could be.

Only requests that name public inputs share across owners (fibonacci's n, a primes range: anyone
may compute them). A request that carries the client's own data (JobSpec.private_input: a CSV
upload, the numbers to sort) is never answered from another owner's job: `cached: true` would
tell owner B that someone already sent exactly this file, which is the file's content leaking one
bit at a time. Within an owner it is cached as usual, and with tokens off there are no owners to
keep apart (everyone shares one namespace by design, as the contract says).

Alias records that follow another owner's live job were the alternative; they would make every
route, the event stream and the runner's bookkeeping aware of indirection, for a saving that
only concurrent identical requests by different owners would ever see.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any

from jobs.service import JobService, Outcome, Submitted
from jobs.store.admission import Admission
from jobs.store.keys import JOB_KEY, JOBS_INDEX_KEY, RESULT_CHUNKS_KEY, RESULT_COUNTS_KEY, job_keys
from jobs.store.quota import count_commands
from jobs.store.record import JobRecord
from jobs.store.status import JobStatus
from jobs.types.registry import JOB_TYPES
from jobs.types.spec import Submission


def submit_owned(svc: JobService, sub: Submission, owner: str | None,
                 admission: Admission | None = None, watch: bool = False) -> Submitted:
    """JobService.submit for one owner (see the module docstring); owner None is the tokens-off path.
    admission: checked first, whichever way the submission is then answered (raises Rejected)."""
    if not owner:
        return svc.submit(sub, admission, watch)
    if admission is not None:
        svc.admit(admission)
    sub.scope = owner
    sub.extra["owner"] = owner
    shares = not JOB_TYPES[sub.type].private_input
    if shares and not isinstance(svc.cache.get(sub.cache_key), str):
        copied = _copy_shared(svc, sub)
        if copied is not None:
            return Submitted(copied, Outcome.CACHED)
    submitted = svc.submit(sub, watch=watch)
    rec, outcome = submitted
    if outcome is Outcome.CREATED and shares:
        # First of its kind (or the previous pointer is still live): offer the result to others.
        svc.cache.add(sub.shared_key, rec.id, timeout=svc.settings.result_ttl)
    return submitted


def _copy_shared(svc: JobService, sub: Submission) -> JobRecord | None:
    """A finished copy, owned by sub's owner, of the job the shared pointer names; None if none fits."""
    shared = sub.shared_key
    src_id = svc.cache.get(shared)
    if not isinstance(src_id, str):
        return None
    src = svc.get(src_id)
    if src is None or (src.status.terminal and src.status is not JobStatus.FINISHED):
        svc.cache.release(shared, src_id)
        return None
    reader = svc.reader(src)
    if reader is None:  # still running: the owner runs its own (see the module docstring)
        return None
    if not reader.exists():
        svc.cache.release(shared, src_id)
        return None
    rec = _copy_record(src, sub, {k: str(v) for k, v in sub.extra.items()})
    pipe = svc.conn.pipeline(transaction=True)
    _copy_commands(pipe, svc, src, rec)
    copied_chunks = pipe.execute()[0]
    chunks = int((src.result_meta or {}).get("chunks", 0))
    # The source may have been deleted between the check and the copy; and a concurrent identical
    # request of the same owner may have claimed the owner's entry meanwhile: that one wins.
    if (chunks and not copied_chunks) or not svc.cache.add(sub.cache_key, rec.id, timeout=svc.settings.result_ttl):
        _drop_copies(svc, [rec.id])
        return None
    return rec


def _copy_record(src: JobRecord, sub: Submission, extra: dict[str, str]) -> JobRecord:
    """The new owner's finished record of a copy of src's result (ids, times and extra of its own)."""
    now = time.time()
    return JobRecord(
        id=uuid.uuid4().hex, type=src.type, params=sub.params, status=JobStatus.FINISHED, queue=src.queue,
        cache_key=sub.cache_key, pausable=src.pausable, progress=src.progress, created_at=now,
        started_at=now, ended_at=now, run_ms=src.run_ms, result_meta=src.result_meta, stats=src.stats,
        extra=extra,
    )


def _copy_commands(pipe: Any, svc: JobService, src: JobRecord, rec: JobRecord) -> None:
    """Queue on pipe the copy of src's result lists to rec, rec itself, its index entry, expiries and its
    storage count; the pipe's first reply of these is the COPY of the chunks (falsy when src's are gone)."""
    ttl = svc.settings.result_ttl
    pipe.copy(RESULT_CHUNKS_KEY.format(id=src.id), RESULT_CHUNKS_KEY.format(id=rec.id))
    pipe.copy(RESULT_COUNTS_KEY.format(id=src.id), RESULT_COUNTS_KEY.format(id=rec.id))
    pipe.hset(JOB_KEY.format(id=rec.id), mapping=rec.to_hash())
    pipe.zadd(JOBS_INDEX_KEY, {rec.id: rec.created_at * 1000})
    for key in job_keys(rec.id):
        pipe.expire(key, ttl)
    meta = src.result_meta or {}
    for cmd in count_commands(rec.extra.get("client"), rec.id, int(meta.get("bytes") or meta.get("json_bytes") or 0)):
        pipe.execute_command(*cmd)  # the copy counts against its new owner's storage (jobs.store.quota)


def _drop_copies(svc: JobService, ids: Sequence[str]) -> None:
    pipe = svc.conn.pipeline(transaction=False)
    for job_id in ids:
        pipe.delete(*job_keys(job_id))
        pipe.zrem(JOBS_INDEX_KEY, job_id)
    pipe.execute()


def share_many(svc: JobService, subs: Sequence[Submission], extra: dict[str, str]) -> int:
    """What submit_owned does before its own lookup, for every item of a batch at once (jobs.batches): each
    shareable item whose owner has no request-cache entry of its own, but whose request another owner already
    finished, gets a finished copy of that result, and the owner's entry then names the copy, so the batch's
    items script answers the item from cache exactly as a single POST would be answered. subs are scoped to
    their owner already; extra: the fields every copy's record carries (client, owner, request id).

    Pipelined, so a batch pays 2 round trips when nothing is shared (3 with a pointer to follow, 4 with
    copies), whatever its size, rather than the single path's 4-5 per item. Returns how many were copied."""
    subs = list({s.cache_key: s for s in subs if not JOB_TYPES[s.type].private_input}.values())
    if not subs:
        return 0
    cache = svc.cache
    pipe = svc.conn.pipeline(transaction=False)
    for sub in subs:
        pipe.get(cache.full_key(sub.cache_key))
        pipe.get(cache.full_key(sub.shared_key))
    got = pipe.execute()
    pointed: list[tuple[Submission, str]] = []
    for sub, own, src in zip(subs, got[::2], got[1::2], strict=True):
        src_id = cache.serializer.loads(src) if own is None and src is not None else None
        if isinstance(src_id, str):
            pointed.append((sub, src_id))
    if not pointed:
        return 0
    pipe = svc.conn.pipeline(transaction=False)
    for _sub, src_id in pointed:
        pipe.hgetall(JOB_KEY.format(id=src_id))
        pipe.exists(RESULT_CHUNKS_KEY.format(id=src_id))
    got = pipe.execute()
    copies: list[tuple[Submission, JobRecord, JobRecord]] = []
    for (sub, src_id), h, has_chunks in zip(pointed, got[::2], got[1::2], strict=True):
        src = JobRecord.from_hash(h) if h else None
        if src is not None and src.status.live:
            continue  # still running: the owner runs its own (see the module docstring)
        if src is None or src.status is not JobStatus.FINISHED or src.result_meta is None or not (
                has_chunks or int(src.result_meta.get("chunks", 0)) == 0):
            cache.release(sub.shared_key, src_id)  # failed, canceled, deleted or expired: a stale pointer
            continue
        copies.append((sub, src, _copy_record(src, sub, {**extra, **{k: str(v) for k, v in sub.extra.items()}})))
    if not copies:
        return 0
    ttl = svc.settings.result_ttl
    pipe = svc.conn.pipeline(transaction=True)
    marks = []
    for sub, src, rec in copies:
        marks.append(len(pipe))
        _copy_commands(pipe, svc, src, rec)
        pipe.set(cache.full_key(sub.cache_key), cache.serializer.dumps(rec.id), nx=True, ex=ttl)
    replies = pipe.execute()
    lost = []
    for (sub, src, rec), at, end in zip(copies, marks, [*marks[1:], len(replies)], strict=True):
        # As in _copy_shared: the source deleted since the read, or the owner's entry claimed meanwhile.
        if int((src.result_meta or {}).get("chunks", 0)) and not replies[at]:
            lost.append(rec.id)
            if replies[end - 1]:  # the owner's entry names a copy without its result: let it go again
                cache.release(sub.cache_key, rec.id)
        elif not replies[end - 1]:
            lost.append(rec.id)
    if lost:
        _drop_copies(svc, lost)
    return len(copies) - len(lost)
