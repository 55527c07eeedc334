"""GET /api/v2/audit: the audit trail in the shape of Coder's `codersdk.AuditLogResponse`."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, time, timedelta
from typing import Any

from django.db.models import Q, QuerySet
from django.http import HttpRequest
from django.urls import reverse
from ninja import Query, Router, Schema
from pydantic import Field

from coderd.audit.models import Action, AuditLog, ResourceType
from coderd.errors import BadRequest, Forbidden
from coderd.pagination import Page
from coderd.users import auth
from coderd.users.api import ERRORS, actor
from coderd.users.models import User
from coderd.users.schemas import UserOut, user_json

router = Router(tags=["Audit"])


class MinimalOrganization(Schema):
    id: uuid.UUID
    name: str
    display_name: str
    icon: str = ""


class AuditLogOut(Schema):
    id: uuid.UUID
    request_id: uuid.UUID | None
    time: datetime
    ip: str | None
    user_agent: str
    resource_type: str
    resource_id: uuid.UUID
    resource_target: str
    resource_icon: str = ""
    action: str
    diff: dict[str, Any]
    status_code: int
    additional_fields: dict[str, Any]
    description: str
    resource_link: str
    is_deleted: bool
    organization_id: uuid.UUID | None
    organization: MinimalOrganization | None
    user: UserOut | None


class AuditLogResponse(Schema):
    audit_logs: list[AuditLogOut]
    count: int = Field(
        description="Rows matching q, counted up to count_cap + 1 (then: more than count_cap)."
    )
    count_cap: int


# As Coder's auditLogCountCap: counting every matching row of a large trail is a long scan.
COUNT_CAP = 2000


class AuditFilter(Schema):
    q: str = Field(
        "",
        max_length=1024,
        description="Space-separated terms, as Coder's: `action:`, `resource_type:`, `resource_id:`, "
        "`resource_target:`, `username:` (or `me`), `email:`, `request_id:`, `organization:`, "
        "`date_from:`/`date_to:` (YYYY-MM-DD, UTC); a plain word is a resource type.",
    )


# --- descriptions, as coderd/audit.go's auditLogDescription ----------------------------------------

_FRIENDLY_ACTION = {
    Action.CREATE: "created",
    Action.WRITE: "updated",
    Action.DELETE: "deleted",
    Action.START: "started",
    Action.STOP: "stopped",
    Action.LOGIN: "logged in",
    Action.LOGOUT: "logged out",
}
_FRIENDLY_RESOURCE = {
    ResourceType.TEMPLATE_VERSION: "template version",
    ResourceType.WORKSPACE_BUILD: "workspace",  # Coder names a build by its workspace
    ResourceType.API_KEY: "token",
    ResourceType.ORGANIZATION_MEMBER: "organization member",
}


def description(entry: AuditLog) -> str:
    """Coder's template: the client fills `{user}` and `{target}`."""
    verb = (
        f"unsuccessfully attempted to {entry.action}"
        if entry.status_code >= 400
        else _FRIENDLY_ACTION.get(entry.action, entry.action)
    )
    if entry.resource_type == ResourceType.API_KEY and entry.action in (Action.LOGIN, Action.LOGOUT):
        return f"{{user}} {verb}"
    noun = _FRIENDLY_RESOURCE.get(entry.resource_type, entry.resource_type)
    return f"{{user}} {verb} {noun} {{target}}"


# --- search ---------------------------------------------------------------------------------------

_KEYS = (
    "action", "resource_type", "resource_id", "resource_target", "username", "email", "request_id",
    "organization", "date_from", "date_to",
)  # fmt: skip


def _invalid(detail: str) -> BadRequest:
    return BadRequest("Invalid audit search query.", validations=[{"field": "q", "detail": detail}])


def _uuid(key: str, value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise _invalid(f"{key}: {value!r} is not a UUID.") from None


def _date(key: str, value: str) -> datetime:
    try:
        day = datetime.strptime(value, "%Y-%m-%d").date()
    except ValueError:
        raise _invalid(f"{key}: {value!r} is not a date (YYYY-MM-DD).") from None
    return datetime.combine(day, time.min, tzinfo=UTC)


def search(entries: QuerySet, q: str, caller: Any) -> QuerySet:
    """Coder's searchquery.AuditLogs: lower-cased `key:value` terms, a bare word a resource type."""
    for term in q.lower().split():
        key, sep, value = term.partition(":")
        if not sep:
            key, value = "resource_type", term
        if key not in _KEYS:
            raise _invalid(f"{term!r}: use one of {', '.join(_KEYS)}.")
        if not value:
            raise _invalid(f"{term!r}: {key} needs a value.")
        if key == "action":
            if value not in Action.values:
                raise _invalid(f"action is one of {', '.join(Action.values)}.")
            entries = entries.filter(action=value)
        elif key == "resource_type":
            if value not in ResourceType.values:
                raise _invalid(f"resource_type is one of {', '.join(ResourceType.values)}.")
            entries = entries.filter(resource_type=value)
        elif key == "resource_id":
            entries = entries.filter(resource_id=_uuid(key, value))
        elif key == "request_id":
            entries = entries.filter(request_id=_uuid(key, value))
        elif key == "resource_target":
            entries = entries.filter(resource_target__iexact=value)
        elif key in ("username", "email"):
            # The users first, then their rows through the (user, time) index, not a join per row.
            users = (
                [caller.pk]
                if value == "me" and key == "username"
                else list(User.objects.filter(**{f"{key}__iexact": value}).values_list("pk", flat=True))
            )
            entries = entries.filter(user_id__in=users)
        elif key == "organization":
            match = Q(organization__name__iexact=value)
            try:
                match |= Q(organization_id=uuid.UUID(value))
            except ValueError:
                pass
            entries = entries.filter(match)
        elif key == "date_from":
            entries = entries.filter(time__gte=_date(key, value))
        else:  # date_to: the whole day, as Coder
            entries = entries.filter(time__lt=_date(key, value) + timedelta(days=1))
    return entries


# --- rendering ------------------------------------------------------------------------------------


def _deleted_and_links(entries: list[AuditLog]) -> dict[tuple[str, uuid.UUID], tuple[bool, str]]:
    """Per resource: is it gone, and its admin page. One query per resource type on the page."""
    from coderd.users.models import Organization, User
    from coderd.workspaces.models import Template, TemplateVersion, Workspace, WorkspaceBuild

    ids: dict[str, set[uuid.UUID]] = {}
    for e in entries:
        ids.setdefault(e.resource_type, set()).add(e.resource_id)
    out: dict[tuple[str, uuid.UUID], tuple[bool, str]] = {}

    def link(model: Any, pk: Any) -> str:
        meta = model._meta
        return reverse(f"admin:{meta.app_label}_{meta.model_name}_change", args=[pk])

    soft = {
        ResourceType.USER: (User, "deleted"),
        ResourceType.TEMPLATE: (Template, "deleted"),
        ResourceType.WORKSPACE: (Workspace, "deleted"),
        ResourceType.WORKSPACE_BUILD: (WorkspaceBuild, "workspace__deleted"),
        ResourceType.TEMPLATE_VERSION: (TemplateVersion, None),
        ResourceType.ORGANIZATION: (Organization, None),
    }
    for rtype, (model, flag) in soft.items():
        wanted = ids.get(rtype)
        if not wanted:
            continue
        rows = model.objects.filter(pk__in=wanted)
        found = (
            dict(rows.values_list("pk", flag)) if flag else dict.fromkeys(rows.values_list("pk", flat=True))
        )
        for pk in wanted:
            deleted = pk not in found or bool(found[pk])
            out[(rtype, pk)] = (deleted, "" if deleted else link(model, pk))
    return out


def audit_log_json(entry: AuditLog, deleted_and_link: tuple[bool, str] = (False, "")) -> dict[str, Any]:
    org = entry.organization
    return {
        "id": entry.id,
        "request_id": entry.request_id,
        "time": entry.time,
        "ip": entry.ip,
        "user_agent": entry.user_agent,
        "resource_type": entry.resource_type,
        "resource_id": entry.resource_id,
        "resource_target": entry.resource_target,
        "resource_icon": "",
        "action": entry.action,
        "diff": entry.diff,
        "status_code": entry.status_code,
        "additional_fields": entry.additional_fields,
        "description": description(entry),
        "resource_link": deleted_and_link[1],
        "is_deleted": deleted_and_link[0],
        "organization_id": entry.organization_id,
        "organization": (
            {"id": org.id, "name": org.name, "display_name": org.display_name, "icon": ""} if org else None
        ),
        # As Coder: the user without organization ids (they are not read for the trail).
        "user": user_json(entry.user, organization_ids=[]) if entry.user else None,
    }


@router.get(
    "/audit",
    response={200: AuditLogResponse, **ERRORS},
    summary="Get audit logs",
    description="Every change made through the API or the admin, newest first. Owners and auditors only.",
)
def audit_logs(request: HttpRequest, page: Query[Page], filters: Query[AuditFilter]) -> Any:
    caller = actor(request)
    if not auth.can_read_audit_log(caller):
        raise Forbidden("Forbidden.", detail="Only owners and auditors can read the audit log.")
    entries = search(AuditLog.objects.select_related("user", "organization"), filters.q, caller)
    rows = list(page.apply(entries.order_by("-time", "-id")))
    extra = _deleted_and_links(rows)
    return {
        "audit_logs": [
            audit_log_json(e, extra.get((e.resource_type, e.resource_id), (False, ""))) for e in rows
        ],
        "count": entries.order_by()[: COUNT_CAP + 1].count(),
        "count_cap": COUNT_CAP,
    }
