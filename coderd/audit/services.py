"""Recording the audit trail, where changes are made.

Service functions that change state carry `@audited(...)`: the row is written when the function
returns (with the status the API answers) or raises an APIError (with its status), so the API, the
admin and the command line cannot change anything without a row. As in Coder, a failure is recorded
only once the object it concerned was found: a refused suspend of a known user is a row with 403,
a create that failed validation (no object yet) is none; a failed login is recorded when the email
names a user.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import uuid
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import transaction

from coderd.audit import context
from coderd.audit.models import Action, AuditLog, ResourceType
from coderd.errors import APIError

log = logging.getLogger(__name__)

# Set while an audited call runs: an audited function called by another (a cancel inside an admin
# action, a key issued by login) is part of the outer change and writes no row of its own.
_recording: ContextVar[bool] = ContextVar("coderd_audit_recording", default=False)


@dataclass(frozen=True)
class Spec:
    """How one model appears in the trail: its type, its name (target), id, organization, and the
    fields whose old and new values make the diff (dotted paths follow relations)."""

    resource_type: str
    target: str = "name"
    id: str = "pk"
    organization: str | None = "organization_id"
    fields: tuple[str, ...] = ()
    secret: frozenset[str] = field(default_factory=frozenset)


SPECS: dict[str, Spec] = {
    "users.User": Spec(
        ResourceType.USER,
        target="username",
        organization=None,
        fields=("username", "email", "name", "status", "roles", "deleted", "password"),
        secret=frozenset({"password"}),
    ),
    # As Coder: a key's resource id is its user's, its target the token's name ("" for a session).
    "users.APIKey": Spec(
        ResourceType.API_KEY,
        target="token_name",
        id="user_id",
        organization=None,
        fields=("token_name", "login_type", "lifetime_seconds", "expires_at"),
    ),
    "users.Organization": Spec(
        ResourceType.ORGANIZATION, organization="id", fields=("name", "display_name", "description")
    ),
    "users.OrganizationMember": Spec(
        ResourceType.ORGANIZATION_MEMBER, target="user.username", id="user_id", fields=("roles",)
    ),
    "workspaces.Template": Spec(
        ResourceType.TEMPLATE,
        fields=("name", "display_name", "description", "active_version_id", "deleted"),
    ),
    "workspaces.TemplateVersion": Spec(
        ResourceType.TEMPLATE_VERSION, fields=("name", "template_id", "message", "job.canceled_at")
    ),
    "workspaces.Workspace": Spec(ResourceType.WORKSPACE, fields=("name", "template_id", "deleted")),
    "workspaces.WorkspaceBuild": Spec(
        ResourceType.WORKSPACE_BUILD,
        target="workspace.name",
        organization="workspace.organization_id",
        fields=("build_number", "transition", "template_version_id", "job.canceled_at"),
    ),
}


def spec_for(obj: Any) -> Spec:
    return SPECS[obj._meta.label]


def _path(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if obj is None:
            return None
        obj = getattr(obj, part)
    return obj


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def snapshot(obj: Any) -> dict[str, Any] | None:
    if obj is None:
        return None
    return {name: _jsonable(_path(obj, name)) for name in spec_for(obj).fields}


def fresh(obj: Any) -> Any:
    """The object as stored now (None once deleted): callers' copies are not always refreshed."""
    return obj._meta.model._default_manager.filter(pk=obj.pk).first()  # also through a lazy request.user


def diff(spec: Spec, before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, Any]:
    """Coder's AuditDiff: `{field: {"old", "new", "secret"}}` for each field that changed; a secret's
    values are never written."""
    created, gone = before is None, after is None
    before, after = before or {}, after or {}
    out: dict[str, Any] = {}
    for name in spec.fields:
        old, new = before.get(name), after.get(name)
        # As Coder's diff against a zero value: a create lists the fields it set, a removal the
        # fields it cleared, not every empty one.
        if old == new or (created and not new) or (gone and not old):
            continue
        key = name.rsplit(".", 1)[-1]
        if name in spec.secret:
            out[key] = {"old": "", "new": "", "secret": True}
        else:
            out[key] = {"old": old, "new": new, "secret": False}
    return out


def _additional_fields(obj: Any) -> dict[str, Any]:
    if obj is None or obj._meta.label != "workspaces.WorkspaceBuild":
        return {}
    ws = obj.workspace
    # Coder's audit.AdditionalFields for a build.
    return {
        "workspace_name": ws.name,
        "workspace_id": str(ws.pk),
        "workspace_owner": ws.owner.username,
        "build_number": str(obj.build_number),
        "build_reason": "initiator",
    }


def record(
    action: str,
    resource_type: str,
    resource_id: Any,
    target: str = "",
    *,
    actor: Any = None,
    status: int = 200,
    organization_id: Any = None,
    diff: dict[str, Any] | None = None,
    additional_fields: dict[str, Any] | None = None,
) -> AuditLog | None:
    """One row; who, from where and which request come from the current request (if any)."""
    conn = transaction.get_connection()
    if conn.in_atomic_block and conn.needs_rollback:
        return None  # the caller's transaction is broken: it cannot take a row
    request = context.current_request()
    actor = actor or context.request_actor(request)
    # In a savepoint: a row that cannot be written must not break the caller's transaction.
    with transaction.atomic():
        entry = AuditLog.objects.create(
            user_id=getattr(actor, "pk", None),
            organization_id=organization_id,
            ip=context.client_ip(request),
            user_agent=context.user_agent(request),
            resource_type=resource_type,
            resource_id=resource_id,
            resource_target=(target or "")[:256],
            action=action,
            diff=diff or {},
            status_code=status,
            additional_fields=additional_fields or {},
            request_id=context.request_id(request),
        )
    # Also one log line, as Coder's slog audit backend: a trail an operator can tail or ship.
    log.info(
        "audit: %s %s %s %r status=%d ip=%s",
        getattr(actor, "username", "-"),
        action,
        resource_type,
        entry.resource_target,
        status,
        entry.ip or "-",
    )
    return entry


def record_change(
    action: str,
    obj: Any,
    *,
    actor: Any = None,
    status: int = 200,
    before: dict[str, Any] | None = None,
    after: Any = ...,
) -> AuditLog | None:
    """A row about `obj`. `before` is its snapshot before the change (None for a create); the after
    side is read from the database unless given (None: it is gone)."""
    spec = spec_for(obj)
    if after is ...:
        after = snapshot(fresh(obj)) if status < 400 else before
    org = _path(obj, spec.organization) if spec.organization else None
    return record(
        action,
        spec.resource_type,
        _path(obj, spec.id),
        str(_path(obj, spec.target) or ""),
        actor=actor,
        status=status,
        organization_id=org,
        diff=diff(spec, before, after) if status < 400 else {},
        additional_fields=_additional_fields(obj),
    )


@contextlib.contextmanager
def nested() -> Iterator[None]:
    """Audited calls inside this block write no rows of their own (the caller records the change)."""
    token = _recording.set(True)
    try:
        yield
    finally:
        _recording.reset(token)


def audited(
    action: str | Callable[[dict[str, Any]], str],
    *,
    target: str | None = None,
    result: bool | Callable[[Any], Any] = False,
    status: int = 200,
    fallback_actor: str | None = None,
) -> Callable:
    """Record each call of a service function.

    `action` is an Action, or a function of the call's arguments (a build's transition).
    `target` names the argument holding the object changed (its state before is the diff's old
    side; a refusal is recorded against it). `result` says the object is the return value (True)
    or taken from it (a function), as for a create. `status` is what the API answers on success.
    The actor is the `actor` argument, else the request's caller, else the argument named by
    `fallback_actor` (a key issued outside any request was asked for by its owner).
    """

    def decorate(fn: Callable) -> Callable:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if _recording.get():
                return fn(*args, **kwargs)
            arguments = signature.bind(*args, **kwargs).arguments
            verb = action(arguments) if callable(action) else action
            actor = arguments.get("actor") or context.request_actor(context.current_request())
            if actor is None and fallback_actor:
                actor = arguments.get(fallback_actor)
            obj = arguments.get(target) if target else None
            before = snapshot(obj) if obj is not None else None
            with nested():
                try:
                    value = fn(*args, **kwargs)
                except APIError as exc:
                    if obj is not None:
                        _safely(record_change, verb, obj, actor=actor, status=exc.status, before=before)
                    raise
            changed = value if result is True else result(value) if result else obj
            if changed is not None:
                same = obj is not None and changed._meta.label == obj._meta.label
                _safely(
                    record_change, verb, changed, actor=actor, status=status, before=before if same else None
                )
            return value

        return wrapper

    return decorate


def _safely(fn: Callable, *args: Any, **kwargs: Any) -> None:
    # The change is made; a trail that cannot be written is logged, not turned into a failed change.
    try:
        fn(*args, **kwargs)
    except Exception:
        log.exception("could not write an audit row")


__all__ = ["Action", "ResourceType", "audited", "nested", "record", "record_change", "snapshot"]
