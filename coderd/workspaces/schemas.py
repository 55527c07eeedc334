"""Request bodies of templates, versions, workspaces and builds (Coder's names); the response bodies
live in coderd.workspaces.responses and are re-exported here."""

from __future__ import annotations

import uuid
from typing import Any, Literal

from pydantic import Field

from coderd.users.schemas import Request
from coderd.workspaces.responses import BUILD_RELATED as BUILD_RELATED
from coderd.workspaces.responses import TEMPLATE_RELATED as TEMPLATE_RELATED
from coderd.workspaces.responses import VERSION_RELATED as VERSION_RELATED
from coderd.workspaces.responses import WORKSPACE_RELATED as WORKSPACE_RELATED
from coderd.workspaces.responses import BuildOut as BuildOut
from coderd.workspaces.responses import JobOut as JobOut
from coderd.workspaces.responses import LogOut as LogOut
from coderd.workspaces.responses import TemplateOut as TemplateOut
from coderd.workspaces.responses import TemplateVersionOut as TemplateVersionOut
from coderd.workspaces.responses import WorkspaceOut as WorkspaceOut
from coderd.workspaces.responses import WorkspacesList as WorkspacesList
from coderd.workspaces.responses import build_json as build_json
from coderd.workspaces.responses import job_json as job_json
from coderd.workspaces.responses import template_json as template_json
from coderd.workspaces.responses import template_version_json as template_version_json
from coderd.workspaces.responses import workspace_json as workspace_json

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
