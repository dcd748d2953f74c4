"""gunicorn settings: threads so long-polls and event streams do not block submissions."""

import os
import shutil
import tempfile
from typing import Any

bind = f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '5000')}"
# gthread that reads each request in its event loop before a thread takes it, with deadlines for
# headers and bodies and a bounded number of threads for slow or big bodies (see the module).
worker_class = "rest.gunicorn_worker.CrunchThreadWorker"
workers = int(os.environ.get("WEB_PROCESSES", "2"))
# A thread per request being read or served; idle kept-alive connections wait in the poller, not a thread.
threads = int(os.environ.get("WEB_THREADS", "256"))
# Connections one process holds (in flight plus kept alive, so at least `threads`); past it the
# process stops accepting and new connections wait in the listen backlog.
worker_connections = int(os.environ.get("WEB_CONNECTIONS", "1000"))
# Connections the kernel queues while every process is at worker_connections; more are refused.
backlog = 2048
# Long-polls last up to 30 s and event streams longer; keep sync timeouts out of the way.
timeout = 120
# A stopping worker finishes the requests it holds (drained, not reset): submits and reads in
# milliseconds, long-polls within their 30 s at most; event streams end at their next keep-alive
# tick (rest.draining). 25 s stays under the 30 s after which `make run` and the tests SIGKILL.
graceful_timeout = int(os.environ.get("GRACEFUL_TIMEOUT", "25"))
# Seconds an idle kept-alive connection stays open (it costs a socket, not a thread).
keepalive = 5
# The request line: gunicorn's maximum, since GET /sort?numbers=3,1,2 puts user input in the URL.
limit_request_line = 8190
# Header count and size: gunicorn's defaults, enough for cookies, CSRF and Authorization tokens.
limit_request_fields = 100
limit_request_field_size = 8190
# rest/logging.py already writes one JSON line per request; gunicorn's own access log only with ACCESS_LOG=1.
accesslog = "-" if os.environ.get("ACCESS_LOG", "") == "1" else None
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
# gunicorn 27's control socket defaults to one path per user; several instances would share it.
control_socket_disable = True

# Prometheus counters live in per-process files so a scrape of any process sums them all. `make run`
# sets the directory; any other launch (the Docker image, `make web`) gets a fresh one here, in the
# master, before the app is imported, so every forked process inherits it.
_OWN_METRICS_DIR = None
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    _OWN_METRICS_DIR = tempfile.mkdtemp(prefix="crunch-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = _OWN_METRICS_DIR


def child_exit(server: Any, worker: Any) -> None:
    """Drop a dead process's live gauges, so restarts do not leave stale series."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server: Any) -> None:
    """Remove the metrics directory this config created."""
    if _OWN_METRICS_DIR:
        shutil.rmtree(_OWN_METRICS_DIR, ignore_errors=True)
