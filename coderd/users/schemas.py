"""Request and response bodies of the users and organizations API, with Coder's field names.

Request bodies are read as Coder's server reads them (coderd.decoding): unknown fields ignored,
`null` as absent. A field Coder has and coderd cannot honour is a 400 naming it.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from django.conf import settings
from ninja import Schema
from pydantic import Field, model_validator

from coderd.decoding import Request, Uuid, refuse_unless
from coderd.shapes import or_zero_time
from coderd.users.models import Organization, Role, User

# Coder's name rule for users, templates and workspaces (codersdk.NameValid), for the OpenAPI document;
# coderd.users.services.validate_name enforces it.
NAME_PATTERN = r"^[a-zA-Z0-9]+(?:-[a-zA-Z0-9]+)*$"
NAME_MAX_LENGTH = 32


def name_field(description: str = "") -> Any:
    """A name by Coder's rule, in the OpenAPI document; services.validate_name checks it with the
    request's other fields, so that one 400 names every bad field."""
    schema = {"minLength": 1, "maxLength": NAME_MAX_LENGTH, "pattern": NAME_PATTERN}
    return Field(description=description, json_schema_extra=schema)


RoleName = Literal["owner", "user-admin", "template-admin", "auditor", "member"]


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
EMAIL_MAX_LENGTH = 254  # the User model's
EMAIL = {"format": "email"}
# What settings.AUTH_PASSWORD_VALIDATORS asks of a password, for the OpenAPI document.
PASSWORD = {
    "minLength": next(
        (v.get("OPTIONS", {}).get("min_length", 8) for v in settings.AUTH_PASSWORD_VALIDATORS
         if v["NAME"].endswith("MinimumLengthValidator")),
        1,
    )
}  # fmt: skip


class CreateFirstUserRequest(Request):
    """Coder's CreateFirstUserRequest. `trial` and `trial_info` are read and, as by Coder's open-source
    server (no trial generator), not acted on."""

    email: str = Field(max_length=EMAIL_MAX_LENGTH, json_schema_extra=EMAIL)
    username: str = name_field()
    password: str = Field(max_length=MAX_PASSWORD_LENGTH, json_schema_extra=PASSWORD)
    name: str = Field("", max_length=128)
    trial: bool = False


class LoginRequest(Request):
    email: str = Field(max_length=320)  # the longest address SMTP allows
    password: str = Field(max_length=MAX_PASSWORD_LENGTH)


class CreateUserRequest(Request):
    """Coder's CreateUserRequestWithOrgs (and the 2022 `organization_id`). With no organization
    given, the user joins the default one; a zero id means the default one, as in Coder."""

    email: str = Field(max_length=EMAIL_MAX_LENGTH, json_schema_extra=EMAIL)
    username: str = name_field()
    password: str = Field(
        "",
        max_length=MAX_PASSWORD_LENGTH,
        description="Required unless login_type is none.",
        json_schema_extra=PASSWORD,
    )
    name: str = Field("", max_length=128)
    login_type: Literal["", "password", "none", "github", "oidc"] = ""
    disable_login: bool = Field(False, description="Coder's deprecated spelling of login_type none.")
    user_status: Literal["active", "dormant", "suspended"] | None = None
    organization_ids: list[Uuid] = Field(
        [],
        description="Organizations to join (ids; the zero id is the default one); left out, the default one.",
        json_schema_extra={"minItems": 1},
    )
    organization_id: Uuid | None = Field(None, description="Coder 2022's single organization.")
    roles: list[RoleName] = Field([], description="Site roles (coderd's own field).")

    @model_validator(mode="after")
    def _supported(self) -> CreateUserRequest:
        refuse_unless(
            self.login_type in ("", "password", "none"),
            "login_type",
            'coderd signs users in with a password: use "password" (or "none" for no sign-in).',
        )
        if self.login_type == "" and self.disable_login:  # as Coder reads the deprecated field
            self.login_type = "none"
        refuse_unless(
            self.login_type != "none" or not self.password,
            "password",
            'A user of login type "none" cannot have a password.',
        )
        refuse_unless(
            "organization_ids" not in self.model_fields_set or bool(self.organization_ids),
            "organization_ids",
            "Missing values, this cannot be empty (leave it out for the default organization).",
        )
        return self

    @property
    def signs_in(self) -> bool:
        return self.login_type != "none"

    def organization_refs(self) -> list[uuid.UUID | None]:
        """The organizations asked for; None for the default one."""
        given = [*self.organization_ids, *([self.organization_id] if self.organization_id else [])]
        return [None if ref.int == 0 else ref for ref in given] or [None]


class UpdateRolesRequest(Request):
    roles: list[RoleName]


MAX_TOKEN_LIFETIME_NS = int(settings.MAX_TOKEN_LIFETIME) * 1_000_000_000


class CreateTokenRequest(Request):
    lifetime: int = Field(
        0,
        ge=0,
        le=MAX_TOKEN_LIFETIME_NS,
        description="Token lifetime in nanoseconds, Coder's unit (a Go duration), rounded up to whole "
        "seconds; 0 for the longest allowed (CODER_MAX_TOKEN_LIFETIME).",
    )
    token_name: str = Field("", max_length=64)
    scope: Literal["all"] = Field("all", description="coderd's tokens carry every permission of their user.")


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
    login_type: Literal["password", "none"]
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
        "login_type": "password" if user.has_usable_password() else "none",
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
