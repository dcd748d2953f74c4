"""Whether this web process is stopping, so open event streams end and in-flight requests drain.

gunicorn's worker (rest.gunicorn_worker) sets STOPPING on SIGTERM, then keeps serving the requests
it holds for up to GRACEFUL_TIMEOUT seconds before it exits (stock settings reset them after 3 s).
Requests that finish on their own (submits, reads, long-polls of at most 30 s) just complete; an
event stream, which could last for hours, checks STOPPING at each keep-alive tick and ends cleanly,
and its client reconnects to another process (the stream's `retry:` says when).
"""

from __future__ import annotations

import threading

STOPPING = threading.Event()
