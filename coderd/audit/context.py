"""Who is asking and from where, for the audit trail, without every caller passing the request.

The middleware puts the request in a context variable for the length of the request; service
functions read the client's address, user agent and request id from it when they record a change.
asgiref copies context variables into the threads that run sync views, so this holds under ASGI.
"""

from __future__ import annotations

import uuid
from contextvars import ContextVar
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest

_current_request: ContextVar[HttpRequest | None] = ContextVar("coderd_audit_request", default=None)


def current_request() -> HttpRequest | None:
    return _current_request.get()


def client_ip(request: HttpRequest | None) -> str | None:
    """The peer's address. X-Forwarded-For is not read: nothing configures which proxies to trust,
    and an untrusted header would let any client write any address into the trail."""
    if request is None:
        return None
    return request.META.get("REMOTE_ADDR") or None


def user_agent(request: HttpRequest | None) -> str:
    if request is None:
        return ""
    return request.headers.get("User-Agent", "")[:1024]


def request_id(request: HttpRequest | None) -> uuid.UUID | None:
    """One id per request, shared by every row it writes (an admin action over ten users)."""
    if request is None:
        return None
    rid = getattr(request, "_audit_request_id", None)
    if rid is None:
        rid = request._audit_request_id = uuid.uuid4()  # type: ignore[attr-defined]
    return rid


def request_actor(request: HttpRequest | None) -> Any:
    """The caller: the API's token owner (`request.auth`) or the admin's session user."""
    if request is None:
        return None
    user = getattr(request, "auth", None)
    if user is not None and getattr(user, "pk", None) is not None:
        return user
    user = getattr(request, "user", None)
    if user is not None and getattr(user, "is_authenticated", False):
        return user
    return None


def is_admin_request(request: HttpRequest | None) -> bool:
    match = getattr(request, "resolver_match", None)
    return match is not None and match.app_name == "admin"


class AuditContextMiddleware:
    """Sync and async capable, so it adds no thread hop to either chain."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response
        self._async = iscoroutinefunction(get_response)
        if self._async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self._async:
            return self.__acall__(request)
        token = _current_request.set(request)
        try:
            return self.get_response(request)
        finally:
            _current_request.reset(token)

    async def __acall__(self, request: HttpRequest) -> Any:
        token = _current_request.set(request)
        try:
            return await self.get_response(request)
        finally:
            _current_request.reset(token)
