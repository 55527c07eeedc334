"""`/metrics` on the main HTTP port: the same exposition as the listener, behind authentication.

Allowed: an API token (`Authorization: Bearer`, `Coder-Session-Token`, or the session cookie) of an
owner or auditor, or such a user's admin session; everyone when PROMETHEUS_PUBLIC is on. The view is
sync on purpose: Django runs it in a worker thread, so gathering (and a database refresh) never
stalls the event loop.
"""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from metrics import runtime
from metrics.serving import expose

READ_METRICS_ROLES = ("owner", "auditor")


def _error(status: int, message: str, detail: str = "") -> JsonResponse:
    return JsonResponse({"message": message, "detail": detail, "validations": []}, status=status)


def _user(request: HttpRequest):
    from coderd.users.auth import token_from_request
    from coderd.users.services import user_for_token

    token = token_from_request(request)
    if token:
        return user_for_token(token, timezone.now())
    user = getattr(request, "user", None)
    return user if user is not None and user.is_authenticated and user.is_active else None


# CSRF-exempt: it changes nothing, and a POST must get the JSON 405 below, not CSRF's HTML 403.
@csrf_exempt
def metrics_view(request: HttpRequest) -> HttpResponse:
    if request.method not in ("GET", "HEAD"):
        response = _error(405, "Method not allowed.", detail="Allowed: GET, HEAD.")
        response["Allow"] = "GET, HEAD"
        return response
    if not settings.PROMETHEUS_ENABLE:
        return _error(404, "Metrics are not enabled (--prometheus-enable).")
    if not settings.PROMETHEUS_PUBLIC:
        user = _user(request)
        if user is None:
            return _error(401, "You must be authenticated to read metrics.")
        if not user.has_role(*READ_METRICS_ROLES):
            return _error(403, "Only owners and auditors can read metrics.")
    status, headers, body = expose(
        runtime.current(),
        request.headers.get("Accept"),
        request.headers.get("Accept-Encoding"),
        {k: request.GET.getlist(k) for k in request.GET},
    )
    response = HttpResponse(body, status=int(status.split(" ", 1)[0]))
    for name, value in headers:
        response[name] = value
    return response
