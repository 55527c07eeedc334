"""Users, organizations and API keys: the functions the API, the admin and the commands call.

Each function checks the actor's roles (coderd.users.auth) and raises coderd.errors on refusal.
"""

from __future__ import annotations

import functools
import hmac
import re
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.validators import validate_email
from django.db import IntegrityError, connection, transaction
from django.db.models import Case, F, Q, Value, When
from django.utils import timezone

from coderd import rawsql
from coderd.audit.services import Action, audited, nested, record, record_change
from coderd.errors import (
    APIError,
    BadRequest,
    Conflict,
    ExpectationFailed,
    Forbidden,
    NotFound,
    Unauthorized,
    field_error,
)
from coderd.users import auth
from coderd.users.models import (
    APIKey,
    LoginType,
    Organization,
    OrganizationMember,
    Role,
    User,
    UserStatus,
    hash_secret,
)
from coderd.websockets import close_sessions

DEFAULT_ORGANIZATION_NAME = "coder"
# Coder's name rule for users, templates and workspaces (codersdk.NameValid).
NAME_RE = re.compile(r"^[a-zA-Z0-9]+(?:-[a-zA-Z0-9]+)*$")
NAME_MAX_LENGTH = 32
ASSIGNABLE_ROLES = {Role.OWNER, Role.USER_ADMIN, Role.TEMPLATE_ADMIN, Role.AUDITOR}
# A token given by the client is "<10-char id>-<secret>".
API_KEY_ID_LENGTH = 10


def validate_name(field: str, value: str) -> str:
    if not value or len(value) > NAME_MAX_LENGTH or not NAME_RE.match(value):
        raise field_error(
            field,
            f"Must be 1 to {NAME_MAX_LENGTH} letters or digits, with single hyphens between them.",
            message=f"Invalid {field}.",
        )
    return value


# --- organizations -------------------------------------------------------------------------------


def default_organization() -> Organization:
    """The default organization ("coder"), created on first use."""
    org = Organization.objects.filter(is_default=True).first()
    if org is not None:
        return org
    try:
        with transaction.atomic():
            return Organization.objects.create(
                name=DEFAULT_ORGANIZATION_NAME, display_name="Coder", is_default=True
            )
    except IntegrityError:  # another request created it first
        return Organization.objects.get(is_default=True)


# Names and ids in paths are short; a longer value names nothing (and is not handed to the database,
# where SQLite refuses a LIKE pattern over 50,000 bytes).
MAX_REF_LENGTH = 256


def shown(ref: str) -> str:
    """A path value as quoted back in an error: at most 64 characters of it."""
    return repr(ref if len(ref) <= 64 else ref[:64] + "...")


def organization_by_ref(ref: str) -> Organization:
    """`{organization}` in a path: an id, a name, or `default`."""
    if ref == "default":
        return default_organization()
    if len(ref) > MAX_REF_LENGTH:
        raise NotFound(f"Organization {shown(ref)} not found.")
    q = Q(name__iexact=ref)
    if _is_uuid(ref):
        q |= Q(id=ref)
    org = Organization.objects.filter(q).first()
    if org is None:
        raise NotFound(f"Organization {shown(ref)} not found.")
    return org


def ensure_member(user: User, organization: Organization) -> None:
    OrganizationMember.objects.get_or_create(organization=organization, user=user)


# --- users ---------------------------------------------------------------------------------------


def _is_uuid(value: str) -> bool:
    import uuid

    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def user_by_ref(actor: User, ref: str) -> User:
    """`{user}` in a path: an id, a username or `me`. Others' accounts are visible to user readers."""
    if ref == "me":
        return actor
    if len(ref) > MAX_REF_LENGTH:
        raise NotFound(f"User {shown(ref)} not found.")
    q = Q(username__iexact=ref)
    if _is_uuid(ref):
        q |= Q(id=ref)
    user = User.objects.filter(q, deleted=False).first()
    if user is None or (user.pk != actor.pk and not auth.can_read_users(actor)):
        raise NotFound(f"User {shown(ref)} not found.")
    return user


# `me` in a path always means the caller: a user of that name could never be looked up.
RESERVED_USERNAMES = frozenset({"me"})


def validate_username(value: str) -> str:
    validate_name("username", value)
    if value.lower() in RESERVED_USERNAMES:
        raise field_error("username", f"{value!r} is reserved.", message="Invalid username.")
    return value


def _validate_new_user(email: str, username: str, password: str | None) -> str:
    validations = []
    try:
        validate_email(email)
    except DjangoValidationError:
        validations.append({"field": "email", "detail": "Must be a valid email address."})
    try:
        validate_username(username)
    except APIError as exc:
        validations.extend(exc.validations)
    try:
        if password is not None:  # None: a user who cannot sign in (Coder's login type "none")
            validate_password(password)
    except DjangoValidationError as exc:
        validations.append({"field": "password", "detail": " ".join(exc.messages)})
    if validations:
        raise BadRequest("Invalid user.", validations=validations)
    return User.objects.normalize_email(email)


def _create_user_row(email: str, username: str, password: str | None, roles: list[str]) -> User:
    if User.objects.filter(Q(email__iexact=email) | Q(username__iexact=username)).exists():
        raise Conflict("A user with that email or username already exists.")
    try:
        with transaction.atomic():
            return User.objects.create_user(email, username, password, roles=roles)
    except IntegrityError:
        raise Conflict("A user with that email or username already exists.") from None


def create_first_user(email: str, username: str, password: str) -> tuple[User, Organization]:
    """The first user, an owner, and the default organization. 409 once any user exists."""
    email = _validate_new_user(email, username, password)
    org = default_organization()
    with transaction.atomic():
        # Two first users at once: on PostgreSQL the row lock makes the second wait and then see
        # the first (SQLite's IMMEDIATE transactions already serialise writers).
        Organization.objects.select_for_update().filter(pk=org.pk).first()
        if User.objects.exists():
            raise Conflict("The initial user has already been created.")
        user = _create_user_row(email, username, password, [Role.OWNER])
        ensure_member(user, org)
    record_change(Action.CREATE, user, actor=user, status=201)
    return user, org


@audited(Action.CREATE, result=True, status=201)
def create_user(
    actor: User,
    email: str,
    username: str,
    password: str | None,
    roles: Iterable[str] = (),
    organizations: Iterable[Organization] = (),
    status: str = UserStatus.ACTIVE,
) -> User:
    """A user in `organizations` (the default one when none), with `status` (Coder lets an admin
    create a dormant or suspended account). With no password (None), one who cannot sign in:
    Coder's login type `none`, for accounts that only hold API tokens an owner issues."""
    if not auth.can_manage_users(actor):
        raise Forbidden("Only owners and user admins can create users.")
    roles = sorted({r for r in roles if r != Role.MEMBER})
    unknown = [r for r in roles if r not in ASSIGNABLE_ROLES]
    if unknown:
        raise field_error("roles", f"Unknown roles: {', '.join(unknown)}.")
    if Role.OWNER in roles and not auth.is_owner(actor):
        raise Forbidden("Only owners can create owners.")
    email = _validate_new_user(email, username, password)
    with transaction.atomic():
        user = _create_user_row(email, username, password, roles)
        if status != UserStatus.ACTIVE:
            User.objects.filter(pk=user.pk).update(status=status)
            user.status = status
        for organization in list(organizations) or [default_organization()]:
            ensure_member(user, organization)
    return user


def _check_can_change_status(actor: User, user: User, verb: str) -> None:
    if not auth.can_manage_users(actor):
        raise Forbidden(f"Only owners and user admins can {verb} users.")
    if auth.is_owner(user) and not auth.is_owner(actor):
        raise Forbidden(f"Only owners can {verb} an owner.")


@audited(Action.WRITE, target="user")
def suspend_user(actor: User, user: User) -> User:
    _check_can_change_status(actor, user, "suspend")
    if user.pk == actor.pk:
        # As Coder (400, coderd/users.go putUserStatus): you would lock yourself out.
        raise BadRequest("You cannot suspend yourself.")
    User.objects.filter(pk=user.pk).update(status=UserStatus.SUSPENDED, updated_at=timezone.now())
    # Their keys stop working at once (api_key_for_token); their open websockets must stop too.
    transaction.on_commit(functools.partial(close_sessions, user_id=user.pk))
    user.refresh_from_db()
    return user


@audited(Action.WRITE, target="user")
def activate_user(actor: User, user: User) -> User:
    _check_can_change_status(actor, user, "activate")
    User.objects.filter(pk=user.pk).update(status=UserStatus.ACTIVE, updated_at=timezone.now())
    user.refresh_from_db()
    return user


@audited(Action.DELETE, target="user")
def delete_user(actor: User, user: User) -> None:
    """Soft delete, as Coder: the row stays for history; its keys go. Refused while it owns workspaces."""
    _check_can_change_status(actor, user, "delete")
    if user.pk == actor.pk:
        raise Forbidden("You cannot delete yourself!")  # as Coder: 403
    with transaction.atomic():
        # Under the user's row lock, which creating a workspace takes too (see create_workspace).
        User.objects.select_for_update().filter(pk=user.pk).first()
        if user.workspaces.filter(deleted=False).exists():
            # 417, as Coder's deleteUser.
            raise ExpectationFailed(
                "You cannot delete a user that has workspaces. Delete their workspaces first."
            )
        APIKey.objects.filter(user=user).delete()
        transaction.on_commit(functools.partial(close_sessions, user_id=user.pk))
        # Free the email and username for reuse; the id keeps history linked.
        suffix = f"-deleted-{str(user.pk)[:8]}"
        User.objects.filter(pk=user.pk).update(
            deleted=True,
            username=(user.username[: 64 - len(suffix)] + suffix),
            email=f"{user.pk}@deleted.invalid",
            updated_at=timezone.now(),
        )


@audited(Action.WRITE, target="user")
def set_user_roles(actor: User, user: User, roles: Iterable[str]) -> User:
    if not auth.can_manage_users(actor):
        raise Forbidden("Only owners and user admins can change roles.")
    roles = sorted({r for r in roles if r != Role.MEMBER})
    unknown = [r for r in roles if r not in ASSIGNABLE_ROLES]
    if unknown:
        raise field_error("roles", f"Unknown roles: {', '.join(unknown)}.")
    if (Role.OWNER in roles or auth.is_owner(user)) and not auth.is_owner(actor):
        raise Forbidden("Only owners can grant or take the owner role.")
    if user.pk == actor.pk:
        # As Coder: otherwise the only owner could leave the deployment with no owner at all.
        raise BadRequest("You cannot change your own roles.")
    User.objects.filter(pk=user.pk).update(roles=roles, updated_at=timezone.now())
    user.refresh_from_db()
    return user


# --- API keys --------------------------------------------------------------------------------------


@audited(Action.CREATE, result=lambda issued: issued[0], status=201, fallback_actor="user")
def issue_api_key(
    user: User, login_type: str, lifetime_seconds: int | None = None, token_name: str = ""
) -> tuple[APIKey, str]:
    """A new key; the token string `<id>-<secret>` is returned once and never stored."""
    if lifetime_seconds is None:
        lifetime_seconds = int(
            settings.SESSION_DURATION if login_type == LoginType.PASSWORD else settings.MAX_TOKEN_LIFETIME
        )
    if lifetime_seconds <= 0 or lifetime_seconds > settings.MAX_TOKEN_LIFETIME:
        raise field_error("lifetime", f"Must be between 1 and {int(settings.MAX_TOKEN_LIFETIME)} seconds.")
    now = timezone.now()
    key_id, secret = APIKey.new_id_and_secret()
    try:
        with transaction.atomic():
            key = _create_key(key_id, secret, user, login_type, token_name, lifetime_seconds, now)
    except IntegrityError:
        if not token_name:
            raise
        raise Conflict(f"A token named {token_name!r} already exists.") from None
    # A new key counts as used now (its last_used), so the active-users gauge counts its user: the
    # user's "last seen" says the same, instead of "-" until the key's first write interval.
    User.objects.filter(pk=user.pk).update(last_seen_at=now)
    user.last_seen_at = now
    return key, f"{key_id}-{secret}"


def _create_key(
    key_id: str,
    secret: str,
    user: User,
    login_type: str,
    token_name: str,
    lifetime_seconds: int,
    now: datetime,
) -> APIKey:
    return APIKey.objects.create(
        id=key_id,
        hashed_secret=hash_secret(secret),
        user=user,
        login_type=login_type,
        token_name=token_name,
        lifetime_seconds=lifetime_seconds,
        expires_at=now + timedelta(seconds=lifetime_seconds),
        last_used=now,
    )


def login(email: str, password: str) -> tuple[APIKey, str]:
    """A password session. One message for every failure so accounts cannot be probed."""
    user = User.objects.filter(email__iexact=email, deleted=False).first()
    if user is None or not user.check_password(password):
        _failed_login(user)
        raise Unauthorized("Incorrect email or password.")
    if user.status == UserStatus.SUSPENDED:
        _failed_login(user)
        raise Unauthorized("Your account is suspended. Contact an admin to reactivate your account.")
    if user.status == UserStatus.DORMANT:
        User.objects.filter(pk=user.pk).update(status=UserStatus.ACTIVE)
    with nested():  # the login is the change, not the key it creates
        key, token = issue_api_key(user, LoginType.PASSWORD)
    record_change(Action.LOGIN, key, actor=user, status=201, after=None)
    return key, token


def _failed_login(user: User | None) -> None:
    # As Coder: an attempt on a known account is recorded; one naming no user is not.
    if user is not None:
        record(Action.LOGIN, "api_key", user.pk, actor=user, status=401)


def logout(key: APIKey) -> None:
    APIKey.objects.filter(pk=key.pk).delete()
    record_change(Action.LOGOUT, key, actor=key.user, after=None)


@audited(Action.DELETE, target="key", status=204)  # the API answers 204, as Coder
def delete_api_key(actor: User, key: APIKey) -> None:
    """Revoke a key: its owner's own, or anyone's by an owner."""
    if key.user_id != actor.pk and not auth.is_owner(actor):
        raise Forbidden("You may only delete your own API keys.")
    APIKey.objects.filter(pk=key.pk).delete()


def api_key_for_token(token: str, now: datetime) -> APIKey | None:
    """The live key for a token (with `.user`), or None: unknown, wrong secret, expired, suspended.

    `last_used` and the user's `last_seen_at` are written at most once per
    API_KEY_LAST_USED_WRITE_INTERVAL per key: a busy client would otherwise turn every read into a
    write. The UPDATE is conditional on the old value, so concurrent requests write it once.
    """
    key_id, sep, secret = token.partition("-")
    if not sep or len(key_id) != API_KEY_ID_LENGTH or not secret:
        return None
    key = _key_with_user(key_id)
    if key is None or not hmac.compare_digest(bytes(key.hashed_secret), hash_secret(secret)):
        return None
    if key.expires_at <= now or not key.user.is_active:
        return None
    interval = timedelta(seconds=settings.API_KEY_LAST_USED_WRITE_INTERVAL)
    if now - key.last_used >= interval:
        written = APIKey.objects.filter(pk=key.pk, last_used__lte=now - interval).update(last_used=now)
        if written:
            key.last_used = now
            # Coder wakes a dormant account when it is used.
            User.objects.filter(pk=key.user_id).update(
                last_seen_at=now,
                status=Case(
                    When(status=UserStatus.DORMANT, then=Value(UserStatus.ACTIVE)), default=F("status")
                ),
            )
            key.user.last_seen_at = now
    return key


# Every column: the key and its user are whole instances (nothing deferred to load later).
_KEY_FIELDS = list(APIKey._meta.concrete_fields)
_USER_FIELDS = list(User._meta.concrete_fields)
_KEY_READER = rawsql.Reader(_KEY_FIELDS + _USER_FIELDS)
_KEY_SQL: dict[str, str] = {}


def _key_with_user(key_id: str) -> APIKey | None:
    """The key and its user in one query (every API request makes it: see coderd/rawsql.py)."""
    sql = _KEY_SQL.get(connection.vendor)
    if sql is None:
        columns = [rawsql.column("k", f) for f in _KEY_FIELDS] + [rawsql.column("u", f) for f in _USER_FIELDS]
        sql = _KEY_SQL[connection.vendor] = (
            f"SELECT {', '.join(columns)} FROM {rawsql.quote(APIKey._meta.db_table)} k"
            f" JOIN {rawsql.quote(User._meta.db_table)} u"
            f" ON u.{rawsql.quote(User._meta.pk.column)} = k.{rawsql.quote(APIKey._meta.get_field('user').column)}"
            f" WHERE k.{rawsql.quote(APIKey._meta.pk.column)} = %s"
        )
    row = rawsql.fetchone(sql, [key_id])
    if row is None:
        return None
    values = _KEY_READER.convert(row)
    split = len(_KEY_FIELDS)
    key = rawsql.instance(APIKey, _KEY_FIELDS, values[:split])
    user = rawsql.instance(User, _USER_FIELDS, values[split:])
    APIKey._meta.get_field("user").set_cached_value(key, user)
    return key


def organization_ids(user: User) -> list[Any]:
    """The ids of the user's organizations, as `user_json` lists them (one query)."""
    sql = _MEMBERSHIP_SQL.get(connection.vendor)
    if sql is None:
        table = OrganizationMember._meta
        sql = _MEMBERSHIP_SQL[connection.vendor] = (
            f"SELECT m.{rawsql.quote(table.get_field('organization').column)} FROM {rawsql.quote(table.db_table)} m"
            f" WHERE m.{rawsql.quote(table.get_field('user').column)} = %s"
        )
    params = [OrganizationMember._meta.get_field("user").get_db_prep_value(user.pk, connection)]
    return [_MEMBERSHIP_READER.convert(row)[0] for row in rawsql.fetchall(sql, params)]


_MEMBERSHIP_READER = rawsql.Reader([OrganizationMember._meta.get_field("organization")])
_MEMBERSHIP_SQL: dict[str, str] = {}


def user_for_token(token: str, now: datetime) -> User | None:
    key = api_key_for_token(token, now)
    return key.user if key else None
