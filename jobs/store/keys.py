"""Redis key templates, in one place so every process agrees on the layout."""

PREFIX = "crunch:"

#: RQ queue of cheap jobs (run inline by the workers, never behind a long one).
FAST_QUEUE = "fast"
#: RQ queue of everything else (a forked work horse per run).
DEFAULT_QUEUE = "default"
#: Every queue Crunch uses, in the order workers take from them (cheap jobs first).
QUEUES = (FAST_QUEUE, DEFAULT_QUEUE)

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
#: Lists, short-lived (an hour at most): one copy of a split list job's parts' results being assembled,
#: what = chunks or counts (jobs.store.fanout); they become the job's result lists at once when complete.
FANOUT_COPY_KEY = PREFIX + "job:{id}:copy:{token}:{what}"
#: List of ints: items per result chunk, for paging without decoding everything.
RESULT_COUNTS_KEY = PREFIX + "job:{id}:result:counts"

#: Sorted set: every known job id, scored by creation time in ms (newest first listing).
JOBS_INDEX_KEY = PREFIX + "jobs"
#: Sorted set: running job ids, scored by the heartbeat deadline (epoch seconds).
RUNNING_KEY = PREFIX + "running"
#: Sorted set: paused job ids, scored by when their pause runs out (paused at + PAUSED_TTL, epoch seconds);
#: the reaper ends them then (Lifecycle.paused_due). An entry of a job resumed since is dropped when due.
PAUSED_DUE_KEY = PREFIX + "paused:due"
#: Dispatch (jobs.store.dispatch). List: one client's waiting runs in one lane, oldest first.
LANE_CLIENT_KEY = PREFIX + "lane:{lane}:client:{client}"
#: Sorted set: the clients with waiting runs in a lane, scored by when their first waiting run joined (ms).
LANE_CLIENTS_KEY = PREFIX + "lane:{lane}:clients"
#: Hash: run id -> when the waiting run joined its lane (ms).
LANE_SINCE_KEY = PREFIX + "lane:{lane}:since"
#: String, short-lived: held while one preemption in a lane takes effect (so one waiting run does not
#: send every worker's job back to the queue).
LANE_PREEMPT_KEY = PREFIX + "lane:{lane}:preempting"
#: Sorted set: the runs of one client that were dispatched and have not ended (run id -> dispatch time).
CLIENT_RUNNING_KEY = PREFIX + "client:{client}:running"
#: Set: clients that may have entries in CLIENT_RUNNING_KEY (the reaper checks them).
RUNNING_CLIENTS_KEY = PREFIX + "clients:running"
#: Set: split jobs (jobs.store.fanout) not yet ended, which the reaper settles (a part that ended just
#: before its worker died still ends its whole job).
FANOUT_LIVE_KEY = PREFIX + "fanout:live"
#: Hash: cumulative finished/failed/canceled counts per queue.
QUEUE_STATS_KEY = PREFIX + "queue:{name}:stats"
#: Hash: cumulative finished/failed/canceled counts per job type (read by /metrics).
TYPE_STATS_KEY = PREFIX + "stats:{type}"
#: Hash: a histogram of run times of jobs that ended, per type (bucket upper bound -> count, sum, count).
JOB_DURATION_KEY = PREFIX + "stats:{type}:duration"
#: Upper bounds (seconds) of JOB_DURATION_KEY's buckets, from trivial jobs to hour-long sieves.
DURATION_BUCKETS = (0.001, 0.005, 0.025, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 1800.0, 3600.0)
#: String: jobs that reached `finished` in one minute (unix time // 60), all queues; kept
#: FINISHED_MINUTE_TTL seconds. Written by the finish step, read by the operations page (/queues).
FINISHED_MINUTE_KEY = PREFIX + "stats:finished-per-minute:{minute}"
FINISHED_MINUTE_TTL = 2 * 3600
#: Sorted set of queue-depth samples for the operations page (score: unix time), and the lock
#: that lets one web process write a sample per interval (rest/ops.py).
OPS_SAMPLES_KEY = PREFIX + "ops:samples"
OPS_SAMPLE_LOCK_KEY = PREFIX + "ops:sample-lock"
#: Pub/sub channel: one message per job status or progress change.
EVENTS_CHANNEL = PREFIX + "events"
#: Prefix of request-cache entries (canonical request -> job id), via Flask-Caching/cachelib.
REQUEST_CACHE_PREFIX = PREFIX + "request:"

#: Hash: one batch, with its counts by status (jobs.store.batches).
BATCH_KEY = PREFIX + "batch:{id}"
#: List: a batch's job ids in submission order.
BATCH_JOBS_KEY = PREFIX + "batch:{id}:jobs"
#: List: the webhook deliveries registered on a batch.
BATCH_WEBHOOKS_KEY = PREFIX + "batch:{id}:webhooks"
#: List: the webhook deliveries registered on a job, in registration order (expires with the job).
JOB_WEBHOOKS_KEY = PREFIX + "job:{id}:webhooks"
#: Hash: one webhook delivery (jobs.store.deliveries).
DELIVERY_KEY = PREFIX + "webhook:{id}"
#: Sorted set: pending delivery ids, scored by the epoch second their next attempt may start.
DELIVERIES_DUE_KEY = PREFIX + "webhooks:due"
#: String: the generated Standard Webhooks key (when WEBHOOK_SECRET is unset), shared by every process.
WEBHOOK_SECRET_KEY = PREFIX + "webhook:secret"

#: Size of each stored input piece (the last may be shorter), so a reader finds any offset's piece directly.
INPUT_CHUNK_BYTES = 4 << 20
#: A result this small (JSON bytes) is read along with its finished record, by a waiter woken by the
#: finish or by a cache hit, and rides along with the finish event.
PREFETCH_MAX_BYTES = 16 << 10


def job_keys(job_id: str) -> list[str]:
    """All per-job keys, for expiry and deletion."""
    return [
        t.format(id=job_id)
        for t in (JOB_KEY, JOB_INPUT_KEY, JOB_CHECKPOINT_KEY, JOB_CONTROL_KEY,
                  RESULT_CHUNKS_KEY, RESULT_COUNTS_KEY, JOB_WEBHOOKS_KEY)
    ]
