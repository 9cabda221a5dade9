"""Production web server settings: `gunicorn -c tunixrt/gunicorn_settings.py tunixrt.wsgi`
(what `make serve` runs). Every value can be set from the environment.

Why these: gunicorn's default `sync` worker closes the connection after every answer, so
each request of a script or a browser paid a new TCP handshake. The `gthread` worker keeps
connections alive (`keepalive` seconds between requests) and serves each on a thread of a
worker process. gunicorn sets TCP_NODELAY on its listening socket and Linux hands it on to
every accepted connection, so an answer written in pieces (headers, then body) never waits
for the client's delayed ACK (~40 ms): `bench/http_probe.py` checks it.
"""

import multiprocessing
import os

bind = os.getenv("TUNIXRT_BIND", "127.0.0.1:8000")
# Processes: the Python work of a request holds the GIL, so parallelism comes from
# processes; threads cover the time spent waiting on the database and the network.
workers = int(os.getenv("TUNIXRT_WEB_WORKERS", str(min(8, multiprocessing.cpu_count() * 2))))
worker_class = "gthread"
threads = int(os.getenv("TUNIXRT_WEB_THREADS", "8"))
# Longer than a browser's htmx poll interval (2 s) and than most proxies' idle timeout.
keepalive = int(os.getenv("TUNIXRT_WEB_KEEPALIVE", "75"))
# A request that takes longer is stuck: the worker is restarted (streams are chunked
# writes, each of which resets the timer).
timeout = int(os.getenv("TUNIXRT_WEB_TIMEOUT", "120"))
graceful_timeout = 30
# Bounded memory over weeks: each worker is replaced after this many requests (jittered
# so they are not all replaced at once).
max_requests = int(os.getenv("TUNIXRT_WEB_MAX_REQUESTS", "100000"))
max_requests_jitter = max_requests // 10
accesslog = os.getenv("TUNIXRT_WEB_ACCESS_LOG") or None
errorlog = "-"
