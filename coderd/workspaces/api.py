"""Templates, template versions, workspaces and builds under /api/v2 (Coder's paths and bodies).

Views are thin: look the object up as this caller may see it (404 otherwise), call a service
function, render. A member asking for someone else's workspace gets 404, as if it did not exist.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone
from ninja import Query, Router, Schema, Status
from pydantic import Field

from coderd.decoding import query_pattern, quoted, search_terms
from coderd.errors import BadRequest, Gone, NotFound, field_error
from coderd.fastjson import raw_json_response
from coderd.pagination import Page
from coderd.users import auth
from coderd.users.api import ERRORS, actor, visible_organization
from coderd.users.models import OrganizationMember, User
from coderd.users.schemas import ErrorOut, Message
from coderd.users.services import MAX_REF_LENGTH, shown, user_by_ref
from coderd.workspaces import services
from coderd.workspaces.listing import plain_count, workspace_list
from coderd.workspaces.models import Template, TemplateVersion, Workspace, WorkspaceBuild
from coderd.workspaces.responses import queue_positions, with_active_user_count
from coderd.workspaces.schemas import (
    BUILD_RELATED,
    TEMPLATE_RELATED,
    VERSION_RELATED,
    WORKSPACE_RELATED,
    BuildOut,
    CreateBuildRequest,
    CreateTemplateRequest,
    CreateTemplateVersionRequest,
    CreateWorkspaceRequest,
    TemplateOut,
    TemplateVersionOut,
    UpdateActiveVersionRequest,
    WorkspaceOut,
    WorkspacesList,
    build_json,
    template_json,
    template_version_json,
    workspace_json,
)
from coderd.workspaces.status import WorkspaceStatus, workspace_status_expression

router = Router()


# --- lookups as the caller may see them -------------------------------------------------------------


def _in_organization(user: User, organization_id: Any) -> bool:
    return (
        auth.can_read_users(user)
        or OrganizationMember.objects.filter(organization_id=organization_id, user=user).exists()
    )


def get_template(request: HttpRequest, template_id: uuid.UUID) -> Template:
    template = (
        Template.objects.select_related(*TEMPLATE_RELATED).filter(pk=template_id, deleted=False).first()
    )
    if template is None or not _in_organization(actor(request), template.organization_id):
        raise NotFound("Template not found.")
    return template


def get_template_version(request: HttpRequest, version_id: uuid.UUID) -> TemplateVersion:
    version = TemplateVersion.objects.select_related(*VERSION_RELATED).filter(pk=version_id).first()
    if version is None or not _in_organization(actor(request), version.organization_id):
        raise NotFound("Template version not found.")
    return version


def get_workspace(request: HttpRequest, workspace_id: uuid.UUID, include_deleted: bool = True) -> Workspace:
    """A workspace this caller may read, deleted ones included (as Coder's workspace parameter);
    with `include_deleted=False`, a deleted one is 410 Gone, as Coder's GET of a workspace."""
    ws = Workspace.objects.select_related(*WORKSPACE_RELATED).filter(pk=workspace_id).first()
    if ws is None or not auth.can_read_workspace(actor(request), ws):
        raise NotFound("Workspace not found.")
    if ws.deleted and not include_deleted:
        raise Gone(
            f"Workspace {str(ws.id)!r} was deleted, you can view this workspace by specifying "
            "'?include_deleted=true' and trying again."
        )
    return ws


def get_build(request: HttpRequest, build_id: uuid.UUID) -> WorkspaceBuild:
    build = WorkspaceBuild.objects.select_related(*BUILD_RELATED).filter(pk=build_id).first()
    if build is None or not auth.can_read_workspace(actor(request), build.workspace):
        raise NotFound("Workspace build not found.")
    return build


# --- template versions --------------------------------------------------------------------------------


@router.post(
    "/organizations/{organization}/templateversions",
    response={201: TemplateVersionOut, **ERRORS},
    tags=["Templates"],
    summary="Create a template version and its import job",
)
def create_template_version(
    request: HttpRequest, organization: str, req: CreateTemplateVersionRequest
) -> Any:
    org = visible_organization(request, organization)
    template = None
    if req.template_id is not None:
        template = Template.objects.filter(pk=req.template_id, organization=org, deleted=False).first()
        if template is None:
            raise BadRequest(
                "Template not found.", validations=[{"field": "template_id", "detail": "No such template."}]
            )
    version = services.create_template_version(
        actor(request),
        org,
        req.provisioner,
        req.source,
        name=req.name or None,
        template=template,
        message=req.message,
    )
    return Status(201, template_version_json(version))


@router.get(
    "/templateversions/{uuid:templateversion}",
    response={200: TemplateVersionOut, **ERRORS},
    tags=["Templates"],
    summary="Get template version",
)
def get_template_version_view(request: HttpRequest, templateversion: uuid.UUID) -> Any:
    return template_version_json(get_template_version(request, templateversion))


@router.patch(
    "/templateversions/{uuid:templateversion}/cancel",
    response={200: Message, **ERRORS},
    tags=["Templates"],
    summary="Cancel a template version's import job",
)
def cancel_template_version(request: HttpRequest, templateversion: uuid.UUID) -> Any:
    version = get_template_version(request, templateversion)
    services.cancel_template_version(actor(request), version)
    return {"message": "Job has been marked as canceled."}


# --- templates ------------------------------------------------------------------------------------


@router.post(
    "/organizations/{organization}/templates",
    response={201: TemplateOut, **ERRORS},
    tags=["Templates"],
    summary="Create template",
)
def create_template(request: HttpRequest, organization: str, req: CreateTemplateRequest) -> Any:
    org = visible_organization(request, organization)
    version = TemplateVersion.objects.select_related("job").filter(pk=req.template_version_id).first()
    if version is None or version.organization_id != org.pk:
        raise NotFound("Template version not found.")
    template = services.create_template(actor(request), org, req.name, version)
    if req.display_name or req.description:
        Template.objects.filter(pk=template.pk).update(
            display_name=req.display_name, description=req.description
        )
    return Status(201, template_json(Template.objects.select_related(*TEMPLATE_RELATED).get(pk=template.pk)))


@router.get(
    "/organizations/{organization}/templates",
    response={200: list[TemplateOut], **ERRORS},
    tags=["Templates"],
    summary="List templates of an organization",
)
def list_templates(request: HttpRequest, organization: str, page: Query[Page]) -> Any:
    org = visible_organization(request, organization)
    templates = Template.objects.select_related(*TEMPLATE_RELATED).filter(organization=org, deleted=False)
    templates = with_active_user_count(templates)
    return [template_json(t) for t in page.apply(templates.order_by("name", "id"))]


@router.get(
    "/organizations/{organization}/templates/{templatename}",
    response={200: TemplateOut, **ERRORS},
    tags=["Templates"],
    summary="Get template by organization and name",
)
def get_template_by_name(request: HttpRequest, organization: str, templatename: str) -> Any:
    org = visible_organization(request, organization)
    if len(templatename) > MAX_REF_LENGTH:
        raise NotFound("Template not found.")
    template = (
        Template.objects.select_related(*TEMPLATE_RELATED)
        .filter(organization=org, name__iexact=templatename, deleted=False)
        .first()
    )
    if template is None:
        raise NotFound("Template not found.")
    return template_json(template)


@router.get(
    "/templates",
    response={200: list[TemplateOut], **ERRORS},
    tags=["Templates"],
    summary="Templates of every organization the caller is in",
)
def list_all_templates(request: HttpRequest, page: Query[Page]) -> Any:
    user = actor(request)
    templates = Template.objects.select_related(*TEMPLATE_RELATED).filter(deleted=False)
    if not auth.can_read_users(user):  # as _in_organization: members see their organizations'
        templates = templates.filter(organization__members=user)
    templates = with_active_user_count(templates).order_by("organization__name", "name", "id")
    return [template_json(t) for t in page.apply(templates)]


@router.get(
    "/templates/{uuid:template}",
    response={200: TemplateOut, **ERRORS},
    tags=["Templates"],
    summary="Get template",
)
def get_template_view(request: HttpRequest, template: uuid.UUID) -> Any:
    return template_json(get_template(request, template))


@router.delete(
    "/templates/{uuid:template}",
    response={200: Message, **ERRORS},
    tags=["Templates"],
    summary="Delete template",
)
def delete_template(request: HttpRequest, template: uuid.UUID) -> Any:
    services.delete_template(actor(request), get_template(request, template))
    return {"message": "Template has been deleted!"}


@router.get(
    "/templates/{uuid:template}/versions",
    response={200: list[TemplateVersionOut], **ERRORS},
    tags=["Templates"],
    summary="List versions of a template",
)
def list_template_versions(request: HttpRequest, template: uuid.UUID, page: Query[Page]) -> Any:
    tmpl = get_template(request, template)
    versions = tmpl.versions.select_related(*VERSION_RELATED).order_by("created_at", "id")
    return [template_version_json(v) for v in page.apply(versions)]


@router.get(
    "/templates/{uuid:template}/versions/{templateversionname}",
    response={200: TemplateVersionOut, **ERRORS},
    tags=["Templates"],
    summary="Get a template's version by name",
)
def get_template_version_by_name(request: HttpRequest, template: uuid.UUID, templateversionname: str) -> Any:
    tmpl = get_template(request, template)
    version = None
    if len(templateversionname) <= MAX_REF_LENGTH:
        version = (
            tmpl.versions.select_related(*VERSION_RELATED).filter(name__iexact=templateversionname).first()
        )
    if version is None:
        raise NotFound(f"No template version named {shown(templateversionname)}.")
    return template_version_json(version)


@router.patch(
    "/templates/{uuid:template}/versions",
    response={200: Message, **ERRORS},
    tags=["Templates"],
    summary="Set the active template version",
)
def set_active_version(request: HttpRequest, template: uuid.UUID, req: UpdateActiveVersionRequest) -> Any:
    tmpl = get_template(request, template)
    version = TemplateVersion.objects.select_related("job").filter(pk=req.id).first()
    if version is None:
        raise NotFound("Template version not found.")
    services.set_active_version(actor(request), tmpl, version)
    return {"message": "Updated the active template version!"}


# --- workspaces -----------------------------------------------------------------------------------


@router.post(
    "/organizations/{organization}/members/{user}/workspaces",
    response={201: WorkspaceOut, **ERRORS},
    tags=["Workspaces"],
    summary="Create a workspace and its first start build",
)
def create_workspace(request: HttpRequest, organization: str, user: str, req: CreateWorkspaceRequest) -> Any:
    return _create_workspace(request, visible_organization(request, organization), user, req)


@router.post(
    "/users/{user}/workspaces",
    response={201: WorkspaceOut, **ERRORS},
    tags=["Workspaces"],
    summary="Create a workspace in its template's organization",
)
def create_user_workspace(request: HttpRequest, user: str, req: CreateWorkspaceRequest) -> Any:
    return _create_workspace(request, None, user, req)


def _template_for(request: HttpRequest, org: Any, req: CreateWorkspaceRequest) -> Template:
    templates = Template.objects.filter(deleted=False)
    if org is not None:
        templates = templates.filter(organization=org)
    if req.template_id is not None:
        template = templates.filter(pk=req.template_id).first()
        field = "template_id"
    else:
        version = TemplateVersion.objects.filter(pk=req.template_version_id).first()
        template = (
            templates.filter(pk=version.template_id).first() if version and version.template_id else None
        )
        field = "template_version_id"
        if template is not None and template.active_version_id != req.template_version_id:
            raise field_error(field, "coderd builds a template's active version only; this is not it.")
    if template is None or not _in_organization(actor(request), template.organization_id):
        raise BadRequest("Template not found.", validations=[{"field": field, "detail": "No such template."}])
    return template


def _create_workspace(request: HttpRequest, org: Any, user: str, req: CreateWorkspaceRequest) -> Any:
    owner = user_by_ref(actor(request), user)
    template = _template_for(request, org, req)
    ws = services.create_workspace(actor(request), owner, template, req.name)
    return Status(201, workspace_json(Workspace.objects.select_related(*WORKSPACE_RELATED).get(pk=ws.pk)))


class WorkspaceFilter(Schema):
    q: str = Field(
        "",
        max_length=1024,
        description="Space-separated key:value terms (values may be double-quoted): owner:<username|me>, "
        "name:<substring>, template:<name>, status:<workspace status, as a build's `status`>, deleted:true.",
        json_schema_extra=query_pattern(
            r'(?:owner|name|template):(?:"[^" \t\n\r\f\v]+"|[^" \t\n\r\f\v]+)',
            "status:" + quoted(*WorkspaceStatus.values),
            "deleted:" + quoted("true", "false"),
        ),
    )


class WorkspaceGet(Schema):
    include_deleted: bool = Field(False, description="Also find a deleted workspace (as Coder).")


_WORKSPACE_QUERY_KEYS = {"owner", "name", "template", "status", "deleted"}


def _filter_workspaces(user: User, q: str) -> QuerySet:
    workspaces = Workspace.objects.select_related(*WORKSPACE_RELATED)
    if not auth.can_read_all_workspaces(user):
        workspaces = workspaces.filter(owner=user)
    terms: dict[str, str] = {}
    for term in search_terms(q):
        key, sep, value = term.partition(":")
        if not sep or key not in _WORKSPACE_QUERY_KEYS or not value:
            raise BadRequest(
                "Invalid workspace search query.",
                validations=[
                    {"field": "q", "detail": f"{term!r}: use one of {sorted(_WORKSPACE_QUERY_KEYS)}."}
                ],
            )
        terms[key] = value
    if terms.get("deleted", "false").lower() != "true":
        workspaces = workspaces.filter(deleted=False)
    if "owner" in terms:
        owner = terms["owner"]
        workspaces = (
            workspaces.filter(owner=user)
            if owner == "me"
            else workspaces.filter(owner__username__iexact=owner)
        )
    if "name" in terms:
        workspaces = workspaces.filter(name__icontains=terms["name"])
    if "template" in terms:
        workspaces = workspaces.filter(template__name__iexact=terms["template"])
    if "status" in terms:
        # Coder's workspace status (the latest build's), not its job's.
        if terms["status"] not in WorkspaceStatus.values:
            raise BadRequest(
                "Invalid workspace search query.",
                validations=[
                    {"field": "q", "detail": f"status must be one of {', '.join(WorkspaceStatus.values)}."}
                ],
            )
        status = workspace_status_expression(
            timezone.now(), transition="latest_build__transition", job_prefix="latest_build__job__"
        )
        workspaces = workspaces.annotate(latest_status=status).filter(latest_status=terms["status"])
    # By the owner's username as the workspace's own copy holds it (kept equal by the triggers of
    # workspaces 0002, through renames too), so that an index gives the order (workspaces 0006).
    return workspaces.order_by("owner_username", "name", "id")


@router.get(
    "/workspaces", response={200: WorkspacesList, **ERRORS}, tags=["Workspaces"], summary="List workspaces"
)
def list_workspaces(request: HttpRequest, filters: Query[WorkspaceFilter], page: Query[Page]) -> Any:
    user = actor(request)
    # At most three queries however many: the page (its builds, jobs, templates... joined), the
    # count when the page is full, and the queue positions of its pending jobs, if any. The page is
    # read as plain rows (listing.py): the same bytes as workspace_json over model instances.
    if filters.q:
        workspaces = _filter_workspaces(user, filters.q)
        listed = workspace_list(page.apply(workspaces), timezone.now())
        count = page.count(workspaces, listed)
    else:  # what clients poll: its SQL and its count's are kept, per shape; no queryset is built
        everyone = auth.can_read_all_workspaces(user)
        shape = (everyone, page.limit, page.offset)
        listed = workspace_list(
            None, timezone.now(), (shape, user.pk, lambda: page.apply(_filter_workspaces(user, "")))
        )
        count = page.known_count(listed)
        if count is None:
            count = plain_count(everyone, user.pk, lambda: _filter_workspaces(user, ""))
    return raw_json_response(f'{{"workspaces": [{", ".join(listed)}], "count": {count}}}')


@router.get(
    "/workspaces/{uuid:workspace}",
    response={200: WorkspaceOut, 410: ErrorOut, **ERRORS},
    tags=["Workspaces"],
    summary="Get workspace",
)
def get_workspace_view(request: HttpRequest, workspace: uuid.UUID, filters: Query[WorkspaceGet]) -> Any:
    return workspace_json(get_workspace(request, workspace, include_deleted=filters.include_deleted))


@router.get(
    "/users/{user}/workspace/{workspacename}",
    response={200: WorkspaceOut, **ERRORS},
    tags=["Workspaces"],
    summary="Get workspace by owner and name",
)
def get_workspace_by_name(
    request: HttpRequest, user: str, workspacename: str, filters: Query[WorkspaceGet]
) -> Any:
    caller = actor(request)
    try:
        owner = user_by_ref(caller, user)
    except NotFound:
        raise NotFound("Workspace not found.") from None
    if len(workspacename) > MAX_REF_LENGTH:
        raise NotFound("Workspace not found.")
    named = Workspace.objects.select_related(*WORKSPACE_RELATED).filter(
        owner=owner, name__iexact=workspacename
    )
    ws = named.filter(deleted=False).first()
    if ws is None and filters.include_deleted:
        # As Coder: the most recently deleted workspace of that name.
        ws = named.order_by("-updated_at", "-id").first()
    if ws is None or not auth.can_read_workspace(caller, ws):
        raise NotFound("Workspace not found.")
    return workspace_json(ws)


# --- builds ---------------------------------------------------------------------------------------


@router.post(
    "/workspaces/{uuid:workspace}/builds",
    response={201: BuildOut, 410: ErrorOut, **ERRORS},
    tags=["Builds"],
    summary="Create a workspace build",
)
def create_build(request: HttpRequest, workspace: uuid.UUID, req: CreateBuildRequest) -> Any:
    ws = get_workspace(request, workspace, include_deleted=False)
    if req.template_version_id not in (None, ws.template.active_version_id):
        raise field_error(
            "template_version_id", "coderd builds the template's active version only; this is not it."
        )
    build = services.create_build(actor(request), ws, req.transition)
    return Status(201, build_json(WorkspaceBuild.objects.select_related(*BUILD_RELATED).get(pk=build.pk)))


@router.get(
    "/workspaces/{uuid:workspace}/builds",
    response={200: list[BuildOut], **ERRORS},
    tags=["Builds"],
    summary="List builds of a workspace, newest first",
)
def list_builds(request: HttpRequest, workspace: uuid.UUID, page: Query[Page]) -> Any:
    ws = get_workspace(request, workspace)
    builds = (
        WorkspaceBuild.objects.select_related("job__worker", "template_version", "initiator")
        .filter(workspace=ws)
        .order_by("-build_number")
    )
    rows = list(page.apply(builds))
    now = timezone.now()
    queue = queue_positions((b.job for b in rows), now)
    return [build_json(b, ws, queue, now) for b in rows]


@router.get(
    "/workspacebuilds/{uuid:workspacebuild}",
    response={200: BuildOut, **ERRORS},
    tags=["Builds"],
    summary="Get workspace build",
)
def get_build_view(request: HttpRequest, workspacebuild: uuid.UUID) -> Any:
    return build_json(get_build(request, workspacebuild))


@router.patch(
    "/workspacebuilds/{uuid:workspacebuild}/cancel",
    response={200: Message, **ERRORS},
    tags=["Builds"],
    summary="Cancel a pending or running build",
)
def cancel_build(request: HttpRequest, workspacebuild: uuid.UUID) -> Any:
    build = get_build(request, workspacebuild)
    services.cancel_build(actor(request), build)
    return {"message": "Job has been marked as canceled."}
