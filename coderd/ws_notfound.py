"""Websocket refusals: an HTTP status with API.md's JSON where the server can send one, else a close.

A websocket refused before it is accepted gets a bare 403 from the ASGI server, whatever the reason.
Where the server offers the websocket denial response (the ASGI `websocket.http.response`
extension; uvicorn does, Daphne does not), `RefusalMiddleware` answers instead with a status and
`{"message", "detail", "validations"}`; elsewhere the close goes through and the server says 403.

Who refuses says why with the close code, 4000 + the HTTP status, and the close reason as the
message: `await self.close(code=4401, reason="...")` in a consumer (`REFUSED_UNAUTHENTICATED` and
friends below). A close without such a code is a 403.

Also here: `not_found`, the app for a path no route matches (Channels' URLRouter would raise
"No route found", logged as a traceback and counted as a 500), and `OriginCheck`, Channels'
AllowedHostsOriginValidator refusing with 403 and a reason instead of a bare close.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
from typing import Any
from urllib.parse import urlparse

from channels.security.websocket import OriginValidator
from django.conf import settings

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


class OriginCheck(OriginValidator):
    """Channels' OriginValidator, refusing with 403 and a reason (its WebsocketDenier closes bare)."""

    async def __call__(self, scope, receive, send):
        parsed_origin = None
        for name, value in scope.get("headers", []):
            if name == b"origin":
                try:
                    parsed_origin = urlparse(value.decode("latin1"))
                except (UnicodeDecodeError, ValueError):
                    pass
        if self.valid_origin(parsed_origin):
            return await self.application(scope, receive, send)
        message = await receive()
        if message["type"] == "websocket.connect":
            await send(
                {"type": "websocket.close", "code": REFUSED_FORBIDDEN, "reason": "Origin not allowed."}
            )


def allowed_hosts_origin_check(app) -> OriginCheck:
    """Channels' AllowedHostsOriginValidator, as an OriginCheck."""
    allowed_hosts = settings.ALLOWED_HOSTS
    if settings.DEBUG and not allowed_hosts:
        allowed_hosts = ["localhost", "127.0.0.1", "[::1]"]
    return OriginCheck(app, allowed_hosts)


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
