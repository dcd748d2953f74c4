"""gunicorn settings: threads so long-polls and event streams do not block submissions."""

import os

bind = f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '5000')}"
worker_class = "gthread"
workers = int(os.environ.get("WEB_PROCESSES", "2"))
threads = int(os.environ.get("WEB_THREADS", "256"))
# Long-polls last up to 30 s and event streams longer; keep sync timeouts out of the way.
timeout = 120
# Event streams and long-polls would hold a stopping worker; clients reconnect anyway.
graceful_timeout = 3
keepalive = 5
accesslog = "-" if os.environ.get("ACCESS_LOG", "1") == "1" else None
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
# gunicorn 27's control socket defaults to one path per user; several instances would share it.
control_socket_disable = True
