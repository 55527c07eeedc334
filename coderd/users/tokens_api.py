"""A user's API keys and tokens under /api/v2 (Coder's paths and its `APIKey` shape): create, list,
get by name or id, delete. (One router for every /keys path: Django stops at the first pattern that
matches a path, so a path's methods must all be in one router.)

As Coder: a user sees and deletes their own keys; owners see and delete anyone's.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from ninja import Query, Router, Schema, Status
from pydantic import Field

from coderd.errors import NotFound, field_error
from coderd.users import services
from coderd.users.api import ERRORS, key_owner
from coderd.users.models import APIKey, LoginType
from coderd.users.schemas import APIKeyResponse, CreateTokenRequest
from coderd.users.services import MAX_REF_LENGTH, shown

router = Router(tags=["Users"])


class APIKeyOut(Schema):
    """Coder's `codersdk.APIKey`."""

    id: str
    user_id: Any
    last_used: datetime
    expires_at: datetime
    created_at: datetime
    updated_at: datetime
    login_type: Literal["password", "token"]
    scope: Literal["all"]
    scopes: list[str]
    token_name: str
    lifetime_seconds: int


class APIKeyWithOwnerOut(APIKeyOut):
    """Coder's `codersdk.APIKeyWithOwner`."""

    username: str


class TokensFilter(Schema):
    include_all: bool = Field(False, description="Owners: every user's tokens (as Coder).")


def key_json(key: APIKey, username: str | None = None) -> dict[str, Any]:
    data = {
        "id": key.id,
        "user_id": key.user_id,
        "last_used": key.last_used,
        "expires_at": key.expires_at,
        "created_at": key.created_at,
        "updated_at": key.updated_at,
        "login_type": key.login_type,
        "scope": "all",
        "scopes": ["all"],
        "token_name": key.token_name,
        "lifetime_seconds": key.lifetime_seconds,
    }
    if username is not None:
        data["username"] = username
    return data


@router.post(
    "/users/{user}/keys", response={201: APIKeyResponse, **ERRORS}, summary="Create a session API key"
)
def create_key(request: HttpRequest, user: str) -> Any:
    _key, token = services.issue_api_key(
        key_owner(request, user), LoginType.PASSWORD, lifetime_seconds=int(settings.SESSION_DURATION)
    )
    return Status(201, {"key": token})


@router.post("/users/{user}/keys/tokens", response={201: APIKeyResponse, **ERRORS}, summary="Create a token")
def create_token(request: HttpRequest, user: str, req: CreateTokenRequest) -> Any:
    # Coder's unit is the nanosecond; a token lives whole seconds. 0 is Coder's "not given".
    lifetime = -(-req.lifetime // 1_000_000_000) or None
    if lifetime is not None and lifetime > settings.MAX_TOKEN_LIFETIME:
        raise field_error(
            "lifetime",
            f"Must be at most {int(settings.MAX_TOKEN_LIFETIME)}s (CODER_MAX_TOKEN_LIFETIME), given in "
            f"nanoseconds (1s = 1000000000).",
        )
    _key, token = services.issue_api_key(
        key_owner(request, user), LoginType.TOKEN, lifetime_seconds=lifetime, token_name=req.token_name
    )
    return Status(201, {"key": token})


@router.get(
    "/users/{user}/keys/tokens",
    response={200: list[APIKeyWithOwnerOut], **ERRORS},
    summary="List a user's tokens",
)
def list_tokens(request: HttpRequest, user: str, filters: Query[TokensFilter]) -> Any:
    owner = key_owner(request, user, "see")
    tokens = APIKey.objects.select_related("user").filter(login_type=LoginType.TOKEN)
    if not (filters.include_all and services.auth.is_owner(request.auth)):  # type: ignore[attr-defined]
        tokens = tokens.filter(user=owner)
    return [key_json(k, k.user.username) for k in tokens.order_by("created_at", "id")]


@router.get(
    "/users/{user}/keys/tokens/{keyname}",
    response={200: APIKeyOut, **ERRORS},
    summary="Get a user's token by name",
)
def get_token_by_name(request: HttpRequest, user: str, keyname: str) -> Any:
    owner = key_owner(request, user, "see")
    key = None
    if len(keyname) <= MAX_REF_LENGTH:
        key = APIKey.objects.filter(user=owner, login_type=LoginType.TOKEN, token_name=keyname).first()
    if key is None:
        raise NotFound(f"No token named {shown(keyname)}.")
    return key_json(key)


def _key(request: HttpRequest, user: str, keyid: str, verb: str) -> APIKey:
    owner = key_owner(request, user, verb)
    key = APIKey.objects.filter(user=owner, pk=keyid).first() if len(keyid) <= MAX_REF_LENGTH else None
    if key is None:
        raise NotFound(f"No API key {shown(keyid)}.")
    return key


@router.get("/users/{user}/keys/{keyid}", response={200: APIKeyOut, **ERRORS}, summary="Get an API key by id")
def get_key(request: HttpRequest, user: str, keyid: str) -> Any:
    return key_json(_key(request, user, keyid, "see"))


@router.delete(
    "/users/{user}/keys/{keyid}", response={204: None, **ERRORS}, summary="Delete an API key (204, as Coder)"
)
def delete_key(request: HttpRequest, user: str, keyid: str) -> Any:
    services.delete_api_key(request.auth, _key(request, user, keyid, "delete"))  # type: ignore[attr-defined]
    return HttpResponse(status=204)
