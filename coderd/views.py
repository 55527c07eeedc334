"""Plain Django views: the health check, the favicon and JSON answers for URLs no route matches
under /api/."""

from __future__ import annotations

import functools
from pathlib import Path

from django.contrib.staticfiles import finders
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.defaults import page_not_found
from django.views.defaults import server_error as django_server_error


def healthz(request: HttpRequest) -> HttpResponse:
    # Coder answers "OK" as text; load balancers only look at the status.
    return HttpResponse("OK", content_type="text/plain")


@functools.cache
def _favicon() -> bytes:
    return Path(finders.find("coderd/favicon.svg")).read_bytes()


def favicon(request: HttpRequest) -> HttpResponse:
    """/favicon.ico, which browsers ask for on pages that name no icon (a JSON answer, an error
    page): the admin's icon, not a 404 and its WARNING line in the log on every such page."""
    response = HttpResponse(_favicon(), content_type="image/svg+xml")
    response["Cache-Control"] = "public, max-age=86400"
    return response


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """handler404: API clients get API.md's JSON (an unknown path or a malformed id in a path)."""
    if request.path.startswith("/api/"):
        return JsonResponse(
            {
                "message": "Route not found or you do not have access to this resource.",
                "detail": "",
                "validations": [],
            },
            status=404,
        )
    return page_not_found(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    """handler500: an error outside the API's own handlers (a middleware) still answers API JSON."""
    if request.path.startswith("/api/"):
        return JsonResponse(
            {
                "message": "An internal error occurred.",
                "detail": "The error was logged on the server.",
                "validations": [],
            },
            status=500,
        )
    return django_server_error(request)
