"""Plain Django views: the health check, the favicon and JSON answers for URLs no route matches
under /api/."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

from django.contrib.staticfiles import finders
from django.db import DatabaseError, connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.defaults import page_not_found
from django.views.defaults import server_error as django_server_error

from coderd import outages


def healthz(request: HttpRequest) -> HttpResponse:
    """ "OK" as Coder answers it, but only while the database answers too: a replica that cannot
    reach it can serve nothing, and its load balancer should send the traffic elsewhere."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except DatabaseError as exc:
        outages.note_database_error(exc)
        response = HttpResponse("database unavailable", content_type="text/plain", status=503)
        response["Retry-After"] = str(outages.RETRY_AFTER_SECONDS)
        return response
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
    """handler500: an error outside the API's own handlers (a middleware) still answers API JSON.

    Django calls it inside its `except`: an unreachable database there (the admin, /metrics) is a
    503 too, logged once per outage (coderd.outages.DatabaseOutageLogFilter) instead of a traceback."""
    if outages.is_database_outage(sys.exc_info()[1] or Exception()):
        if request.path.startswith("/api/") or request.path == "/metrics":
            return outages.database_unavailable_response()
        response = HttpResponse(
            "The database is unavailable; try again in a few seconds.", content_type="text/plain", status=503
        )
        response["Retry-After"] = str(outages.RETRY_AFTER_SECONDS)
        return response
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
