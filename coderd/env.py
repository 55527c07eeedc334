"""Typed readers for CODER_* environment variables.

Every reader refuses a bad value with an EnvError whose message names the variable, so start-up
stops with one clear line (manage.py, asgi.py and gunicorn.conf.py print it and exit 2).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from urllib.parse import parse_qsl, unquote, urlsplit

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


class EnvError(ValueError):
    """A CODER_* variable holds a value that cannot be used."""


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


def parse_int(value: str, name: str = "value", minimum: int | None = None) -> int:
    try:
        n = int(value.strip())
    except ValueError:
        raise EnvError(f"{name}={value!r} is not an integer") from None
    if minimum is not None and n < minimum:
        raise EnvError(f"{name}={value!r} must be at least {minimum}")
    return n


def env_int(
    name: str, default: int, environ: Mapping[str, str] | None = None, minimum: int | None = None
) -> int:
    raw = _raw(name, environ)
    return default if raw is None else parse_int(raw, name, minimum)


def parse_duration(value: str, name: str = "value") -> float:
    """A Go-style duration ("1s", "30s", "5m", "1h30m", "250ms") in seconds; must be positive."""
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
    return total


def env_duration(name: str, default: str, environ: Mapping[str, str] | None = None) -> float:
    raw = _raw(name, environ)
    return parse_duration(default if raw is None else raw, name)


def parse_address(value: str, name: str = "value") -> tuple[str, int]:
    """ "host:port" (or "[v6]:port", or ":port" for all interfaces) as (host, port)."""
    text = value.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit():
        raise EnvError(f"{name}={value!r} is not an address (use host:port, e.g. 127.0.0.1:3000)")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise EnvError(f"{name}={value!r} has a port outside 0-65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        host = "0.0.0.0"
    if any(c.isspace() for c in host) or "/" in host:
        raise EnvError(f"{name}={value!r} is not an address (use host:port, e.g. 127.0.0.1:3000)")
    return host, port


def env_address(name: str, default: str, environ: Mapping[str, str] | None = None) -> tuple[str, int]:
    raw = _raw(name, environ)
    return parse_address(default if raw is None else raw, name)


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
        "CONN_MAX_AGE": 0,
        "CONN_HEALTH_CHECKS": True,
    }
