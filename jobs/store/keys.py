"""Redis key templates, in one place so every process agrees on the layout."""

PREFIX = "crunch:"

#: Hash: the job record (see jobs.store.record.JobRecord).
JOB_KEY = PREFIX + "job:{id}"
#: List of raw byte chunks: the input blob stored at submit time (sort numbers, CSV file).
JOB_INPUT_KEY = PREFIX + "job:{id}:input"
#: String (JSON): the last checkpoint of a paused or interrupted run.
JOB_CHECKPOINT_KEY = PREFIX + "job:{id}:checkpoint"
#: String: a pending control request for a running job ("cancel" or "pause").
JOB_CONTROL_KEY = PREFIX + "job:{id}:control"
#: List of byte chunks: the encoded result.
RESULT_CHUNKS_KEY = PREFIX + "job:{id}:result"
#: List of ints: items per result chunk, for paging without decoding everything.
RESULT_COUNTS_KEY = PREFIX + "job:{id}:result:counts"

#: Sorted set: every known job id, scored by creation time in ms (newest first listing).
JOBS_INDEX_KEY = PREFIX + "jobs"
#: Sorted set: running job ids, scored by the heartbeat deadline (epoch seconds).
RUNNING_KEY = PREFIX + "running"
#: Hash: cumulative finished/failed/canceled counts per queue.
QUEUE_STATS_KEY = PREFIX + "queue:{name}:stats"
#: Pub/sub channel: one message per job status or progress change.
EVENTS_CHANNEL = PREFIX + "events"
#: Prefix of request-cache entries (canonical request -> job id), via Flask-Caching/cachelib.
REQUEST_CACHE_PREFIX = PREFIX + "request:"


def job_keys(job_id: str) -> list[str]:
    """All per-job keys, for expiry and deletion."""
    return [
        t.format(id=job_id)
        for t in (JOB_KEY, JOB_INPUT_KEY, JOB_CHECKPOINT_KEY, JOB_CONTROL_KEY,
                  RESULT_CHUNKS_KEY, RESULT_COUNTS_KEY)
    ]
