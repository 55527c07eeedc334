"""Request and response bodies of the users and organizations API, with Coder's field names.

Request bodies forbid unknown fields, so a typo is a 400 naming the field rather than silently ignored.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from ninja import Schema
from pydantic import ConfigDict, Field

from coderd.shapes import or_zero_time
from coderd.users.models import Organization, Role, User


class Request(Schema):
    model_config = ConfigDict(extra="forbid")


class Message(Schema):
    message: str
    detail: str = ""


class ValidationOut(Schema):
    field: str
    detail: str


class ErrorOut(Schema):
    message: str
    detail: str
    validations: list[ValidationOut]


# --- requests ---------------------------------------------------------------------------------------


# A password is hashed on every login: an unbounded one would make each attempt arbitrarily slow.
MAX_PASSWORD_LENGTH = 1024


class CreateFirstUserRequest(Request):
    email: str
    username: str
    password: str = Field(max_length=MAX_PASSWORD_LENGTH)
    name: str = ""


class LoginRequest(Request):
    email: str = Field(max_length=320)  # the longest address SMTP allows
    password: str = Field(max_length=MAX_PASSWORD_LENGTH)


class CreateUserRequest(Request):
    email: str
    username: str
    password: str = Field(max_length=MAX_PASSWORD_LENGTH)
    name: str = ""
    roles: list[str] = []


class UpdateRolesRequest(Request):
    roles: list[str]


class CreateTokenRequest(Request):
    # Coder's `lifetime` is a Go duration: nanoseconds.
    lifetime: int | None = Field(None, gt=0, description="Token lifetime in nanoseconds (Coder's unit).")
    token_name: str = Field("", max_length=64)
    scope: str = Field("all", pattern="^all$")


# --- responses --------------------------------------------------------------------------------------


class FirstUserResponse(Schema):
    user_id: uuid.UUID
    organization_id: uuid.UUID


class LoginResponse(Schema):
    session_token: str


class APIKeyResponse(Schema):
    key: str


class RoleOut(Schema):
    name: str
    display_name: str


class UserOut(Schema):
    """Coder's `codersdk.User`."""

    id: uuid.UUID
    username: str
    name: str
    avatar_url: str
    email: str
    created_at: datetime
    updated_at: datetime
    last_seen_at: datetime = Field(description="0001-01-01T00:00:00Z (Go's zero time) until first seen.")
    status: Literal["active", "dormant", "suspended"]
    login_type: Literal["password"]
    theme_preference: str
    organization_ids: list[uuid.UUID]
    roles: list[RoleOut]


class UsersList(Schema):
    users: list[UserOut]
    count: int


class OrganizationOut(Schema):
    """Coder's `codersdk.Organization`."""

    id: uuid.UUID
    name: str
    display_name: str
    icon: str
    description: str
    created_at: datetime
    updated_at: datetime
    is_default: bool
    default_org_member_roles: list[str]


_ROLE_NAMES = dict(Role.choices)


def user_json(user: User, organization_ids: list[Any] | None = None) -> dict[str, Any]:
    if organization_ids is None:
        organization_ids = [m.organization_id for m in user.memberships.all()]
    return {
        "id": user.id,
        "username": user.username,
        "name": user.name,
        "avatar_url": "",
        "email": user.email,
        "created_at": user.created_at,
        "updated_at": user.updated_at,
        "last_seen_at": or_zero_time(user.last_seen_at),
        "status": user.status,
        "login_type": "password",
        "theme_preference": "",
        "organization_ids": organization_ids,
        # Coder lists the site roles; `member` is implicit there too.
        "roles": [{"name": r, "display_name": _ROLE_NAMES.get(r, r)} for r in user.roles],
    }


def organization_json(org: Organization) -> dict[str, Any]:
    return {
        "id": org.id,
        "name": org.name,
        "display_name": org.display_name,
        "icon": "",
        "description": org.description,
        "created_at": org.created_at,
        "updated_at": org.updated_at,
        "is_default": org.is_default,
        "default_org_member_roles": [],
    }
