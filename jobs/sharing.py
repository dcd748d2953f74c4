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
    ttl = svc.settings.result_ttl
    now = time.time()
    rec = JobRecord(
        id=uuid.uuid4().hex, type=src.type, params=sub.params, status=JobStatus.FINISHED, queue=src.queue,
        cache_key=sub.cache_key, pausable=src.pausable, progress=src.progress, created_at=now,
        started_at=now, ended_at=now, run_ms=src.run_ms, result_meta=src.result_meta, stats=src.stats,
        extra={k: str(v) for k, v in sub.extra.items()},
    )
    pipe = svc.conn.pipeline(transaction=True)
    pipe.copy(RESULT_CHUNKS_KEY.format(id=src.id), RESULT_CHUNKS_KEY.format(id=rec.id))
    pipe.copy(RESULT_COUNTS_KEY.format(id=src.id), RESULT_COUNTS_KEY.format(id=rec.id))
    pipe.hset(JOB_KEY.format(id=rec.id), mapping=rec.to_hash())
    pipe.zadd(JOBS_INDEX_KEY, {rec.id: now * 1000})
    for key in job_keys(rec.id):
        pipe.expire(key, ttl)
    meta = src.result_meta or {}
    for cmd in count_commands(rec.extra.get("client"), rec.id, int(meta.get("bytes") or meta.get("json_bytes") or 0)):
        pipe.execute_command(*cmd)  # the copy counts against its new owner's storage (jobs.store.quota)
    copied_chunks = pipe.execute()[0]
    chunks = int((src.result_meta or {}).get("chunks", 0))
    # The source may have been deleted between the check and the copy; and a concurrent identical
    # request of the same owner may have claimed the owner's entry meanwhile: that one wins.
    if (chunks and not copied_chunks) or not svc.cache.add(sub.cache_key, rec.id, timeout=ttl):
        pipe = svc.conn.pipeline(transaction=False)
        pipe.delete(*job_keys(rec.id))
        pipe.zrem(JOBS_INDEX_KEY, rec.id)
        pipe.execute()
        return None
    return rec
