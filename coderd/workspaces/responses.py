"""Response bodies of templates, versions, workspaces, builds, jobs and job logs: Coder's structs.

Each schema carries every field of its `codersdk` struct with Coder's name, JSON type and meaning
(`Template`, `TemplateVersion`, `Workspace`, `WorkspaceBuild`, `ProvisionerJob`,
`ProvisionerJobLog`), and a few of our own besides (a template's `provisioner` names ours, a
workspace says whether it is `deleted`). Where coderd has no such concept (agents, schedules, icons,
costs), the field holds what Coder sends for the equivalent state; see coderd.shapes.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any, Literal

from django.db.models import Count, Q
from django.utils import timezone
from ninja import Schema
from pydantic import Field

from coderd.shapes import ZERO_UUID, or_zero_uuid
from coderd.workspaces.models import Template, TemplateVersion, Workspace, WorkspaceBuild
from coderd.workspaces.status import WorkspaceStatus, workspace_status
from provisioner.models import JobStatus, JobType, ProvisionerJob

JobStatusName = Literal["pending", "running", "succeeded", "canceling", "canceled", "failed"]
WorkspaceStatusName = Literal[
    "pending",
    "starting",
    "running",
    "stopping",
    "stopped",
    "failed",
    "canceling",
    "canceled",
    "deleting",
    "deleted",
]
TransitionName = Literal["start", "stop", "delete"]

# Coder's tags for a job any daemon of the organization may take (ours all are).
DEFAULT_JOB_TAGS = {"scope": "organization", "owner": ""}
# Coder's template build time statistics cover the builds of the last 30 days (metricscache).
BUILD_TIME_WINDOW = timedelta(days=30)
BUILD_TIME_SAMPLE = 500


# --- schemas ----------------------------------------------------------------------------------------


class JobInputOut(Schema):
    template_version_id: uuid.UUID | None = None
    workspace_build_id: uuid.UUID | None = None
    error: str = ""


class JobMetadataOut(Schema):
    template_version_name: str
    template_id: uuid.UUID
    template_name: str
    template_display_name: str
    template_icon: str
    workspace_id: uuid.UUID | None = None
    workspace_name: str = ""


class JobOut(Schema):
    """Coder's `codersdk.ProvisionerJob`: `status` is the job's own (succeeded, not running)."""

    id: uuid.UUID
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    canceled_at: datetime | None
    error: str
    error_code: str
    status: JobStatusName
    worker_id: uuid.UUID | None
    worker_name: str
    file_id: uuid.UUID
    tags: dict[str, str]
    queue_position: int = Field(description="1 for the next job a daemon takes; 0 once it is taken.")
    queue_size: int
    organization_id: uuid.UUID
    initiator_id: uuid.UUID
    input: JobInputOut
    type: Literal["template_version_import", "workspace_build", "template_version_dry_run"]
    metadata: JobMetadataOut
    logs_overflowed: bool


class LogOut(Schema):
    """Coder's `codersdk.ProvisionerJobLog`."""

    id: int
    created_at: datetime
    log_source: Literal["provisioner_daemon", "provisioner"]
    log_level: Literal["trace", "debug", "info", "warn", "error"]
    stage: str
    output: str


class MinimalUserOut(Schema):
    id: uuid.UUID
    username: str
    name: str
    avatar_url: str


class TemplateVersionOut(Schema):
    """Coder's `codersdk.TemplateVersion`."""

    id: uuid.UUID
    template_id: uuid.UUID | None
    organization_id: uuid.UUID
    created_at: datetime
    updated_at: datetime
    name: str
    message: str
    job: JobOut
    readme: str
    created_by: MinimalUserOut
    archived: bool
    warnings: list[str]
    has_external_agent: bool
    provisioner: Literal["echo", "shell"]


class TransitionStatsOut(Schema):
    P50: int | None = Field(description="Median build time in milliseconds; null with no builds.")
    P95: int | None


class BuildTimeStatsOut(Schema):
    start: TransitionStatsOut
    stop: TransitionStatsOut
    delete: TransitionStatsOut


class AutostopRequirementOut(Schema):
    days_of_week: list[str]
    weeks: int


class AutostartRequirementOut(Schema):
    days_of_week: list[str]


class TemplateOut(Schema):
    """Coder's `codersdk.Template`."""

    id: uuid.UUID
    created_at: datetime
    updated_at: datetime
    organization_id: uuid.UUID
    organization_name: str
    organization_display_name: str
    organization_icon: str
    name: str
    display_name: str
    provisioner: Literal["echo", "shell"]
    active_version_id: uuid.UUID
    active_user_count: int = Field(description="Users with a live workspace of this template.")
    build_time_stats: BuildTimeStatsOut
    description: str
    deprecated: bool
    deprecation_message: str
    icon: str
    default_ttl_ms: int
    activity_bump_ms: int
    autostop_requirement: AutostopRequirementOut
    autostart_requirement: AutostartRequirementOut
    created_by_id: uuid.UUID
    created_by_name: str
    allow_user_autostart: bool
    allow_user_autostop: bool
    allow_user_cancel_workspace_jobs: bool
    failure_ttl_ms: int
    time_til_dormant_ms: int
    time_til_dormant_autodelete_ms: int
    require_active_version: bool
    max_port_share_level: str
    cors_behavior: str
    use_classic_parameter_flow: bool
    deleted: bool


class BuildOut(Schema):
    """Coder's `codersdk.WorkspaceBuild`: `status` is the workspace status this build leaves."""

    id: uuid.UUID
    created_at: datetime
    updated_at: datetime
    workspace_id: uuid.UUID
    workspace_name: str
    workspace_owner_id: uuid.UUID
    workspace_owner_name: str
    workspace_owner_avatar_url: str
    template_version_id: uuid.UUID
    template_version_name: str
    build_number: int
    transition: TransitionName
    initiator_id: uuid.UUID
    initiator_name: str
    job: JobOut
    reason: Literal["initiator", "autostart", "autostop"]
    resources: list[dict[str, Any]]
    deadline: datetime | None = Field(description="When autostop stops it: coderd has no autostop.")
    max_deadline: datetime | None
    status: WorkspaceStatusName
    daily_cost: int
    template_version_preset_id: uuid.UUID | None
    has_ai_task: bool


class WorkspaceHealthOut(Schema):
    healthy: bool
    failing_agents: list[uuid.UUID]


class WorkspaceOut(Schema):
    """Coder's `codersdk.Workspace`."""

    id: uuid.UUID
    created_at: datetime
    updated_at: datetime
    owner_id: uuid.UUID
    owner_name: str
    owner_avatar_url: str
    organization_id: uuid.UUID
    organization_name: str
    template_id: uuid.UUID
    template_name: str
    template_display_name: str
    template_icon: str
    template_allow_user_cancel_workspace_jobs: bool
    template_active_version_id: uuid.UUID
    template_require_active_version: bool
    template_use_classic_parameter_flow: bool
    latest_build: BuildOut
    latest_app_status: dict[str, Any] | None
    outdated: bool
    name: str
    autostart_schedule: str | None
    ttl_ms: int | None
    last_used_at: datetime = Field(description="When its latest build was asked for.")
    deleting_at: datetime | None
    dormant_at: datetime | None
    health: WorkspaceHealthOut
    automatic_updates: Literal["always", "never"]
    allow_renames: bool
    favorite: bool
    next_start_at: datetime | None
    is_prebuild: bool
    task_id: uuid.UUID | None
    deleted: bool


class WorkspacesList(Schema):
    workspaces: list[WorkspaceOut]
    count: int


# --- model -> JSON ---------------------------------------------------------------------------------


def _queue(job: ProvisionerJob, status: str) -> tuple[int, int]:
    """(position, size) of a pending job in the queue daemons take from, oldest first, as Coder's."""
    if status != JobStatus.PENDING:
        return 0, 0
    counts = ProvisionerJob.objects.pending().aggregate(
        size=Count("id"), ahead=Count("id", filter=Q(created_at__lte=job.created_at))
    )
    return counts["ahead"], counts["size"]


# (position, size) by job id, for the pending jobs of a list (queue_positions).
Queue = dict[Any, tuple[int, int]]


def queue_positions(jobs: Iterable[ProvisionerJob], now: datetime) -> Queue:
    """`_queue` for every pending job of a list in one query, whatever their number: a list renders
    in a fixed number of queries (one per pending job before)."""
    return queue_positions_for(
        [(job.id, job.created_at) for job in jobs if job.get_status(now) == JobStatus.PENDING]
    )


def queue_positions_for(pending: list[tuple[Any, datetime]]) -> Queue:
    """The same from (key, created_at) of the pending jobs alone: one query, none if there are none."""
    if not pending:
        return {}
    ahead = {
        f"ahead_{i}": Count("id", filter=Q(created_at__lte=created)) for i, (_, created) in enumerate(pending)
    }
    counts = ProvisionerJob.objects.pending().aggregate(size=Count("id"), **ahead)
    return {key: (counts[f"ahead_{i}"], counts["size"]) for i, (key, _) in enumerate(pending)}


def job_json(
    job: ProvisionerJob,
    now: datetime | None = None,
    template: Template | None = None,
    queue: Queue | None = None,
) -> dict[str, Any]:
    """`template`, when the caller has it, fills the metadata the job's input does not carry; `queue`,
    from queue_positions() over a whole list, saves a query per pending job."""
    data = job.input or {}
    status = job.get_status(now or timezone.now())
    position, size = queue.get(job.id, (0, 0)) if queue is not None else _queue(job, status)
    worker = job.worker if job.worker_id else None
    return {
        "id": job.id,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "completed_at": job.completed_at,
        "canceled_at": job.canceled_at,
        "error": job.error,
        "error_code": "",
        "status": status,
        "worker_id": job.worker_id,
        "worker_name": worker.name if worker else "",
        "file_id": ZERO_UUID,
        "tags": DEFAULT_JOB_TAGS,
        "queue_position": position,
        "queue_size": size,
        "organization_id": job.organization_id,
        "initiator_id": or_zero_uuid(job.initiator_id),
        "input": {
            "template_version_id": data.get("template_version_id"),
            "workspace_build_id": data.get("workspace_build_id"),
            "error": "",
        },
        "type": job.type,
        "metadata": {
            "template_version_name": data.get("template_version_name", ""),
            "template_id": template.id if template else or_zero_uuid(data.get("template_id")),
            "template_name": template.name if template else data.get("template_name", ""),
            "template_display_name": template.display_name if template else "",
            "template_icon": "",
            "workspace_id": data.get("workspace_id") if job.type == JobType.WORKSPACE_BUILD else None,
            "workspace_name": data.get("workspace_name", ""),
        },
        "logs_overflowed": False,
    }


def _minimal_user(user: Any) -> dict[str, Any]:
    if user is None:  # Coder sends an empty MinimalUser for a creator it cannot find
        return {"id": ZERO_UUID, "username": "", "name": "", "avatar_url": ""}
    return {"id": user.id, "username": user.username, "name": user.name, "avatar_url": ""}


def template_version_json(version: TemplateVersion) -> dict[str, Any]:
    return {
        "id": version.id,
        "template_id": version.template_id,
        "organization_id": version.organization_id,
        "created_at": version.created_at,
        "updated_at": version.updated_at,
        "name": version.name,
        "message": version.message,
        "job": job_json(version.job, template=version.template),
        "readme": "",
        "created_by": _minimal_user(version.created_by),
        "archived": False,
        "warnings": [],
        "has_external_agent": False,
        "provisioner": version.provisioner,
    }


def _percentile(values: list[float], fraction: float) -> int | None:
    """PostgreSQL's percentile_disc, in whole milliseconds as Coder reports it."""
    if not values:
        return None
    ordered = sorted(values)
    return int(ordered[max(math.ceil(fraction * len(ordered)) - 1, 0)] * 1000)


def build_time_stats(template: Template, now: datetime | None = None) -> dict[str, Any]:
    """P50/P95 of how long the template's builds that succeeded in the last 30 days ran (Coder's
    GetTemplateAverageBuildTime), per transition; null for a transition with none."""
    since = (now or timezone.now()) - BUILD_TIME_WINDOW
    rows = (
        WorkspaceBuild.objects.filter(
            template_version__template_id=template.pk,
            job__started_at__gt=since,
            job__completed_at__isnull=False,
            job__canceled_at__isnull=True,
            job__error="",
        )
        .order_by("-created_at")
        .values_list("transition", "job__started_at", "job__completed_at")[:BUILD_TIME_SAMPLE]
    )
    seconds: dict[str, list[float]] = {"start": [], "stop": [], "delete": []}
    for transition, started, completed in rows:
        seconds.setdefault(transition, []).append((completed - started).total_seconds())
    return {t: {"P50": _percentile(v, 0.5), "P95": _percentile(v, 0.95)} for t, v in seconds.items()}


def _active_user_count(template: Template) -> int:
    annotated = getattr(template, "active_user_count", None)
    if annotated is not None:
        return annotated
    return template.workspaces.filter(deleted=False).values("owner_id").distinct().count()


def with_active_user_count(templates: Any) -> Any:
    """A template queryset annotated with what template_json reports as `active_user_count`."""
    return templates.annotate(
        active_user_count=Count("workspaces__owner", filter=Q(workspaces__deleted=False), distinct=True)
    )


ALL_DAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]


def template_json(template: Template) -> dict[str, Any]:
    """Needs template.organization and .created_by loaded (TEMPLATE_RELATED)."""
    creator = template.created_by
    org = template.organization
    return {
        "id": template.id,
        "created_at": template.created_at,
        "updated_at": template.updated_at,
        "organization_id": template.organization_id,
        "organization_name": org.name,
        "organization_display_name": org.display_name,
        "organization_icon": "",
        "name": template.name,
        "display_name": template.display_name,
        "provisioner": template.provisioner,
        "active_version_id": or_zero_uuid(template.active_version_id),
        "active_user_count": _active_user_count(template),
        "build_time_stats": build_time_stats(template),
        "description": template.description,
        "deprecated": False,
        "deprecation_message": "",
        "icon": "",
        # No autostop, no activity bump, no dormancy: Coder's zeros for "off".
        "default_ttl_ms": 0,
        "activity_bump_ms": 0,
        "autostop_requirement": {"days_of_week": [], "weeks": 1},
        "autostart_requirement": {"days_of_week": ALL_DAYS},
        "created_by_id": or_zero_uuid(template.created_by_id),
        "created_by_name": creator.username if creator else "",
        "allow_user_autostart": True,
        "allow_user_autostop": True,
        # A workspace's owner may cancel its builds (services.cancel_build).
        "allow_user_cancel_workspace_jobs": True,
        "failure_ttl_ms": 0,
        "time_til_dormant_ms": 0,
        "time_til_dormant_autodelete_ms": 0,
        "require_active_version": True,  # builds always use the active version
        "max_port_share_level": "owner",
        "cors_behavior": "simple",
        "use_classic_parameter_flow": False,
        "deleted": template.deleted,
    }


def build_json(
    build: WorkspaceBuild,
    workspace: Workspace | None = None,
    queue: Queue | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Needs build.job (and its worker), .template_version, .initiator and the workspace's owner and
    template loaded (BUILD_RELATED)."""
    ws = workspace or build.workspace
    job = job_json(build.job, now, template=ws.template, queue=queue)
    initiator = build.initiator
    return {
        "id": build.id,
        "created_at": build.created_at,
        "updated_at": build.updated_at,
        "workspace_id": ws.id,
        "workspace_name": ws.name,
        "workspace_owner_id": ws.owner_id,
        "workspace_owner_name": ws.owner.username,
        "workspace_owner_avatar_url": "",
        "template_version_id": build.template_version_id,
        "template_version_name": build.template_version.name,
        "build_number": build.build_number,
        "transition": build.transition,
        "initiator_id": or_zero_uuid(build.initiator_id),
        "initiator_name": initiator.username if initiator else "",
        "job": job,
        # Every build is asked for by someone: coderd has no autostart or autostop.
        "reason": "initiator",
        "resources": [],
        "deadline": None,
        "max_deadline": None,
        "status": workspace_status(build.transition, job["status"]).value,
        "daily_cost": 0,
        "template_version_preset_id": None,
        "has_ai_task": False,
    }


def workspace_json(ws: Workspace, queue: Queue | None = None, now: datetime | None = None) -> dict[str, Any]:
    """Needs what WORKSPACE_RELATED loads."""
    latest = ws.latest_build
    template = ws.template
    build = build_json(latest, ws, queue, now) if latest else None
    return {
        "id": ws.id,
        "created_at": ws.created_at,
        "updated_at": ws.updated_at,
        "owner_id": ws.owner_id,
        "owner_name": ws.owner.username,
        "owner_avatar_url": "",
        "organization_id": ws.organization_id,
        "organization_name": ws.organization.name,
        "template_id": ws.template_id,
        "template_name": template.name,
        "template_display_name": template.display_name,
        "template_icon": "",
        "template_allow_user_cancel_workspace_jobs": True,
        "template_active_version_id": or_zero_uuid(template.active_version_id),
        "template_require_active_version": True,
        "template_use_classic_parameter_flow": False,
        "latest_build": build,
        "latest_app_status": None,
        "outdated": bool(latest and latest.template_version_id != template.active_version_id),
        "name": ws.name,
        "autostart_schedule": None,
        "ttl_ms": None,
        # Someone last used it when they last asked for a build (coderd has no agents to report use).
        "last_used_at": latest.created_at if latest else ws.created_at,
        "deleting_at": None,
        "dormant_at": None,
        "health": {"healthy": True, "failing_agents": []},
        "automatic_updates": "always",  # every build takes the template's active version
        "allow_renames": False,
        "favorite": False,
        "next_start_at": None,
        "is_prebuild": False,
        "task_id": None,
        "deleted": ws.deleted,
    }


# What the renderers read, for select_related.
TEMPLATE_RELATED = ("organization", "created_by")
WORKSPACE_RELATED = (
    "owner",
    "organization",
    "template",
    "latest_build__job__worker",
    "latest_build__template_version",
    "latest_build__initiator",
)
# The columns workspace_json reads, for lists (`.select_related(*WORKSPACE_RELATED).only(...)`): the
# joined users, jobs and templates have many more, each converted for every row (a list of 50 read
# ~450 instances' worth). A column missing here is loaded row by row: the list's query-count test
# (tests/test_api_lean_reads.py) fails then.
WORKSPACE_LIST_ONLY = (
    *(
        "id",
        "created_at",
        "updated_at",
        "owner",
        "organization",
        "template",
        "name",
        "deleted",
        "latest_build",
    ),
    *("owner__id", "owner__username", "organization__id", "organization__name"),
    *("template__id", "template__name", "template__display_name", "template__active_version_id"),
    *(f"latest_build__{f}" for f in ("id", "created_at", "updated_at", "build_number", "transition")),
    *(f"latest_build__{f}" for f in ("template_version", "initiator", "job")),
    *("latest_build__template_version__id", "latest_build__template_version__name"),
    *("latest_build__initiator__id", "latest_build__initiator__username"),
    *(
        f"latest_build__job__{f}"
        for f in (
            *("id", "created_at", "updated_at", "started_at", "completed_at", "canceled_at", "error"),
            *("worker", "organization", "initiator", "input", "type"),
        )
    ),
    *("latest_build__job__worker__id", "latest_build__job__worker__name"),
)
BUILD_RELATED = (
    "job__worker",
    "template_version",
    "initiator",
    "workspace__owner",
    "workspace__template",
)
VERSION_RELATED = ("job__worker", "created_by", "template")

__all__ = [
    "BUILD_RELATED",
    "TEMPLATE_RELATED",
    "VERSION_RELATED",
    "WORKSPACE_LIST_ONLY",
    "WORKSPACE_RELATED",
    "BuildOut",
    "JobOut",
    "LogOut",
    "TemplateOut",
    "TemplateVersionOut",
    "WorkspaceOut",
    "WorkspaceStatus",
    "WorkspacesList",
    "build_json",
    "job_json",
    "queue_positions",
    "queue_positions_for",
    "template_json",
    "template_version_json",
    "with_active_user_count",
    "workspace_json",
]
