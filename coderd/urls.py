from __future__ import annotations

import functools
from collections.abc import Callable

from django.contrib import admin
from django.core.exceptions import DisallowedHost
from django.http import HttpRequest, HttpResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt
from django.views.defaults import bad_request as django_bad_request

from coderd.api import api, json_error
from coderd.console import overview_view
from coderd.views import favicon, healthz
from metrics.views import metrics_view

SAFE_METHODS = ("GET", "HEAD")


def read_only(view: Callable) -> Callable:
    """A GET/HEAD view whose other methods get API.md's 405 with `Allow`. CSRF-exempt: with no
    method that changes anything there is nothing to protect, and otherwise CsrfViewMiddleware
    would answer a POST with its HTML 403 before the view could say 405."""

    @csrf_exempt
    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        if request.method not in SAFE_METHODS:
            allow = ", ".join(SAFE_METHODS)
            response = json_error(405, "Method not allowed.", detail=f"Allowed: {allow}.")
            response["Allow"] = allow
            return response
        return view(request, *args, **kwargs)

    return wrapper


# ninja's own views (openapi.json, the docs page) are not CSRF-exempt like its operations.
api_patterns, api_app_name, api_namespace = api.urls
for pattern in api_patterns:
    if not getattr(pattern.callback, "csrf_exempt", False):
        pattern.callback = read_only(pattern.callback)

# Coder's router (chi) answers a resource or a collection (a `r.Route("/x", ...)` with its `Get("/")`)
# with and without a trailing slash, and its leaf actions (`r.Put("/status/suspend")`) only without:
# the same routes again with the slash, after all the others, so an exact route always wins.
CHI_LEAVES = {"first", "login", "logout", "authmethods", "suspend", "activate", "roles", "cancel", "logs"}


def _with_trailing_slash(patterns: list) -> list:
    extra = []
    for pattern in patterns:
        route = str(pattern.pattern)
        last = route.rsplit("/", 1)[-1]
        if not route or route.endswith("/") or last in CHI_LEAVES or route.startswith(("docs", "openapi")):
            continue
        if "/workspace/<" in route or route == "buildinfo":  # chi leaves with a parameter
            continue
        extra.append(path(route + "/", pattern.callback))
    return extra


api_patterns = [*api_patterns, *_with_trailing_slash(api_patterns)]

urlpatterns = [
    path("healthz", read_only(healthz), name="healthz"),
    path("favicon.ico", read_only(favicon), name="favicon"),
    path("api/v2/", (api_patterns, api_app_name, api_namespace)),
    # The admin index's overview polls this (admin_view: the admin's login, then a role check).
    path("admin/console/overview.json", admin.site.admin_view(overview_view), name="coderd_console_overview"),
    path("admin/", admin.site.urls),
    path("metrics", metrics_view, name="metrics"),
]


def bad_request(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """handler400 (Django's answer to a SuspiciousOperation such as a Host header not in
    ALLOWED_HOSTS): API.md's JSON under /api/, Django's page elsewhere (the admin)."""
    if request.path.startswith("/api/"):
        if isinstance(exception, DisallowedHost):
            return json_error(
                400,
                "Invalid Host header.",
                detail="This server does not answer to that host (CODER_ALLOWED_HOSTS).",
            )
        return json_error(400, "Invalid request.")
    return django_bad_request(request, exception)


# API clients get JSON for unknown paths and malformed ids (path converters reject them), and for
# errors outside the API's own handlers.
handler400 = bad_request
handler404 = "coderd.views.not_found"
handler500 = "coderd.views.server_error"
