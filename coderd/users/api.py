"""Users, sessions, API keys and organizations under /api/v2 (Coder's paths and bodies)."""

from __future__ import annotations

from typing import Any, Literal

from django.db.models import Prefetch, Q, QuerySet
from django.http import HttpRequest, HttpResponse
from ninja import Query, Router, Schema, Status
from pydantic import Field

from coderd.decoding import query_pattern, quoted, search_terms
from coderd.errors import BadRequest, Forbidden, NotFound
from coderd.fastjson import json_response
from coderd.pagination import Page
from coderd.users import auth, services
from coderd.users.models import Organization, OrganizationMember, Role, User, UserStatus
from coderd.users.schemas import (
    CreateFirstUserRequest,
    CreateUserRequest,
    ErrorOut,
    FirstUserResponse,
    LoginRequest,
    LoginResponse,
    Message,
    OrganizationOut,
    UpdateRolesRequest,
    UserOut,
    UsersList,
    organization_json,
    user_json,
)

router = Router(tags=["Users"])
ERRORS: dict[int, Any] = {code: ErrorOut for code in (400, 401, 403, 404, 409)}


def actor(request: HttpRequest) -> User:
    return request.auth  # type: ignore[attr-defined]


# --- first user, login, logout ---------------------------------------------------------------------


@router.get("/users/first", auth=None, response={200: Message, 404: ErrorOut}, summary="Check initial user")
def get_first_user(request: HttpRequest) -> Any:
    if not User.objects.exists():
        raise NotFound("The initial user has not been created.")
    return {"message": "The initial user has already been created."}


@router.post(
    "/users/first", auth=None, response={201: FirstUserResponse, **ERRORS}, summary="Create initial user"
)
def post_first_user(request: HttpRequest, req: CreateFirstUserRequest) -> Any:
    user, org = services.create_first_user(req.email, req.username, req.password)
    if req.name:
        User.objects.filter(pk=user.pk).update(name=req.name)
    return Status(201, {"user_id": user.id, "organization_id": org.id})


@router.post(
    "/users/login", auth=None, response={201: LoginResponse, **ERRORS}, summary="Log in with password"
)
def login(request: HttpRequest, req: LoginRequest, response: HttpResponse) -> Any:
    key, token = services.login(req.email, req.password)
    response.set_cookie(
        auth.SESSION_TOKEN_COOKIE,
        token,
        max_age=key.lifetime_seconds,
        httponly=True,
        samesite="Lax",
        secure=request.is_secure(),
    )
    return Status(201, {"session_token": token})


@router.post("/users/logout", response={200: Message, **ERRORS}, summary="Log out")
def logout(request: HttpRequest, response: HttpResponse) -> Any:
    services.logout(request.api_key)  # type: ignore[attr-defined]
    response.delete_cookie(auth.SESSION_TOKEN_COOKIE, samesite="Lax")
    return {"message": "Logged out!"}


# --- users ----------------------------------------------------------------------------------------


class UserFilter(Schema):
    q: str = Field(
        "",
        max_length=256,
        description="Space-separated terms, as Coder's: `status:<active|dormant|suspended>`, "
        "`role:<role>`, and plain words, each a substring of the username or email.",
        json_schema_extra=query_pattern(
            "status:" + quoted(*UserStatus.values), "role:" + quoted(*Role.values), r'[^ \t\n\r\f\v:"]+'
        ),
    )
    status: Literal["", "active", "dormant", "suspended"] = Field(
        "", description="Only users with this status."
    )


def _users() -> Any:
    return User.objects.filter(deleted=False).prefetch_related(
        Prefetch("memberships", queryset=OrganizationMember.objects.only("user_id", "organization_id"))
    )


_USER_QUERY_KEYS = {"status": set(UserStatus.values), "role": {*services.ASSIGNABLE_ROLES, Role.MEMBER}}


def _search_users(users: QuerySet, q: str) -> QuerySet:
    for term in search_terms(q):
        key, sep, value = term.partition(":")
        if not sep:
            users = users.filter(Q(username__icontains=term) | Q(email__icontains=term))
            continue
        allowed = _USER_QUERY_KEYS.get(key)
        if allowed is None or value not in allowed:
            detail = (
                f"{term!r}: {key} is one of {sorted(allowed)}."
                if allowed is not None
                else f"{term!r}: use one of {sorted(_USER_QUERY_KEYS)}, or plain words."
            )
            raise BadRequest("Invalid user search query.", validations=[{"field": "q", "detail": detail}])
        if key == "status":
            users = users.filter(status=value)
        elif value != Role.MEMBER:  # every user is a member
            # The role as one quoted string of the JSON list, on SQLite and PostgreSQL alike.
            users = users.filter(roles__icontains=f'"{value}"')
    return users


@router.get("/users", response={200: UsersList, **ERRORS}, summary="List users")
def list_users(request: HttpRequest, page: Query[Page], filters: Query[UserFilter]) -> Any:
    if not auth.can_read_users(actor(request)):
        raise Forbidden("You may not list users.")
    users = _search_users(_users(), filters.q)
    if filters.status:
        users = users.filter(status=filters.status)
    users = users.order_by("username", "id")
    return {"users": [user_json(u) for u in page.apply(users)], "count": users.count()}


@router.post("/users", response={201: UserOut, **ERRORS}, summary="Create user")
def create_user(request: HttpRequest, req: CreateUserRequest) -> Any:
    organizations = []
    for ref in dict.fromkeys(req.organization_refs()):
        if ref is None:
            organizations.append(services.default_organization())
            continue
        org = Organization.objects.filter(pk=ref).first()
        if org is None:  # as Coder: 404 naming the id
            raise NotFound(f"Organization does not exist with the provided id {str(ref)!r}.")
        organizations.append(org)
    user = services.create_user(
        actor(request),
        req.email,
        req.username,
        req.password if req.signs_in else None,
        roles=req.roles,
        organizations=organizations,
        status=req.user_status or UserStatus.ACTIVE,
    )
    if req.name:
        User.objects.filter(pk=user.pk).update(name=req.name)
        user.name = req.name
    return Status(201, user_json(user))


def _user(request: HttpRequest, ref: str) -> User:
    return services.user_by_ref(actor(request), ref)


class EnabledOut(Schema):
    enabled: bool


class GithubMethodOut(EnabledOut):
    default_provider_configured: bool


class OIDCMethodOut(EnabledOut):
    # Coder's JSON names.
    signInText: str
    iconUrl: str


class AuthMethodsOut(Schema):
    """Coder's `codersdk.AuthMethods`."""

    terms_of_service_url: str
    password: EnabledOut
    github: GithubMethodOut
    oidc: OIDCMethodOut


# Before /users/{user}, which would take "authmethods" for a username.
@router.get("/users/authmethods", auth=None, response=AuthMethodsOut, summary="Authentication methods")
def auth_methods(request: HttpRequest) -> Any:
    return {
        "terms_of_service_url": "",
        "password": {"enabled": True},
        "github": {"enabled": False, "default_provider_configured": False},
        "oidc": {"enabled": False, "signInText": "", "iconUrl": ""},
    }


@router.get("/users/{user}", response={200: UserOut, **ERRORS}, summary="Get user by id, username or me")
def get_user(request: HttpRequest, user: str) -> Any:
    found = _user(request, user)
    return json_response(user_json(found, services.organization_ids(found)))


@router.delete("/users/{user}", response={200: Message, 417: ErrorOut, **ERRORS}, summary="Delete user")
def delete_user(request: HttpRequest, user: str) -> Any:
    services.delete_user(actor(request), _user(request, user))
    return {"message": "User has been deleted!"}


@router.put("/users/{user}/status/suspend", response={200: UserOut, **ERRORS}, summary="Suspend user")
def suspend_user(request: HttpRequest, user: str) -> Any:
    return user_json(services.suspend_user(actor(request), _user(request, user)))


@router.put("/users/{user}/status/activate", response={200: UserOut, **ERRORS}, summary="Activate user")
def activate_user(request: HttpRequest, user: str) -> Any:
    return user_json(services.activate_user(actor(request), _user(request, user)))


@router.put("/users/{user}/roles", response={200: UserOut, **ERRORS}, summary="Assign site roles")
def update_roles(request: HttpRequest, user: str, req: UpdateRolesRequest) -> Any:
    return user_json(services.set_user_roles(actor(request), _user(request, user), req.roles))


def key_owner(request: HttpRequest, ref: str, verb: str = "create") -> User:
    """`{user}` of a keys route: yourself, or anyone for an owner (as Coder's personal resources)."""
    user = _user(request, ref)
    if user.pk != actor(request).pk and not auth.is_owner(actor(request)):
        raise Forbidden(f"You may only {verb} API keys of your own.")
    return user


# --- organizations --------------------------------------------------------------------------------


@router.get(
    "/users/{user}/organizations",
    response={200: list[OrganizationOut], **ERRORS},
    tags=["Organizations"],
    summary="Organizations of a user",
)
def user_organizations(request: HttpRequest, user: str) -> Any:
    target = _user(request, user)
    return [organization_json(o) for o in target.organizations.order_by("name", "id")]


@router.get(
    "/organizations",
    response={200: list[OrganizationOut], **ERRORS},
    tags=["Organizations"],
    summary="Organizations the caller may see",
)
def list_organizations(request: HttpRequest) -> Any:
    user = actor(request)
    organizations = Organization.objects.all()
    if not auth.can_read_users(user):  # as on /organizations/{organization}: members see theirs
        organizations = organizations.filter(members=user)
    return [organization_json(o) for o in organizations.order_by("name", "id")]


@router.get(
    "/organizations/{organization}",
    response={200: OrganizationOut, **ERRORS},
    tags=["Organizations"],
    summary="Get organization by id, name or default",
)
def get_organization(request: HttpRequest, organization: str) -> Any:
    return organization_json(visible_organization(request, organization))


def visible_organization(request: HttpRequest, ref: str) -> Any:
    """`{organization}` for this caller: members see theirs; user and site readers see all."""
    org = services.organization_by_ref(ref)
    user = actor(request)
    if not (
        auth.can_read_users(user) or OrganizationMember.objects.filter(organization=org, user=user).exists()
    ):
        raise NotFound(f"Organization {ref!r} not found.")
    return org
