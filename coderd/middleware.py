"""Django's header middlewares for the API's chain, their hooks called on the event loop.

Django's `MiddlewareMixin` runs a sync middleware's `process_request` and `process_response` in an
async chain through `sync_to_async`: two thread hops a middleware a request, about 0.1 ms each on an
idle core and far more on a busy one. The hooks below only read and add headers (no database, no
file, no lock), so they are called directly; what they check and add is Django's own code, unchanged.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponseBase
from django.middleware import clickjacking, common, security


class _OnTheLoop:
    """Call the hooks of a `MiddlewareMixin` directly in `__acall__`. Only for hooks that do no I/O."""

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        response = None
        if hasattr(self, "process_request"):
            response = self.process_request(request)
        response = response or await self.get_response(request)
        if hasattr(self, "process_response"):
            response = self.process_response(request, response)
        return response


class SecurityMiddleware(_OnTheLoop, security.SecurityMiddleware):
    """nosniff, Referrer-Policy, Cross-Origin-Opener-Policy (and HSTS, SSL redirect if configured)."""


class CommonMiddleware(_OnTheLoop, common.CommonMiddleware):
    """Above all `request.get_host()`: a Host header not in ALLOWED_HOSTS is refused (400)."""


class XFrameOptionsMiddleware(_OnTheLoop, clickjacking.XFrameOptionsMiddleware):
    """X-Frame-Options: DENY, as on every response before the chains split."""
