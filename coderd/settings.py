"""coderd settings: every value from a CODER_* environment variable, read by a typed helper.

Embedded defaults serve one machine: SQLite in the data folder, the in-memory channel layer,
in-process provisioner daemons. CODER_PG_CONNECTION_URL and CODER_REDIS_URL move past one machine.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from django.utils.functional import SimpleLazyObject

from coderd import datadir
from coderd.env import (
    CONN_MAX_AGE,
    MAX_PROVISIONER_DAEMONS,
    EnvError,
    env_address,
    env_bool,
    env_duration,
    env_int,
    env_str,
    format_duration,
    parse_postgres_url,
    parse_redis_url,
    psk_problem,
)

BASE_DIR = Path(__file__).resolve().parent.parent


def _default_data_dir() -> Path:
    xdg = os.environ.get("XDG_DATA_HOME")
    if xdg:
        return Path(xdg) / "coderd"
    home = Path.home()
    if home.is_dir() and os.access(home, os.W_OK):
        return home / ".local" / "share" / "coderd"
    return BASE_DIR / "data"


_data_dir = env_str("CODER_DATA_DIR", str(_default_data_dir()))
if not _data_dir.strip():
    # Path("") is the current folder: the database would land wherever the command was started.
    raise EnvError("CODER_DATA_DIR='' is empty: give a folder, or unset it to use the default")
# Made at first use (the database, the secret key), never here, and private (0700, files 0600):
# see coderd/datadir.py. An existing one that others can read is reported by the check coderd.W007.
DATA_DIR = Path(_data_dir).expanduser()
# Read (or generated and kept in the data folder) when Django first uses it, not at import.
SECRET_KEY = SimpleLazyObject(lambda: datadir.secret_key(DATA_DIR))
DEBUG = env_bool("CODER_DEBUG", False)

HTTP_ADDRESS = env_address("CODER_HTTP_ADDRESS", "127.0.0.1:3000")
ACCESS_URL = env_str("CODER_ACCESS_URL", "")
_hosts = ["localhost", "127.0.0.1", "[::1]", "::1"]
if ACCESS_URL:
    from urllib.parse import urlsplit

    try:
        _hosts.append(urlsplit(ACCESS_URL).hostname or "")
    except ValueError:
        pass  # not a URL at all: the check coderd.E001 says so and stops the server
_hosts += [h.strip() for h in env_str("CODER_ALLOWED_HOSTS", "").split(",") if h.strip()]
ALLOWED_HOSTS = [h for h in _hosts if h]

# API keys: how long a session from login lives, and how often last_used is written.
# Keys live whole seconds: a session under 1 s would be a key that is never valid.
SESSION_DURATION = env_duration("CODER_SESSION_DURATION", "24h", minimum=1.0)
MAX_TOKEN_LIFETIME = env_duration("CODER_MAX_TOKEN_LIFETIME", "720h", minimum=1.0)
if SESSION_DURATION > MAX_TOKEN_LIFETIME:
    # Login would ask for a key longer than any key may live, and fail every time.
    raise EnvError(
        f"CODER_SESSION_DURATION ({format_duration(SESSION_DURATION)}) is longer than "
        f"CODER_MAX_TOKEN_LIFETIME ({format_duration(MAX_TOKEN_LIFETIME)})"
    )
API_KEY_LAST_USED_WRITE_INTERVAL = 60.0
# The admin's session (a cookie) lives as long as an API session, not Django's 14 days.
SESSION_COOKIE_AGE = int(SESSION_DURATION)

INSTALLED_APPS = [
    # Before daphne: its runserver (Daphne's, plus in-process provisioner daemons) must win.
    "provisioner",
    "daphne",  # so that runserver serves websockets
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "channels",
    # Its templates and static files: /api/v2/docs then loads Swagger UI from this server, not a CDN.
    "ninja",
    "coderd",
    "coderd.users",
    "coderd.workspaces",
    "coderd.audit",
    "metrics",
]

# Everything but the API: the admin, /metrics (which also accepts an admin session), unknown paths.
MIDDLEWARE = [
    "metrics.middleware.PrometheusMiddleware",
    # Before the others: whatever changes state below it can record who asked, and from where.
    "coderd.audit.context.AuditContextMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
# The API (/api/ and /healthz, coderd/handlers.py): token-authenticated, so no sessions, CSRF,
# messages or auth middleware; the same metrics middleware first, the same headers, no thread hop.
API_MIDDLEWARE = [
    "metrics.middleware.PrometheusMiddleware",
    "coderd.audit.context.AuditContextMiddleware",  # on the loop too: no thread hop
    "coderd.middleware.SecurityMiddleware",
    "coderd.middleware.CommonMiddleware",
    "coderd.middleware.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "coderd.urls"
ASGI_APPLICATION = "coderd.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        # Before the apps' folders: coderd's admin/index.html and admin/base_site.html extend the admin's.
        "DIRS": [BASE_DIR / "coderd" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

PG_CONNECTION_URL = env_str("CODER_PG_CONNECTION_URL", "")
if PG_CONNECTION_URL:
    DATABASES = {"default": parse_postgres_url(PG_CONNECTION_URL)}
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": DATA_DIR / "coderd.sqlite3",
            # Tests get a file too, one per test process: daemon threads need WAL and the busy
            # timeout, which an in-memory shared-cache database does not honour ("table is locked").
            "TEST": {"NAME": os.path.join(tempfile.gettempdir(), f"coderd-test-{os.getpid()}.sqlite3")},
            "CONN_MAX_AGE": CONN_MAX_AGE,  # its PRAGMAs run once per connection, not per request
            "CONN_HEALTH_CHECKS": True,
            # WAL lets daemons write while the API reads; a busy writer waits instead of failing.
            "OPTIONS": {
                # Makes the data folder and the database file (private, empty: a valid SQLite
                # database) at the first connection, before SQLite would make the file with the
                # umask's mode; its -wal and -shm files take the database's mode.
                "factory": datadir.SQLiteConnection,
                "timeout": 20,
                "transaction_mode": "IMMEDIATE",
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
        }
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_USER_MODEL = "users.User"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 6}},
]

REDIS_URL = env_str("CODER_REDIS_URL", "")
if REDIS_URL:
    REDIS_URL = parse_redis_url(REDIS_URL)
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialBackoff

    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                "hosts": [
                    {
                        "address": REDIS_URL,
                        # redis-py 8 reads with a 5 s socket timeout by default, the same length as
                        # channels_redis's blocking BZPOPMIN: the read timed out and killed long-lived
                        # consumers. Give reads room; a Redis that does not answer at all is cut here.
                        "socket_timeout": 30,
                        "socket_connect_timeout": 2,
                        # A pooled connection that a restarted Redis closed fails once, then a new one
                        # is made: without a retry that first command failed (a 500 after the outage).
                        "retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
                    }
                ]
            },
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# Provisioner daemons.
PROVISIONER_DAEMONS = env_int("CODER_PROVISIONER_DAEMONS", 3, minimum=0, maximum=MAX_PROVISIONER_DAEMONS)
PROVISIONER_DAEMON_PSK = env_str("CODER_PROVISIONER_DAEMON_PSK", "")
if psk_problem(PROVISIONER_DAEMON_PSK):  # the key travels in a header; it is never echoed
    raise EnvError(f"CODER_PROVISIONER_DAEMON_PSK {psk_problem(PROVISIONER_DAEMON_PSK)}")
# Read by the deployment checks (coderd/deploy_checks.py) from the environment; refused here when
# they are not counts, instead of being ignored there.
env_int("CODER_WORKERS", 1, minimum=1)
env_int("CODER_REPLICAS", 1, minimum=1)
# A running job with no heartbeat for this long is failed by the reaper (provisioner/reaper.py).
PROVISIONER_HUNG_JOB_TIMEOUT = env_duration("CODER_PROVISIONER_HUNG_JOB_TIMEOUT", "30s")
# Daemons beat every 5 s (provisioner.execution.HEARTBEAT_INTERVAL; a test keeps the two equal), and
# one beat can be late (a busy database, a reaper pass just before it): a timeout under three beats
# fails healthy jobs (3 s failed a live 20 s job after 4.3 s), so it is refused, not taken.
PROVISIONER_HEARTBEAT_INTERVAL = 5.0
PROVISIONER_MIN_HUNG_JOB_TIMEOUT = 3 * PROVISIONER_HEARTBEAT_INTERVAL
if PROVISIONER_HUNG_JOB_TIMEOUT < PROVISIONER_MIN_HUNG_JOB_TIMEOUT:
    raise EnvError(
        f"CODER_PROVISIONER_HUNG_JOB_TIMEOUT={os.environ['CODER_PROVISIONER_HUNG_JOB_TIMEOUT']!r} is too "
        f"short: at least {format_duration(PROVISIONER_MIN_HUNG_JOB_TIMEOUT)} (three heartbeats of "
        f"{format_duration(PROVISIONER_HEARTBEAT_INTERVAL)}), or jobs are failed while their daemon is alive"
    )
# Shell scripts run inside bubblewrap (provisioner/runners/sandbox.py); false runs them unconfined.
PROVISIONER_SHELL_SANDBOX = env_bool("CODER_PROVISIONER_SHELL_SANDBOX", True)
# The bwrap executable: a name is looked up on PATH.
PROVISIONER_SHELL_BWRAP = env_str("CODER_PROVISIONER_SHELL_BWRAP", "bwrap")

# Metrics.
PROMETHEUS_ENABLE = env_bool("CODER_PROMETHEUS_ENABLE", False)
PROMETHEUS_ADDRESS = env_address("CODER_PROMETHEUS_ADDRESS", "127.0.0.1:2112")
PROMETHEUS_LEGACY_METRICS = env_bool("CODER_PROMETHEUS_LEGACY_METRICS", True)
PROMETHEUS_REFRESH_INTERVAL = env_duration("CODER_PROMETHEUS_REFRESH_INTERVAL", "60s")
# /metrics on the main port without authentication (the listener never asks for any).
PROMETHEUS_PUBLIC = env_bool("CODER_PROMETHEUS_PUBLIC", False)
# coderd_db_query_* (metrics/dbquery.py): a few µs on every query (docs/benchmarks.md).
PROMETHEUS_COLLECT_DB_METRICS = env_bool("CODER_PROMETHEUS_COLLECT_DB_METRICS", True)
# django-prometheus's database wrappers: django_db_* query counters and latencies (a small cost on
# every query, so off unless asked for).
PROMETHEUS_DJANGO_DB_METRICS = env_bool("CODER_PROMETHEUS_DJANGO_DB_METRICS", False)
if PROMETHEUS_DJANGO_DB_METRICS:
    for _db in DATABASES.values():
        _db["ENGINE"] = _db["ENGINE"].replace("django.db.backends.", "django_prometheus.db.backends.")

# A request body larger than this is refused with 413.
DATA_UPLOAD_MAX_MEMORY_SIZE = 1024 * 1024

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True
# The admin shows times to the second (coderd/formats/en/formats.py).
FORMAT_MODULE_PATH = ["coderd.formats"]

STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}

SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False

_log_level = env_str("CODER_LOG_LEVEL", "info")
LOG_LEVEL = _log_level.strip().upper()
if LOG_LEVEL not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
    raise EnvError(f"CODER_LOG_LEVEL={_log_level!r} is not one of debug, info, warning, error")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"line": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "filters": {"database_outage": {"()": "coderd.outages.DatabaseOutageLogFilter"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "line"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        "daphne": {"level": "WARNING"},
        "uvicorn.access": {"level": "WARNING"},
        # A request naming a host not in ALLOWED_HOSTS (scanners send them all day) is answered 400;
        # Django would also log each one at ERROR with a traceback.
        "django.security.DisallowedHost": {"level": "CRITICAL"},
        # An error page caused by an unreachable database: one line per outage, not a traceback each.
        "django.request": {"filters": ["database_outage"]},
    },
}
