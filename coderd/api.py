"""The /api/v2 NinjaAPI: error rendering, authentication, and every app's router.

Every error a client can cause leaves here as API.md's JSON shape
`{"message", "detail", "validations": [{"field", "detail"}]}` with its status; anything unexpected
is logged with its traceback and answered 500 in the same shape, never with a traceback.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import DataError, IntegrityError, InterfaceError, OperationalError
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed, JsonResponse
from django.urls import URLPattern
from ninja import NinjaAPI, Schema, Swagger
from ninja.errors import AuthenticationError, HttpError, ValidationError
from ninja.parser import Parser

from coderd.decoding import UNSUPPORTED
from coderd.errors import APIError
from coderd.outages import database_unavailable_response, note_database_error
from coderd.users.auth import session_auth

log = logging.getLogger(__name__)

VERSION = "0.1.0"

# Where ninja puts a parameter in an error's `loc`; the next item for a body is the parameter name.
_LOCATIONS = {"body", "query", "path", "header", "cookie", "form", "file"}


def error_body(message: str, detail: str = "", validations: list[dict[str, str]] | None = None) -> dict:
    return {"message": message, "detail": detail, "validations": validations or []}


def json_error(status: int, message: str, detail: str = "", validations: list | None = None) -> JsonResponse:
    return JsonResponse(error_body(message, detail, validations), status=status)


def _field_name(loc: tuple | list) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in _LOCATIONS:
        where = parts.pop(0)
        # Body parameters are wrapped in the view's argument name: {"body": {"req": {...}}}.
        if where == "body" and parts and parts[0] == "req":
            parts.pop(0)
    return ".".join(parts) or "body"


def _validation_detail(error: dict[str, Any]) -> str:
    if error.get("type") == "missing":
        return "Required field is missing."
    return str(error.get("msg", "Invalid value."))


def _validation(error: dict[str, Any]) -> dict[str, str]:
    if error.get("type") == UNSUPPORTED:  # a schema naming the field it cannot honour
        return {"field": str(error["ctx"]["field"]), "detail": str(error["ctx"]["detail"])}
    return {"field": _field_name(error.get("loc", ())), "detail": _validation_detail(error)}


class CoderAPI(NinjaAPI):
    def _get_urls(self) -> list:
        urls = super()._get_urls()
        for pattern in urls:
            if isinstance(pattern, URLPattern) and getattr(pattern.callback, "csrf_exempt", False):
                pattern.callback = _guarded(pattern.callback)
        return urls


# NUL is refused by PostgreSQL text and jsonb: a 400. A lone surrogate (JSON "\\ud800"), which no
# encoder can write either, becomes U+FFFD, as Go's encoding/json (and so Coder's server) reads it.
_NUL = "\x00"
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _storable(value: Any) -> Any:
    if isinstance(value, str):
        if _NUL in value:
            raise ValueError("strings must not contain NUL characters")
        return _LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {_storable(key): _storable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_storable(item) for item in value]
    return value


class StorableJSONParser(Parser):
    """JSON bodies whose strings a database can store; a NUL is a 400 like bad JSON."""

    def parse_body(self, request: HttpRequest) -> Any:
        return _storable(json.loads(request.body))


def _refusal(request: HttpRequest) -> HttpResponse | None:
    """A NUL in the path or the query string, which no lookup can use (PostgreSQL refuses it)."""
    query = request.META.get("QUERY_STRING", "")
    if "\x00" in request.path or "%00" in query or "\x00" in query:
        return json_error(400, "The request must not contain NUL characters.")
    return None


def _not_allowed_as_json(response: Any) -> Any:
    # ninja answers a wrong method with a plain-text 405; give it the JSON shape too.
    if isinstance(response, HttpResponseNotAllowed):
        converted = json_error(405, "Method not allowed.", detail=f"Allowed: {response['Allow']}.")
        converted["Allow"] = response["Allow"]
        return converted
    return response


def _guarded(view: Any) -> Any:
    if asyncio.iscoroutinefunction(view):

        @functools.wraps(view)
        async def async_wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
            return _refusal(request) or _not_allowed_as_json(await view(request, *args, **kwargs))

        return async_wrapper

    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        return _refusal(request) or _not_allowed_as_json(view(request, *args, **kwargs))

    return wrapper


api = CoderAPI(
    title="coderd API",
    version="2",
    description="A Coder-shaped control plane for developer workspaces.",
    urls_namespace="api",
    auth=session_auth,
    parser=StorableJSONParser(),
    # No validator badge: Swagger UI would fetch it from validator.swagger.io (pages load nothing
    # from other hosts).
    docs=Swagger(settings={"validatorUrl": None}),
)


@api.exception_handler(APIError)
def _api_error(request: HttpRequest, exc: APIError) -> HttpResponse:
    return JsonResponse(exc.as_dict(), status=exc.status)


@api.exception_handler(ValidationError)
def _validation_error(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    return json_error(400, "Validation failed.", validations=[_validation(e) for e in exc.errors])


@api.exception_handler(AuthenticationError)
def _authentication_error(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
    return json_error(401, "You must be authenticated to use this endpoint.")


@api.exception_handler(HttpError)
def _http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    if exc.status_code == 400:  # ninja's "Cannot parse request body"
        return json_error(
            400,
            "Request body must be valid JSON.",
            detail="It is not JSON, or one of its strings holds a NUL character.",
        )
    return json_error(exc.status_code, str(exc))


@api.exception_handler(Http404)
def _not_found(request: HttpRequest, exc: Http404) -> HttpResponse:
    return json_error(404, "Resource not found or you do not have access to this resource.")


@api.exception_handler(RequestDataTooBig)
def _too_big(request: HttpRequest, exc: RequestDataTooBig) -> HttpResponse:
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    return json_error(413, "Request body too large.", detail=f"The limit is {limit} bytes.")


@api.exception_handler(IntegrityError)
def _integrity_error(request: HttpRequest, exc: IntegrityError) -> HttpResponse:
    # Services check uniqueness first; this is the race where two requests pass the check at once.
    log.info("integrity error on %s %s: %s", request.method, request.path, exc)
    return json_error(409, "The request conflicts with existing data.", detail="A name may already be taken.")


@api.exception_handler(DataError)
def _data_error(request: HttpRequest, exc: DataError) -> HttpResponse:
    # A value the database cannot store (too long for a column, out of range): the client's input.
    log.info("data error on %s %s: %s", request.method, request.path, exc)
    return json_error(400, "The request contains a value that cannot be stored.")


@api.exception_handler(OperationalError)
@api.exception_handler(InterfaceError)
def _database_unavailable(request: HttpRequest, exc: Exception) -> HttpResponse:
    # An unreachable database is one log line per outage (coderd.outages); anything else that kept
    # a query from running (a lock or statement timeout) is worth a retry too, and a line here.
    if not note_database_error(exc):
        log.warning("database error on %s %s: %s", request.method, request.path, " ".join(str(exc).split()))
    return database_unavailable_response()


@api.exception_handler(UnicodeError)
def _unicode_error(request: HttpRequest, exc: UnicodeError) -> HttpResponse:
    # JSON may carry lone surrogates ("\\ud800") that no database encoding accepts.
    return json_error(400, "The request contains text that is not valid Unicode.")


@api.exception_handler(OverflowError)
def _overflow_error(request: HttpRequest, exc: OverflowError) -> HttpResponse:
    # A number wider than the database's integers reached a query.
    return json_error(400, "The request contains a number that is too large.")


@api.exception_handler(DjangoValidationError)
def _django_validation_error(request: HttpRequest, exc: DjangoValidationError) -> HttpResponse:
    return json_error(400, "Invalid request.", detail=" ".join(exc.messages))


@api.exception_handler(Exception)
def _unexpected(request: HttpRequest, exc: Exception) -> HttpResponse:
    log.exception("unhandled error on %s %s", request.method, request.path)
    return json_error(500, "An internal error occurred.", detail="The error was logged on the server.")


class BuildInfo(Schema):
    """Coder's `codersdk.BuildInfoResponse` (the first call its clients make)."""

    external_url: str
    version: str
    dashboard_url: str
    telemetry: bool
    workspace_proxy: bool
    agent_api_version: str
    provisioner_api_version: str
    upgrade_message: str
    deployment_id: str


@api.get("/buildinfo", auth=None, response=BuildInfo, tags=["General"], summary="Build info")
def buildinfo(request: HttpRequest) -> dict:
    return {
        "external_url": settings.ACCESS_URL,
        "version": VERSION,
        "dashboard_url": settings.ACCESS_URL,
        "telemetry": False,
        "workspace_proxy": False,
        # coderd serves no agents and speaks its own protocol to its provisioner daemons.
        "agent_api_version": "",
        "provisioner_api_version": "",
        "upgrade_message": "",
        "deployment_id": "",
    }


def _register_routers() -> None:
    from coderd.audit.api import router as audit_router
    from coderd.users.api import router as users_router
    from coderd.users.tokens_api import router as tokens_router
    from coderd.workspaces.api import router as workspaces_router
    from provisioner.api import router as provisioner_router

    api.add_router("/", users_router)
    api.add_router("/", tokens_router)
    api.add_router("/", workspaces_router)
    api.add_router("/", provisioner_router)
    api.add_router("/", audit_router)


_register_routers()
