"""Who is calling, and what their site roles let them do.

The API authenticates with Coder's three carriers of a session token: the `Coder-Session-Token`
header, `Authorization: Bearer`, and the `coder_session_token` cookie set by login. The predicates
below are the whole role model (Coder's built-in site roles); service functions call them so that the
API, the admin and the daemons enforce the same rules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.http import HttpRequest
from django.utils import timezone
from ninja.security import APIKeyHeader

from coderd.errors import Unauthorized
from coderd.users.models import Role

if TYPE_CHECKING:
    from coderd.users.models import User

SESSION_TOKEN_HEADER = "Coder-Session-Token"
SESSION_TOKEN_COOKIE = "coder_session_token"


# --- roles -------------------------------------------------------------------------------------


def is_owner(user: User) -> bool:
    return Role.OWNER in user.roles


def can_manage_users(user: User) -> bool:
    return user.has_role(Role.OWNER, Role.USER_ADMIN)


def can_read_users(user: User) -> bool:
    return user.has_role(Role.OWNER, Role.USER_ADMIN, Role.TEMPLATE_ADMIN, Role.AUDITOR)


def can_manage_templates(user: User) -> bool:
    return user.has_role(Role.OWNER, Role.TEMPLATE_ADMIN)


def can_read_all_workspaces(user: User) -> bool:
    # Coder's template admins read every workspace (to see who uses their templates), not change them.
    return user.has_role(Role.OWNER, Role.AUDITOR, Role.TEMPLATE_ADMIN)


def can_read_workspace(user: User, workspace: Any) -> bool:
    return workspace.owner_id == user.id or can_read_all_workspaces(user)


def can_change_workspace(user: User, workspace: Any) -> bool:
    return workspace.owner_id == user.id or is_owner(user)


def can_read_audit_log(user: User) -> bool:
    return user.has_role(Role.OWNER, Role.AUDITOR)


def can_read_provisioners(user: User) -> bool:
    return user.has_role(Role.OWNER, Role.TEMPLATE_ADMIN, Role.AUDITOR)


# --- the API's authentication --------------------------------------------------------------------


def token_from_request(request: HttpRequest) -> str | None:
    token = request.headers.get(SESSION_TOKEN_HEADER)
    if token:
        return token.strip()
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.COOKIES.get(SESSION_TOKEN_COOKIE) or None


class SessionTokenAuth(APIKeyHeader):
    """Documented in OpenAPI as the `Coder-Session-Token` header; also reads Bearer and the cookie.

    The cookie is SameSite=Lax and HttpOnly, so a cross-site POST does not carry it; that is why
    there is no separate CSRF token, as in Coder.
    """

    param_name = SESSION_TOKEN_HEADER

    def _get_key(self, request: HttpRequest) -> str | None:
        return token_from_request(request)

    def authenticate(self, request: HttpRequest, key: str | None) -> User:
        from coderd.users.services import api_key_for_token

        if not key:
            raise Unauthorized(
                "You must be authenticated to use this endpoint.",
                detail=f"Send a session token in the {SESSION_TOKEN_HEADER} header.",
            )
        api_key = api_key_for_token(key, timezone.now())
        if api_key is None:
            raise Unauthorized("Invalid, expired or revoked session token.")
        request.api_key = api_key  # type: ignore[attr-defined]
        return api_key.user


session_auth = SessionTokenAuth()
