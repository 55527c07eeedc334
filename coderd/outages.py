"""Outages of the services coderd depends on (the database, the Redis channel layer), told once.

When PostgreSQL or Redis goes away, every request, daemon loop and websocket that touches it fails
the same way; a traceback each would bury the one fact an operator needs. Each process keeps one
`Outage` per service: the first failure logs one WARNING (what failed, what coderd does meanwhile),
later ones only DEBUG, and the first success afterwards one INFO with how long it lasted.

Database: `is_database_outage(exc)` tells an unreachable database (refused, reset, shutting down,
a connection already closed) from errors of one query (a lock timeout, a serialization failure);
`note_database_error()` records the former. Recovery is noticed when Django opens a new connection
(`connection_created`, coderd/signals.py): after an outage every connection is a new one.
"""

from __future__ import annotations

import logging
import threading
import time

from django.http import HttpResponse, JsonResponse

log = logging.getLogger("coderd.outages")

# Clients are told to come back after this many seconds (the Retry-After of a 503).
RETRY_AFTER_SECONDS = 5

# SQLSTATE classes and codes that mean the server is unreachable, not that one query failed:
# 08 connection exception; 57P01-57P03 the server is shutting down, crashed, or still starting.
_UNREACHABLE_SQLSTATE_CLASSES = ("08",)
_UNREACHABLE_SQLSTATES = {"57P01", "57P02", "57P03"}


class Outage:
    """One dependency's state in this process, and the two log lines of each outage."""

    def __init__(self, name: str, meanwhile: str) -> None:
        self.name = name
        self.meanwhile = meanwhile
        self._lock = threading.Lock()
        self._since: float | None = None
        self.epoch = 0  # bumped at the start of each outage: what was built on the service is gone

    @property
    def down(self) -> bool:
        return self._since is not None

    def failed(self, exc: BaseException | str) -> None:
        reason = exc if isinstance(exc, str) else _reason(exc)
        with self._lock:
            starting = self._since is None
            if starting:
                self._since = time.monotonic()
                self.epoch += 1
        if starting:
            log.warning("%s unreachable: %s; %s", self.name, reason, self.meanwhile)
        else:
            log.debug("%s still unreachable: %s", self.name, reason)

    def recovered(self) -> None:
        if self._since is None:  # the common case, without the lock
            return
        with self._lock:
            since, self._since = self._since, None
        if since is not None:
            log.info("%s reachable again after %.1f s", self.name, time.monotonic() - since)


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if not text:  # asyncio's and the socket's timeouts say nothing
        text = "no answer in time" if isinstance(exc, TimeoutError) else type(exc).__name__
    return text[:300]


database = Outage(
    "database",
    "requests that need it are answered 503 with Retry-After until it is back",
)
channel_layer = Outage(
    "channel layer (Redis)",
    "websocket followers poll the database every second until it is back",
)


def is_database_outage(exc: BaseException) -> bool:
    """Whether `exc` says the database cannot be reached at all (rather than one query failing)."""
    from django.db import InterfaceError, OperationalError

    if isinstance(exc, InterfaceError):
        return True  # "connection already closed": the link is gone
    if not isinstance(exc, OperationalError):
        return False
    cause = exc.__cause__
    sqlstate = getattr(cause, "sqlstate", None)
    if sqlstate:
        return sqlstate.startswith(_UNREACHABLE_SQLSTATE_CLASSES) or sqlstate in _UNREACHABLE_SQLSTATES
    # psycopg raises connection failures (refused, reset, server closed the connection) without a
    # SQLSTATE: no server was there to give one. SQLite's OperationalErrors (a locked database) are
    # about one statement.
    return type(cause).__module__.startswith("psycopg")


def note_database_error(exc: BaseException) -> bool:
    """Record `exc` if it is an outage (logged once); False for any other error, left to the caller."""
    if is_database_outage(exc):
        database.failed(exc)
        return True
    return False


def database_unavailable_response() -> HttpResponse:
    """503 in API.md's JSON shape, with Retry-After: what any request that needed the database gets."""
    response = JsonResponse(
        {
            "message": "The database is unavailable.",
            "detail": f"coderd cannot reach its database right now; try again in {RETRY_AFTER_SECONDS} s.",
            "validations": [],
        },
        status=503,
    )
    response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


class DatabaseOutageLogFilter(logging.Filter):
    """For `django.request`: an error page caused by an unreachable database is the outage's one
    line, not a traceback per request; nor is each 503 answered meanwhile a line of its own."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "status_code", None) == 503:
            return False
        exc = record.exc_info[1] if record.exc_info else None
        return exc is None or not note_database_error(exc)
