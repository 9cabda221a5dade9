"""Settings for tunix-rt.

Every value comes from the environment and has a working default, so a fresh clone runs on
SQLite with nothing else to start. `DATABASE_URL` switches to PostgreSQL.
"""

import contextlib
import os
import secrets
import socket
import sys
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured
from django.utils.csp import CSP

BASE_DIR = Path(__file__).resolve().parent.parent


def envstr(name: str, default: str = "") -> str:
    return os.getenv(name, default)


def envbool(name: str, default: str = "0") -> bool:
    """A boolean setting. A value it does not know is refused, not read as false: a typo in
    TUNIXRT_HTTPS must not quietly turn off secure cookies."""
    value = os.getenv(name, default).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ImproperlyConfigured(f"{name}={value!r}: use 1/0, true/false, yes/no or on/off.")


def envint(name: str, default: str) -> int:
    return int(os.getenv(name, default))


def envlist(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.getenv(name, default).split(",") if item.strip()]


# Everything the app writes by default (SQLite file, artifacts, datasets, models) lives
# under one folder so a user can see and delete it in one place.
DATA_DIR = Path(envstr("TUNIXRT_DATA_DIR", str(BASE_DIR / "var"))).resolve()
# Files and folders this process creates, and those of the training children it starts
# (they inherit it), are private to the OS user from their first byte: the SQLite database
# and its journal, uploaded datasets, run folders, checkpoints, generated models. A umask
# leaves no moment between creating a file and a chmod in which another user could read it.
UMASK = int(envstr("TUNIXRT_UMASK", "077"), 8)
os.umask(UMASK)
DATA_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
# Whatever Django's file storage saves (none today) is private as well.
FILE_UPLOAD_PERMISSIONS = 0o600
FILE_UPLOAD_DIRECTORY_PERMISSIONS = 0o700


def _secret_key() -> str:
    key = envstr("DJANGO_SECRET_KEY")
    if key:
        return key
    # No key given: keep a generated one on disk so sessions survive restarts of `make run`.
    path = DATA_DIR / "secret_key"
    if not path.exists():
        # Created with mode 0600: no moment in which another user could read it.
        with contextlib.suppress(FileExistsError):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(50))
    return path.read_text().strip()


SECRET_KEY = _secret_key()
DEBUG = envbool("DJANGO_DEBUG", "0")
ALLOWED_HOSTS = envlist("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
CSRF_TRUSTED_ORIGINS = envlist("DJANGO_CSRF_TRUSTED_ORIGINS", "")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    # Before whitenoise's runserver: ours wraps it and sets TCP_NODELAY (see its docstring).
    "runs",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django_htmx",
    # The API docs page then uses Swagger UI's files from the package, not a CDN.
    "ninja",
    "django_q",
]

MIDDLEWARE = [
    # First, so it sees every error answer under /api/, including the 500 page.
    "tunixrt.middleware.ApiErrorShapeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.csp.ContentSecurityPolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "tunixrt.urls"
WSGI_APPLICATION = "tunixrt.wsgi.application"
ASGI_APPLICATION = "tunixrt.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "django.template.context_processors.csp",
            ],
        },
    },
]

# SQLite by default. WAL lets the web process read while the worker writes; IMMEDIATE
# transactions take the write lock up front so two writers queue on the busy timeout
# instead of failing with "database is locked" halfway through a transaction.
SQLITE_PATH = Path(envstr("TUNIXRT_SQLITE_PATH", str(DATA_DIR / "tunixrt.sqlite3")))
DATABASE_URL = envstr("DATABASE_URL")
if DATABASE_URL:
    DATABASES = {
        "default": dj_database_url.parse(
            DATABASE_URL, conn_max_age=envint("DB_CONN_MAX_AGE", "60"), conn_health_checks=True
        )
    }
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": SQLITE_PATH,
            "OPTIONS": {
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
                "transaction_mode": "IMMEDIATE",
                "timeout": envint("TUNIXRT_SQLITE_TIMEOUT", "30"),
            },
            "TEST": {"NAME": str(DATA_DIR / "test-tunixrt.sqlite3")},
        }
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = envstr("TUNIXRT_TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATIC_ROOT.mkdir(exist_ok=True)
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# Serve straight from the source folders too, so pages have their CSS before collectstatic.
WHITENOISE_USE_FINDERS = True

# Mail (password reset). Unset: no mail is sent and the password-reset pages are off.
EMAIL_HOST = envstr("TUNIXRT_EMAIL_HOST")
EMAIL_CONFIGURED = bool(EMAIL_HOST)
if EMAIL_CONFIGURED:
    EMAIL_PORT = envint("TUNIXRT_EMAIL_PORT", "587")
    EMAIL_HOST_USER = envstr("TUNIXRT_EMAIL_USER")
    EMAIL_HOST_PASSWORD = envstr("TUNIXRT_EMAIL_PASSWORD")
    EMAIL_USE_TLS = envbool("TUNIXRT_EMAIL_TLS", "1")
    DEFAULT_FROM_EMAIL = envstr("TUNIXRT_EMAIL_FROM", "tunix-rt@localhost")

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "runs:list"
LOGOUT_REDIRECT_URL = "login"

# Request bodies: JSON API bodies stay small; dataset uploads are streamed to disk.
DATA_UPLOAD_MAX_MEMORY_SIZE = envint("TUNIXRT_MAX_BODY_BYTES", str(1024 * 1024))
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024
# File parts are held to DATASET_MAX_BYTES while they stream (413 past it), then spooled.
FILE_UPLOAD_HANDLERS = [
    "runs.datasets.uploads.SizeLimitUploadHandler",
    "django.core.files.uploadhandler.MemoryFileUploadHandler",
    "django.core.files.uploadhandler.TemporaryFileUploadHandler",
]

# Production hardening: behind TLS (TUNIXRT_HTTPS=1) cookies are secure and HSTS is on.
HTTPS = envbool("TUNIXRT_HTTPS", "0")
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
# Content-Security-Policy on every answer: scripts and styles only from our own static
# files (or carrying the request's nonce: htmx's loader, the admin's own blocks); no inline
# script, event handler, style attribute or framing. tests/test_csp_browser.py loads every
# main page in Chromium and fails on any violation.
SECURE_CSP = {
    "default-src": [CSP.SELF],
    "script-src": [CSP.SELF, CSP.NONCE],
    "style-src": [CSP.SELF, CSP.NONCE],
    "img-src": [CSP.SELF, "data:"],
    "object-src": [CSP.NONE],
    "base-uri": [CSP.NONE],
    "form-action": [CSP.SELF],
    "frame-ancestors": [CSP.NONE],
}
SESSION_COOKIE_HTTPONLY = True
if HTTPS:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = envbool("TUNIXRT_SSL_REDIRECT", "1")
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = envint("TUNIXRT_HSTS_SECONDS", "31536000")
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = envbool("TUNIXRT_HSTS_PRELOAD", "1")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler", "stream": sys.stderr}},
    "root": {"handlers": ["console"], "level": envstr("TUNIXRT_LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

# --- tunix-rt -----------------------------------------------------------------------------
ARTIFACTS_DIR = Path(envstr("TUNIXRT_ARTIFACTS_DIR", str(DATA_DIR / "artifacts"))).resolve()
DATASETS_DIR = Path(envstr("TUNIXRT_DATASETS_DIR", str(DATA_DIR / "datasets"))).resolve()
MODELS_DIR = Path(envstr("TUNIXRT_MODELS_DIR", str(DATA_DIR / "models"))).resolve()
# JAX's persistent compilation cache, shared by the training, evaluation and generation
# children of this host: a run whose shapes were compiled before (same model, batch, sequence
# length, LoRA rank, method) skips most of its start-up (a tiny SFT launch 31.8 -> 14.8 s,
# GRPO 49 -> 18 s; bench/compile_cache.py). Empty turns it off. It holds compiled programs
# only, written by the worker's OS user like the run folders; keys include the JAX version
# and the device, so an upgrade or another accelerator never reads a stale entry.
COMPILE_CACHE_DIR = envstr("TUNIXRT_COMPILE_CACHE_DIR", str(DATA_DIR / "compile-cache")).strip()
# An object store instead of a shared mount (s3://bucket/prefix or gs://bucket/prefix; the
# `objectstore` extra). The folders above then hold only each host's scratch copy of running
# runs and its cache of dataset files. Credentials come from the usual places of boto /
# google-auth (AWS_ACCESS_KEY_ID..., GOOGLE_APPLICATION_CREDENTIALS); any S3-compatible
# service works with its endpoint in TUNIXRT_S3_ENDPOINT_URL.
ARTIFACTS_URL = envstr("TUNIXRT_ARTIFACTS_URL", "").strip()
DATASETS_URL = envstr("TUNIXRT_DATASETS_URL", "").strip()
S3_ENDPOINT_URL = envstr("TUNIXRT_S3_ENDPOINT_URL", "").strip()
for _url in (ARTIFACTS_URL, DATASETS_URL):
    if _url and (_url.partition("://")[0] not in ("s3", "gs") or not _url.partition("://")[2]):
        raise ImproperlyConfigured(f"{_url!r}: use s3://bucket/prefix or gs://bucket/prefix")
for _folder in (ARTIFACTS_DIR, DATASETS_DIR, MODELS_DIR):
    _folder.mkdir(parents=True, exist_ok=True)

# The interpreter that runs training (it must have the `tunix` extra). It may be a different
# virtual environment from the web process; it is probed in a subprocess, never imported.
TUNIX_PYTHON = envstr("TUNIXRT_TUNIX_PYTHON", sys.executable)
TUNIX_PROBE_TTL = envint("TUNIXRT_TUNIX_PROBE_TTL", "60")
# The module the training interpreter runs (`python -m MODULE CONFIG`). Ours by default; a
# site may point it at its own wrapper that speaks the same protocol.
TUNIX_LAUNCHER_MODULE = envstr("TUNIXRT_LAUNCHER_MODULE", "runs.launcher")

# Run time limits. The default applies when a run names none; no run may ask for more than
# the maximum, and the queue's timeout/retry below are derived from the maximum.
# Evaluate every completed Tunix training run by generation (a per-run "evaluate_after" in
# its config overrides this).
EVALUATE_AFTER_RUN = envbool("TUNIXRT_EVALUATE_AFTER_RUN", "1")
# The playground's generation server (one per worker host): models kept loaded (a run's
# fine-tuned and base model are two), idle seconds before it exits, seconds to wait for it to
# start, and seconds a prompt may take (the first one loads and compiles).
PLAYGROUND_MODELS = envint("TUNIXRT_PLAYGROUND_MODELS", "2")
PLAYGROUND_IDLE_SECONDS = envint("TUNIXRT_PLAYGROUND_IDLE_SECONDS", "900")
PLAYGROUND_START_SECONDS = envint("TUNIXRT_PLAYGROUND_START_SECONDS", "120")
PLAYGROUND_TIMEOUT_SECONDS = envint("TUNIXRT_PLAYGROUND_TIMEOUT_SECONDS", "600")
RUN_TIMEOUT_DEFAULT = envint("TUNIXRT_RUN_TIMEOUT", str(6 * 3600))
RUN_TIMEOUT_MAX = envint("TUNIXRT_RUN_TIMEOUT_MAX", str(3 * 24 * 3600))
CANCEL_GRACE_SECONDS = envint("TUNIXRT_CANCEL_GRACE_SECONDS", "10")
HEARTBEAT_SECONDS = envint("TUNIXRT_HEARTBEAT_SECONDS", "5")
HEARTBEAT_STALE_SECONDS = envint("TUNIXRT_HEARTBEAT_STALE_SECONDS", "60")
REAPER_INTERVAL_SECONDS = envint("TUNIXRT_REAPER_INTERVAL_SECONDS", "30")
# Pending runs not started after this long are handed to the queue again (lost tasks).
REQUEUE_AFTER_SECONDS = envint("TUNIXRT_REQUEUE_AFTER_SECONDS", "600")
MAX_CONCURRENT_RUNS = envint("TUNIXRT_MAX_CONCURRENT_RUNS", "1")


def _slots() -> list[list[str]]:
    """This worker host's training slots, each the list of device ids it owns (an empty list:
    every device the worker sees, shared). TUNIXRT_SLOTS="0,1,2,3;4,5,6,7" names them;
    TUNIXRT_DEVICES_PER_RUN=N splits TUNIXRT_DEVICES (or CUDA_VISIBLE_DEVICES, or
    TPU_VISIBLE_CHIPS) into groups of N; otherwise TUNIXRT_MAX_CONCURRENT_RUNS slots that
    share every device, as before slots owned devices (runs/slots.py)."""
    named = envstr("TUNIXRT_SLOTS").strip()
    per_run = envint("TUNIXRT_DEVICES_PER_RUN", "0")
    if named:
        slots = [[d.strip() for d in group.split(",") if d.strip()] for group in named.split(";")]
        slots = [group for group in slots if group]
    elif per_run > 0:
        listed = (
            envstr("TUNIXRT_DEVICES")
            or envstr("CUDA_VISIBLE_DEVICES")
            or envstr("TPU_VISIBLE_CHIPS")
        )
        devices = [d.strip() for d in listed.split(",") if d.strip()]
        if not devices:
            raise ImproperlyConfigured(
                "TUNIXRT_DEVICES_PER_RUN needs the host's devices: set TUNIXRT_DEVICES=0,1,... "
                "(or CUDA_VISIBLE_DEVICES / TPU_VISIBLE_CHIPS)."
            )
        slots = [devices[i : i + per_run] for i in range(0, len(devices) - per_run + 1, per_run)]
    else:
        return [[] for _ in range(max(1, MAX_CONCURRENT_RUNS))]
    flat = [d for group in slots for d in group]
    if not slots or len(flat) != len(set(flat)):
        raise ImproperlyConfigured(
            f"TUNIXRT_SLOTS={named!r}: give one or more groups of distinct device ids, "
            "e.g. 0,1,2,3;4,5,6,7 (a device belongs to one slot only)."
        )
    return slots


SLOTS = _slots()
# The name this worker host goes by in the run table and the host list. Two hosts must not
# share one (their runs' process groups and slots would be confused); containers that all
# report one host name set it.
HOST_NAME = (envstr("TUNIXRT_HOST_NAME") or socket.gethostname())[:200]
# Idle hosts look for pending runs this often (a submission also wakes them at once).
IDLE_POLL_SECONDS = float(envstr("TUNIXRT_IDLE_POLL_SECONDS", "2"))
# A host whose heartbeat is older than this is not offered runs and not counted as existing
# when a run's device needs are checked.
HOST_STALE_SECONDS = envint("TUNIXRT_HOST_STALE_SECONDS", "120")
# Probe the host's accelerators (a JAX subprocess in the training interpreter) at worker start.
PROBE_DEVICES = envbool("TUNIXRT_PROBE_DEVICES", "1")
LOG_CAP_BYTES = envint("TUNIXRT_LOG_CAP_BYTES", str(16 * 1024 * 1024))
LOG_FLUSH_SECONDS = float(envstr("TUNIXRT_LOG_FLUSH_SECONDS", "1.0"))
LOG_FLUSH_BYTES = envint("TUNIXRT_LOG_FLUSH_BYTES", str(64 * 1024))
# Output a supervisor keeps in memory while the database is unreachable (then counted, dropped).
OUTAGE_BUFFER_BYTES = envint("TUNIXRT_OUTAGE_BUFFER_BYTES", str(64 * 1024 * 1024))
MAX_QUEUED_RUNS_PER_USER = envint("TUNIXRT_MAX_QUEUED_RUNS_PER_USER", "20")
MAX_QUEUED_RUNS_TOTAL = envint("TUNIXRT_MAX_QUEUED_RUNS_TOTAL", "200")
# Dry-runs a user may create a minute (each checks a dataset and counts its lengths); 0: no limit.
DRY_RUNS_PER_MINUTE = envint("TUNIXRT_DRY_RUNS_PER_MINUTE", "60")
RETENTION_DAYS = envint("TUNIXRT_RETENTION_DAYS", "30")
DATASET_MAX_BYTES = envint("TUNIXRT_DATASET_MAX_BYTES", str(512 * 1024 * 1024))
DATASET_MAX_LINE_BYTES = envint("TUNIXRT_DATASET_MAX_LINE_BYTES", str(1024 * 1024))
# Length statistics in tokens (preview, dry-run) tokenize at most this many rows, evenly
# spaced, and scale; counting characters always reads every row.
DATASET_STATS_MAX_TOKENIZED_ROWS = envint("TUNIXRT_DATASET_STATS_MAX_TOKENIZED_ROWS", "20000")

# django-q2. One queue worker process executes one run at a time: one worker per slot. A
# task lives as long as its run, so the task timeout must exceed the longest allowed run, and
# `retry` (when the broker hands an unacknowledged task out again) must exceed the timeout,
# or a running task would be handed to a second worker. tunixrt/apps checks this ordering.
# Each host reads its own queue ("cluster_name"): a task there only wakes that host, which
# then claims the oldest pending run from the run table while it has a free slot. A busy
# host's prefetched task therefore holds no run (runs/services/hosts.py).
QUEUE_NAME = envstr("TUNIXRT_QUEUE_NAME", "tunixrt")
Q_CLUSTER = {
    "name": QUEUE_NAME,
    "cluster_name": f"{QUEUE_NAME}@{HOST_NAME}"[:100],
    "workers": len(SLOTS),
    "recycle": 50,
    "timeout": RUN_TIMEOUT_MAX + 10 * 60,
    "retry": RUN_TIMEOUT_MAX + 20 * 60,
    "max_attempts": 1,
    # Wake-ups carry no run, so what a busy host pulls ahead costs nothing; keep it small.
    "queue_limit": len(SLOTS),
    "bulk": 1,
    "save_limit": 250,
    "catch_up": False,
    "poll": float(envstr("TUNIXRT_QUEUE_POLL_SECONDS", "0.5")),
    "label": "Queue",
}
if envstr("TUNIXRT_REDIS_URL"):
    Q_CLUSTER["redis"] = envstr("TUNIXRT_REDIS_URL")
else:
    Q_CLUSTER["orm"] = "default"
