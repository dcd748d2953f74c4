"""gunicorn's gthread worker, as rest.gunicorn_worker extends it, written for gunicorn 27.0.1 (requirements.txt).

rest.gunicorn_worker.CrunchThreadWorker overrides the gthread worker's connection handling (accept,
handle, handle_request, murder_pending, the keep-alive readable callback), builds its TConn objects
and reads a few private fields (method_queue, a request's expectation flag, a length reader's
remaining count) to read requests in the event loop and bound slow clients. Those are internals of
gthread, not a plugin API: another gunicorn may use them differently and the protection would
silently stop working. No fallback: the web refuses to boot, naming the version; setting
`worker_class = "gthread"` in rest/gunicorn_conf.py runs stock gthread without the protection.
"""

from __future__ import annotations

from gunicorn import util
from gunicorn.workers.gthread import TConn, ThreadWorker

from jobs.compat import written_for

VERSION = "27.0.1"
written_for("gunicorn", VERSION, "the slow-client worker (rest.gunicorn_worker, on gunicorn's gthread internals)",
            fallback=None)

__all__ = ["TConn", "ThreadWorker", "util"]
