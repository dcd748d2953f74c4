"""How a job's state is kept in Redis: keys, record, status, results, events, request cache,
admission, the rq queues, the Lua scripts and the lifecycle that owns every status change."""
