"""Typed readers for CODER_* environment variables.

Every reader refuses a bad value with an EnvError whose message names the variable, so start-up
stops with one clear line (manage.py, asgi.py and gunicorn.conf.py print it and exit 2), prefixed,
as every one-line error of coderd's commands, with `invoked_as()`.
"""

from __future__ import annotations

import ipaddress
import os
import re
import sys
from collections.abc import Mapping, Sequence
from urllib.parse import parse_qsl, unquote, urlsplit

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
# Go's longest duration in whole hours (Coder's own flags refuse anything past ~292 years). It also
# keeps every duration below threading.TIMEOUT_MAX and inside datetime's range once added to now:
# a bigger one would be accepted here and overflow later (OverflowError in a wait, a 400 at login).
MAX_DURATION_HOURS = 2562047
MAX_DURATION = MAX_DURATION_HOURS * 3600.0
# In-process daemons are threads, each holding its own database connection: PostgreSQL's default
# max_connections is 100, so more could not even all connect, and starting them would take minutes.
# Past this, run external daemons (`manage.py provisionerd`) on other machines.
MAX_PROVISIONER_DAEMONS = 100
# Database connections are kept by the thread that opened them (the request threads of
# coderd/handlers.py, the daemons, the websockets' thread) for this many seconds, not opened per
# request; a health check before a kept connection's first use in a request drops a dead one (a
# restarted server, a failover) instead of failing the request.
CONN_MAX_AGE = 600
_HOSTNAME = re.compile(
    r"(?=.{1,253}\.?$)[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})?(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})?)*\.?"
)


class EnvError(ValueError):
    """A CODER_* variable holds a value that cannot be used."""


def invoked_as(argv: Sequence[str] | None = None) -> str:
    """The command as it was typed, the prefix of every one-line error (`<command>: <message>`):
    `manage.py server`, `manage.py provisionerd`, `gunicorn`. For a management command it is the
    `prog` argparse puts before its own errors, so flag errors and the others read alike."""
    argv = sys.argv if argv is None else argv
    if not argv or not argv[0]:
        return "coderd"
    name = os.path.basename(argv[0])
    if name == "__main__.py":  # python -m <package>
        name = f"python -m {os.path.basename(os.path.dirname(argv[0]))}"
    if name.endswith(("manage.py", "django-admin")) and len(argv) > 1 and not argv[1].startswith("-"):
        return f"{name} {argv[1]}"
    return name


def _raw(name: str, environ: Mapping[str, str] | None) -> str | None:
    return (os.environ if environ is None else environ).get(name)


def parse_bool(value: str, name: str = "value") -> bool:
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise EnvError(f"{name}={value!r} is not a boolean (use true or false)")


def env_bool(name: str, default: bool, environ: Mapping[str, str] | None = None) -> bool:
    raw = _raw(name, environ)
    return default if raw is None else parse_bool(raw, name)


def env_str(name: str, default: str, environ: Mapping[str, str] | None = None) -> str:
    raw = _raw(name, environ)
    return default if raw is None else raw


def parse_int(value: str, name: str = "value", minimum: int | None = None, maximum: int | None = None) -> int:
    try:
        n = int(value.strip())
    except ValueError:
        raise EnvError(f"{name}={value!r} is not an integer") from None
    if minimum is not None and n < minimum:
        raise EnvError(f"{name}={value!r} must be at least {minimum}")
    if maximum is not None and n > maximum:
        raise EnvError(f"{name}={value!r} must be at most {maximum}")
    return n


def env_int(
    name: str,
    default: int,
    environ: Mapping[str, str] | None = None,
    minimum: int | None = None,
    maximum: int | None = None,
) -> int:
    raw = _raw(name, environ)
    return default if raw is None else parse_int(raw, name, minimum, maximum)


def format_duration(seconds: float) -> str:
    """Seconds as a Go-style duration: 86400.0 -> "24h", 5400.0 -> "1h30m", 0.5 -> "0.5s"."""
    if seconds != int(seconds) or seconds < 1:
        return f"{seconds:g}s"
    hours, rest = divmod(int(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(hours, "h"), (minutes, "m"), (secs, "s")]
    return "".join(f"{n}{unit}" for n, unit in parts if n)


def parse_duration(
    value: str, name: str = "value", minimum: float | None = None, maximum: float = MAX_DURATION
) -> float:
    """A Go-style duration ("1s", "30s", "5m", "1h30m", "250ms") in seconds; must be positive,
    at least `minimum` when given, and at most `maximum` (by default Go's longest, ~292 years)."""
    text = value.strip()
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if not text or pos != len(text):
        raise EnvError(f"{name}={value!r} is not a duration (use e.g. 30s, 5m or 1h)")
    if total <= 0:
        raise EnvError(f"{name}={value!r} must be longer than zero")
    if minimum is not None and total < minimum:
        raise EnvError(f"{name}={value!r} must be at least {format_duration(minimum)}")
    if total > maximum:  # also catches an inf from a thousand-digit number
        longest = f"{MAX_DURATION_HOURS}h" if maximum == MAX_DURATION else format_duration(maximum)
        raise EnvError(f"{name}={value!r} is too long (at most {longest})")
    return total


def env_duration(
    name: str,
    default: str,
    environ: Mapping[str, str] | None = None,
    minimum: float | None = None,
    maximum: float = MAX_DURATION,
) -> float:
    raw = _raw(name, environ)
    return parse_duration(default if raw is None else raw, name, minimum, maximum)


def _valid_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    if re.fullmatch(r"[0-9.]+", host):
        return False  # dotted numbers that are no IPv4 address (256.1.1.1, 1.2.3)
    return _HOSTNAME.fullmatch(host) is not None


def parse_address(value: str, name: str = "value") -> tuple[str, int]:
    """ "host:port" (or "[v6]:port", or ":port" for all interfaces) as (host, port)."""
    text = value.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep or not re.fullmatch(r"[0-9]{1,5}", port_text):
        if sep and re.fullmatch(r"[0-9]+", port_text):
            raise EnvError(f"{name}={value!r} has a port outside 0-65535")
        raise EnvError(f"{name}={value!r} is not an address (use host:port, e.g. 127.0.0.1:3000)")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise EnvError(f"{name}={value!r} has a port outside 0-65535")
    bracketed = host.startswith("[") and host.endswith("]")
    if bracketed:
        host = host[1:-1]
    if not host and not bracketed:
        host = "0.0.0.0"
    # "[v6]" must hold an IPv6 address; anything else an IP address or a host name ("[::1" and
    # "256.1.1.1" are neither, and would fail later with a less clear message).
    valid = ":" in host and _valid_host(host) if bracketed else _valid_host(host)
    if not valid:
        raise EnvError(
            f"{name}={value!r} is not a valid address (use host:port, e.g. 127.0.0.1:3000 or [::1]:3000)"
        )
    return host, port


def env_address(name: str, default: str, environ: Mapping[str, str] | None = None) -> tuple[str, int]:
    raw = _raw(name, environ)
    return parse_address(default if raw is None else raw, name)


def parse_http_url(value: str, name: str = "value") -> str:
    """An http(s) URL with a host (and a port, if any, in 1-65535), without its trailing slash."""
    text = value.strip()
    # urlsplit drops tabs and newlines silently; a URL never holds spaces or control characters.
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in text):
        raise EnvError(f"{name}={value!r} is not a URL: it holds a space or a control character")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:  # "Invalid IPv6 URL", "Port out of range 0-65535", a port in letters
        raise EnvError(f"{name}={value!r} is not a URL: {exc}") from None
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise EnvError(f"{name}={value!r} is not an http(s) URL (e.g. https://coder.example.com)")
    if port == 0:
        raise EnvError(f"{name}={value!r} is not a URL: port 0 cannot be reached")
    return text.rstrip("/")


def psk_problem(value: str) -> str | None:
    """Why a pre-shared key cannot travel in an HTTP header (None when it can)."""
    if value != value.strip():
        return "must not start or end with whitespace"
    if any(not (32 <= ord(c) < 127) for c in value):
        return "must be printable ASCII without newlines (e.g. `openssl rand -hex 24`)"
    return None


def parse_postgres_url(value: str, name: str = "CODER_PG_CONNECTION_URL") -> dict:
    """A postgres:// URL (as Coder's CODER_PG_CONNECTION_URL) as a Django DATABASES entry."""
    parts = urlsplit(value.strip())
    if parts.scheme not in {"postgres", "postgresql"} or not parts.path.strip("/"):
        raise EnvError(f"{name} must look like postgres://user:password@host:port/database")
    try:
        port = parts.port
    except ValueError:
        raise EnvError(f"{name} has a bad port") from None
    options = dict(parse_qsl(parts.query))
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(parts.path.lstrip("/")),
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": options.pop("host", parts.hostname or ""),
        "PORT": str(port or ""),
        "OPTIONS": options,
        "CONN_MAX_AGE": CONN_MAX_AGE,
        "CONN_HEALTH_CHECKS": True,
    }


def parse_redis_url(value: str, name: str = "CODER_REDIS_URL") -> str:
    """A Redis URL as redis-py reads it (redis://, rediss:// or unix://); the value is never echoed
    (it may hold a password)."""
    value = value.strip()
    parts = urlsplit(value)
    shape = f"{name} must look like redis://[:password@]host[:port][/db] (or rediss://, unix://)"
    if parts.scheme not in {"redis", "rediss", "unix"}:
        raise EnvError(shape)
    try:
        port = parts.port
    except ValueError:
        raise EnvError(f"{name} has a bad port") from None
    if parts.scheme == "unix":
        if not parts.path:
            raise EnvError(shape)
        return value
    if not parts.hostname or port == 0:
        raise EnvError(shape)
    db = parts.path.strip("/")
    if db and not (db.isascii() and db.isdigit()):
        raise EnvError(f"{name} names a database that is not a number: {db!r}")
    return value
