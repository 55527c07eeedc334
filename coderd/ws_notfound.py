"""Websocket refusals: an HTTP status with API.md's JSON where the server can send one, else a close.

A websocket refused before it is accepted gets a bare 403 from the ASGI server, whatever the reason.
Where the server offers the websocket denial response (the ASGI `websocket.http.response`
extension; uvicorn does, Daphne does not), `RefusalMiddleware` answers instead with a status and
`{"message", "detail", "validations"}`; elsewhere the close goes through and the server says 403.

Who refuses says why with the close code, 4000 + the HTTP status, and the close reason as the
message: `await self.close(code=4401, reason="...")` in a consumer (`REFUSED_UNAUTHENTICATED` and
friends below). A close without such a code is a 403.

Also here: `not_found`, the app for a path no route matches (Channels' URLRouter would raise
"No route found", logged as a traceback and counted as a 500), and `OriginCheck`, which compares
the page's scheme, host and port (Channels' AllowedHostsOriginValidator compares host names only)
and refuses with 403 and a reason instead of a bare close.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.http.request import split_domain_port, validate_host

from coderd.errors import BadRequest, Forbidden, NotFound, Unauthorized
from coderd.outages import RETRY_AFTER_SECONDS

REFUSED_BAD_REQUEST = 4400
REFUSED_UNAUTHENTICATED = 4401
REFUSED_FORBIDDEN = 4403
REFUSED_NOT_FOUND = 4404

_MESSAGES = {e.status: e.default_message for e in (BadRequest, Unauthorized, Forbidden, NotFound)}
_EXTENSION = "websocket.http.response"

# The connection's task, once its denial response went out completely (see quiet_uvicorn_denials).
# A task, not a flag: asgiref's async_to_sync copies context variables back to its caller.
_denied_in: contextvars.ContextVar[asyncio.Task | None] = contextvars.ContextVar(
    "coderd_ws_denied_in", default=None
)


def _current_task() -> asyncio.Task | None:
    try:
        return asyncio.current_task()
    except RuntimeError:  # no running loop
        return None


def can_deny(scope: dict[str, Any]) -> bool:
    return _EXTENSION in (scope.get("extensions") or {})


def status_for_close(code: Any) -> int:
    """The HTTP status a refusal's close code asks for: 4000 + a 4xx or 5xx status, else 403."""
    if isinstance(code, int) and 4400 <= code <= 4599:
        return code - 4000
    return 403


async def send_denial(send, status: int, message: str = "", detail: str = "") -> None:
    """The denial response: `status` with API.md's JSON. Only when `can_deny(scope)`."""
    body = json.dumps(
        {"message": message or _MESSAGES.get(status, "Refused."), "detail": detail, "validations": []}
    ).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 503:  # a dependency is away (coderd.outages): say when to come back
        headers.append((b"retry-after", str(RETRY_AFTER_SECONDS).encode()))
    await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
    await send({"type": "websocket.http.response.body", "body": body, "more_body": False})


class RefusalMiddleware:
    """Turns a close before accept into a denial response where the server offers one."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "websocket" or not can_deny(scope):
            return await self.app(scope, receive, send)
        accepted = False
        denied = False

        async def refusing_send(message):
            nonlocal accepted, denied
            kind = message["type"]
            if denied:
                return  # the refusal was answered; a second close has nowhere to go
            if kind == "websocket.accept":
                accepted = True
            elif kind == "websocket.close" and not accepted:
                denied = True
                status = status_for_close(message.get("code"))
                await send_denial(send, status, message.get("reason") or "")
                return
            elif kind == "websocket.http.response.body" and not message.get("more_body", False):
                denied = True  # the app answered its own denial
            await send(message)

        try:
            await self.app(scope, receive, refusing_send)
        finally:
            if denied:
                _denied_in.set(_current_task())


async def not_found(scope, receive, send) -> None:
    """The app for a websocket on a path no route matches: 404 (or a close: the server says 403)."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    if can_deny(scope):
        await send_denial(send, 404, "Route not found.", f"No websocket at {scope.get('path', '')}.")
        return
    await send({"type": "websocket.close", "code": REFUSED_NOT_FOUND})


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(scheme: str, host: str | None, port: int | None) -> tuple[str, str, int] | None:
    if scheme not in _DEFAULT_PORTS or not host:
        return None
    return scheme, host.lower().rstrip("."), port or _DEFAULT_PORTS[scheme]


def parse_origin(value: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an Origin or URL, the port filled in from the scheme; None if not
    an http(s) origin."""
    try:
        parts = urlsplit(value.strip())
        return _origin(parts.scheme.lower(), parts.hostname, parts.port)
    except ValueError:  # a port out of range, a bracket left open
        return None


class OriginCheck:
    """Refuses a websocket whose page is not this site's, with 403 and a reason.

    Allowed: the origin of CODER_ACCESS_URL (scheme, host and port), or the origin whose host and
    port are those of the request's own Host header (same origin, as Coder's websocket library
    checks it), that Host being one of ALLOWED_HOSTS. A Host without a port takes the default port
    of the origin's scheme, and an https page may use a plain ws:// socket: behind a TLS proxy both
    are what we see; on a socket we serve over TLS (wss) the page must be https. Channels' AllowedHostsOriginValidator compares host
    names only: a page on any other port of an allowed host could open sockets with the user's
    cookie."""

    def __init__(self, application, allowed_hosts: list[str], access_url: str = "") -> None:
        self.application = application
        self.allowed_hosts = allowed_hosts
        self.access_origin = parse_origin(access_url) if access_url else None

    def allowed(self, scope: dict[str, Any]) -> bool:
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        raw = headers.get(b"origin")
        if raw is None:
            return False
        origin = parse_origin(raw.decode("latin-1"))
        if origin is None or (scope.get("scheme") == "wss" and origin[0] != "https"):
            return False  # a page over plain HTTP has no business on a socket we serve over TLS
        if origin == self.access_origin:
            return True
        host_header = headers.get(b"host", b"").decode("latin-1").strip()
        if not host_header or not validate_host(split_domain_port(host_header)[0], self.allowed_hosts):
            return False
        own = parse_origin(f"{origin[0]}://{host_header}")
        return own is not None and own[1:] == origin[1:]

    async def __call__(self, scope, receive, send):
        if self.allowed(scope):
            return await self.application(scope, receive, send)
        message = await receive()
        if message["type"] == "websocket.connect":
            await send(
                {"type": "websocket.close", "code": REFUSED_FORBIDDEN, "reason": "Origin not allowed."}
            )


def allowed_hosts_origin_check(app) -> OriginCheck:
    """The websocket origin check with this server's ALLOWED_HOSTS and CODER_ACCESS_URL."""
    allowed_hosts = settings.ALLOWED_HOSTS
    if settings.DEBUG and not allowed_hosts:
        allowed_hosts = ["localhost", "127.0.0.1", "[::1]"]
    return OriginCheck(app, allowed_hosts, getattr(settings, "ACCESS_URL", ""))


UVICORN_INCOMPLETE_HANDSHAKE = "ASGI callable returned without completing handshake."


class _DenialLogFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage() != UVICORN_INCOMPLETE_HANDSHAKE:
            return True
        task = _current_task()
        return task is None or _denied_in.get() is not task


def quiet_uvicorn_denials() -> None:
    """Drop uvicorn's false "returned without completing handshake" ERROR after a denial response.

    uvicorn's websockets-sansio protocol (its default) never marks the handshake done after a denial
    response, so it logs that line for every one (Kludex/uvicorn PR #3138, open); its wsproto
    protocol does not. The line is dropped only in the connection whose app sent a complete denial
    (a context variable naming that connection's task), so a real incomplete handshake still logs."""
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _DenialLogFilter) for f in logger.filters):
        logger.addFilter(_DenialLogFilter())
