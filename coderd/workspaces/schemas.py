"""Request and response bodies of templates, versions, workspaces, builds and jobs (Coder's names)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from django.utils import timezone
from ninja import Schema
from pydantic import Field

from coderd.users.schemas import Request
from coderd.workspaces.models import Template, TemplateVersion, Workspace, WorkspaceBuild
from provisioner.models import ProvisionerJob

# --- requests ---------------------------------------------------------------------------------------


class CreateTemplateVersionRequest(Request):
    name: str | None = Field(None, max_length=64)
    message: str = ""
    template_id: uuid.UUID | None = None
    provisioner: Literal["echo", "shell"]
    source: dict[str, Any] = Field(
        description="echo: {start: {duration_ms, logs, fail}, stop, delete}; "
        "shell: {start, stop, delete: scripts, timeout_seconds}."
    )


class CreateTemplateRequest(Request):
    name: str
    template_version_id: uuid.UUID
    display_name: str = Field("", max_length=128)
    description: str = ""


class UpdateActiveVersionRequest(Request):
    id: uuid.UUID


class CreateWorkspaceRequest(Request):
    template_id: uuid.UUID
    name: str


class CreateBuildRequest(Request):
    transition: Literal["start", "stop", "delete"]


# --- responses --------------------------------------------------------------------------------------


class JobInputOut(Schema):
    template_version_id: uuid.UUID | None = None
    workspace_build_id: uuid.UUID | None = None


class JobOut(Schema):
    id: uuid.UUID
    type: str
    status: str
    error: str
    organization_id: uuid.UUID
    created_at: datetime
    started_at: datetime | None
    canceled_at: datetime | None
    completed_at: datetime | None
    worker_id: uuid.UUID | None
    input: JobInputOut


class MinimalUserOut(Schema):
    id: uuid.UUID
    username: str


class TemplateVersionOut(Schema):
    id: uuid.UUID
    template_id: uuid.UUID | None
    organization_id: uuid.UUID
    name: str
    message: str
    provisioner: str
    created_at: datetime
    updated_at: datetime
    created_by: MinimalUserOut | None
    job: JobOut


class TemplateOut(Schema):
    id: uuid.UUID
    organization_id: uuid.UUID
    name: str
    display_name: str
    description: str
    provisioner: str
    active_version_id: uuid.UUID | None
    created_by_id: uuid.UUID | None
    created_by_name: str
    created_at: datetime
    updated_at: datetime
    deleted: bool


class BuildOut(Schema):
    id: uuid.UUID
    build_number: int
    transition: str
    status: str
    workspace_id: uuid.UUID
    workspace_name: str
    workspace_owner_id: uuid.UUID
    workspace_owner_name: str
    template_version_id: uuid.UUID
    template_version_name: str
    initiator_id: uuid.UUID | None
    initiator_name: str
    created_at: datetime
    updated_at: datetime
    job: JobOut


class WorkspaceOut(Schema):
    id: uuid.UUID
    name: str
    owner_id: uuid.UUID
    owner_name: str
    organization_id: uuid.UUID
    template_id: uuid.UUID
    template_name: str
    template_active_version_id: uuid.UUID | None
    outdated: bool
    created_at: datetime
    updated_at: datetime
    deleted: bool
    latest_build: BuildOut | None


class WorkspacesList(Schema):
    workspaces: list[WorkspaceOut]
    count: int


# --- model -> JSON ---------------------------------------------------------------------------------


def job_json(job: ProvisionerJob, now: datetime | None = None) -> dict[str, Any]:
    data = job.input or {}
    return {
        "id": job.id,
        "type": job.type,
        "status": job.get_status(now or timezone.now()),
        "error": job.error,
        "organization_id": job.organization_id,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "canceled_at": job.canceled_at,
        "completed_at": job.completed_at,
        "worker_id": job.worker_id,
        "input": {
            "template_version_id": data.get("template_version_id"),
            "workspace_build_id": data.get("workspace_build_id"),
        },
    }


def template_version_json(version: TemplateVersion) -> dict[str, Any]:
    creator = version.created_by
    return {
        "id": version.id,
        "template_id": version.template_id,
        "organization_id": version.organization_id,
        "name": version.name,
        "message": version.message,
        "provisioner": version.provisioner,
        "created_at": version.created_at,
        "updated_at": version.updated_at,
        "created_by": {"id": creator.id, "username": creator.username} if creator else None,
        "job": job_json(version.job),
    }


def template_json(template: Template) -> dict[str, Any]:
    creator = template.created_by
    return {
        "id": template.id,
        "organization_id": template.organization_id,
        "name": template.name,
        "display_name": template.display_name,
        "description": template.description,
        "provisioner": template.provisioner,
        "active_version_id": template.active_version_id,
        "created_by_id": template.created_by_id,
        "created_by_name": creator.username if creator else "",
        "created_at": template.created_at,
        "updated_at": template.updated_at,
        "deleted": template.deleted,
    }


def build_json(build: WorkspaceBuild, workspace: Workspace | None = None) -> dict[str, Any]:
    """Needs build.job, .template_version, .initiator and the workspace's owner loaded."""
    ws = workspace or build.workspace
    job = job_json(build.job)
    return {
        "id": build.id,
        "build_number": build.build_number,
        "transition": build.transition,
        "status": job["status"],
        "workspace_id": ws.id,
        "workspace_name": ws.name,
        "workspace_owner_id": ws.owner_id,
        "workspace_owner_name": ws.owner.username,
        "template_version_id": build.template_version_id,
        "template_version_name": build.template_version.name,
        "initiator_id": build.initiator_id,
        "initiator_name": build.initiator.username if build.initiator else "",
        "created_at": build.created_at,
        "updated_at": build.updated_at,
        "job": job,
    }


def workspace_json(ws: Workspace) -> dict[str, Any]:
    latest = ws.latest_build
    return {
        "id": ws.id,
        "name": ws.name,
        "owner_id": ws.owner_id,
        "owner_name": ws.owner.username,
        "organization_id": ws.organization_id,
        "template_id": ws.template_id,
        "template_name": ws.template.name,
        "template_active_version_id": ws.template.active_version_id,
        "outdated": bool(latest and latest.template_version_id != ws.template.active_version_id),
        "created_at": ws.created_at,
        "updated_at": ws.updated_at,
        "deleted": ws.deleted,
        "latest_build": build_json(latest, ws) if latest else None,
    }


# What workspace_json reads, for select_related.
WORKSPACE_RELATED = (
    "owner",
    "template",
    "latest_build__job",
    "latest_build__template_version",
    "latest_build__initiator",
)
BUILD_RELATED = ("job", "template_version", "initiator", "workspace__owner")
