"""Request bodies of templates, versions, workspaces and builds (Coder's names); the response bodies
live in coderd.workspaces.responses and are re-exported here."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, SkipValidation, model_validator

from coderd.decoding import (
    EMPTY_LIST,
    EMPTY_OBJECT,
    EMPTY_STRING,
    ONLY_NULL,
    ZERO_OR_NULL_UUID,
    Request,
    Uuid,
    refuse_unless,
)
from coderd.users.schemas import name_field
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
from coderd.workspaces.services import EchoSource, ShellSource

# --- requests ---------------------------------------------------------------------------------------

# Coder's template version names (template_version_name): letters and digits, single separators.
VERSION_NAME_PATTERN = r"^[a-zA-Z0-9]+(?:[_.-][a-zA-Z0-9]+)*$"
# Validated by services.validate_source against the version's provisioner; typed here for the OpenAPI
# document only, so that its errors name `source.start.duration_ms` rather than a union's branch.
Source = Annotated[EchoSource | ShellSource, SkipValidation]


class ParameterValue(Request):
    name: str
    value: str


def _no_parameters(values: list[ParameterValue], field: str) -> None:
    for index, value in enumerate(values):
        refuse_unless(
            False,
            f"{field}.{index}.name",
            f"The template has no parameter named {value.name!r}: coderd templates take no parameters.",
        )


class CreateTemplateVersionRequest(Request):
    """Coder's CreateTemplateVersionRequest, with coderd's template inline in `source` instead of an
    uploaded file."""

    name: str = Field("", max_length=64, pattern=VERSION_NAME_PATTERN + "|^$")
    message: str = Field("", max_length=1_048_576)
    template_id: Uuid | None = None
    provisioner: Literal["echo", "shell"]
    source: Source = Field(
        description="echo: {start: {duration_ms, logs, fail}, stop, delete}; "
        "shell: {start, stop, delete: scripts, timeout_seconds}."
    )
    storage_method: Literal["file"] | None = Field(
        None, description="Refused: the source is inline.", json_schema_extra=ONLY_NULL
    )
    file_id: Uuid | None = Field(
        None, description="Refused: coderd takes no uploaded files.", json_schema_extra=ZERO_OR_NULL_UUID
    )
    example_id: str = Field(
        "", description="Refused: coderd has no examples.", json_schema_extra=EMPTY_STRING
    )
    tags: dict[str, str] = Field(
        {}, description="Refused unless empty: any daemon takes any job.", json_schema_extra=EMPTY_OBJECT
    )
    user_variable_values: list[ParameterValue] = Field(
        [], description="Refused unless empty.", json_schema_extra=EMPTY_LIST
    )

    @model_validator(mode="after")
    def _supported(self) -> CreateTemplateVersionRequest:
        inline = "coderd takes a template version inline, in `source`"
        refuse_unless(self.storage_method is None, "storage_method", f"{inline}, not as a stored file.")
        refuse_unless(self.file_id is None, "file_id", f"{inline}, not as an uploaded file.")
        refuse_unless(not self.example_id, "example_id", f"{inline}; it has no examples.")
        refuse_unless(not self.tags, "tags", "coderd's daemons take any job of their provisioner: no tags.")
        for index, value in enumerate(self.user_variable_values):
            refuse_unless(
                False,
                f"user_variable_values.{index}.name",
                f"No variable {value.name!r}: templates have none.",
            )
        return self


class CreateTemplateRequest(Request):
    """Coder's CreateTemplateRequest. Scheduling settings are accepted at the values that mean what
    coderd does (no autostop, no dormancy, owners may cancel their builds)."""

    name: str = name_field()
    template_version_id: Uuid
    display_name: str = Field("", max_length=64)
    description: str = Field("", max_length=128)
    icon: str = Field(
        "", description="Refused unless empty: coderd keeps no icons.", json_schema_extra=EMPTY_STRING
    )
    default_ttl_ms: int = Field(0, ge=0, le=0, description="0 only: coderd has no autostop.")
    activity_bump_ms: int = Field(0, ge=0, le=0, description="0 only: coderd has no autostop.")
    failure_ttl_ms: int = Field(0, ge=0, le=0, description="0 only.")
    dormant_ttl_ms: int = Field(0, ge=0, le=0, description="0 only: coderd has no dormancy.")
    delete_ttl_ms: int = Field(0, ge=0, le=0, description="0 only: coderd has no dormancy.")
    allow_user_cancel_workspace_jobs: Literal[True] = Field(True, description="Owners may always cancel.")
    allow_user_autostart: bool = True
    allow_user_autostop: bool = True
    disable_everyone_group_access: Literal[False] = Field(False, description="coderd has no groups.")
    require_active_version: bool = Field(False, description="Builds always use the active version.")
    autostop_requirement: dict[str, Any] = Field(
        {},
        description="Refused unless it requires nothing.",
        json_schema_extra={"properties": {"days_of_week": {"type": "array", "maxItems": 0}}},
    )

    @model_validator(mode="after")
    def _supported(self) -> CreateTemplateRequest:
        refuse_unless(not self.icon, "icon", "coderd keeps no template icons.")
        days = self.autostop_requirement.get("days_of_week") or []
        refuse_unless(not days, "autostop_requirement", "coderd has no autostop: no days can be required.")
        return self


class UpdateActiveVersionRequest(Request):
    id: Uuid


class CreateWorkspaceRequest(Request):
    """Coder's CreateWorkspaceRequest: `template_id`, or `template_version_id` (the template's active
    version: coderd builds nothing else)."""

    template_id: Uuid | None = None
    template_version_id: Uuid | None = None
    name: str = name_field()
    autostart_schedule: str = Field(
        "", description="Refused unless empty: coderd has no autostart.", json_schema_extra=EMPTY_STRING
    )
    ttl_ms: int = Field(0, ge=0, le=0, description="0 only: coderd has no autostop.")
    rich_parameter_values: list[ParameterValue] = Field(
        [], description="Refused: no parameters.", json_schema_extra=EMPTY_LIST
    )
    automatic_updates: Literal["", "always"] = Field(
        "", description="Builds always use the template's active version (Coder's `always`)."
    )
    template_version_preset_id: Uuid | None = Field(
        None, description="Refused: coderd has no presets.", json_schema_extra=ZERO_OR_NULL_UUID
    )

    @model_validator(mode="after")
    def _supported(self) -> CreateWorkspaceRequest:
        refuse_unless(not self.autostart_schedule, "autostart_schedule", "coderd has no autostart.")
        _no_parameters(self.rich_parameter_values, "rich_parameter_values")
        refuse_unless(self.template_version_preset_id is None, "template_version_preset_id", "No presets.")
        refuse_unless(
            (self.template_id is None) != (self.template_version_id is None),
            "template_id",
            "Give exactly one of template_id and template_version_id.",
        )
        return self


class CreateBuildRequest(Request):
    """Coder's CreateWorkspaceBuildRequest."""

    transition: Literal["start", "stop", "delete"]
    template_version_id: Uuid | None = Field(None, description="The template's active version only.")
    template_version_preset_id: Uuid | None = Field(
        None, description="Refused: coderd has no presets.", json_schema_extra=ZERO_OR_NULL_UUID
    )
    dry_run: Literal[False] = Field(False, description="coderd has no dry runs.")
    state: str = Field(
        "",
        description="Refused unless empty: coderd keeps no provisioner state.",
        json_schema_extra=EMPTY_STRING,
    )
    orphan: Literal[False] = Field(False, description="A delete always runs the template's delete.")
    rich_parameter_values: list[ParameterValue] = Field(
        [], description="Refused: no parameters.", json_schema_extra=EMPTY_LIST
    )
    log_level: Literal["", "debug"] = ""
    reason: str = Field("", description="Where the build was asked from; read, not kept.")

    @model_validator(mode="after")
    def _supported(self) -> CreateBuildRequest:
        refuse_unless(self.template_version_preset_id is None, "template_version_preset_id", "No presets.")
        refuse_unless(not self.state, "state", "coderd keeps no provisioner state.")
        _no_parameters(self.rich_parameter_values, "rich_parameter_values")
        return self
