"""Provisioner jobs, daemons and job logs under /api/v2 (Coder's paths).

The logs endpoints here answer with a JSON list; following a running job's logs is the websocket
route of the same path (`?follow`), served by the provisioner's consumers.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from django.db.models import Q
from django.http import HttpRequest
from django.utils import timezone
from ninja import Query, Router, Schema
from pydantic import Field

from coderd.errors import BadRequest, Forbidden, NotFound
from coderd.pagination import Page
from coderd.users import auth
from coderd.users.api import ERRORS, actor, visible_organization
from coderd.workspaces.api import get_build, get_template_version
from coderd.workspaces.responses import queue_positions
from coderd.workspaces.schemas import JobOut, LogOut, job_json
from provisioner.models import JobStatus, ProvisionerDaemon, ProvisionerJob, ProvisionerJobLog
from provisioner.queue import log_json

router = Router(tags=["Provisioner"])
# A daemon not seen for this long is listed as offline (Coder shows the same from last_seen_at).
DAEMON_OFFLINE_AFTER_SECONDS = 60


class DaemonJobOut(Schema):
    id: uuid.UUID
    status: str


class DaemonOut(Schema):
    id: uuid.UUID
    organization_id: uuid.UUID | None
    name: str
    provisioners: list[str]
    external: bool
    version: str
    created_at: datetime
    last_seen_at: datetime | None
    status: str
    current_job: DaemonJobOut | None


_STATUS_LIST = "^(?:{0})(?:,(?:{0}))*$".format("|".join(JobStatus.values))


class JobFilter(Schema):
    status: list[str] = Field(
        [],
        description="Only jobs with these statuses (repeat or comma-separate).",
        json_schema_extra={"items": {"type": "string", "pattern": _STATUS_LIST}},
    )


class LogFilter(Schema):
    after: int = Field(0, ge=0, le=2**63 - 1, description="Only log lines with a larger id.")


def _require_provisioner_reader(request: HttpRequest) -> None:
    if not auth.can_read_provisioners(actor(request)):
        raise Forbidden("Only owners, template admins and auditors can see provisioner jobs and daemons.")


def _statuses(values: list[str]) -> list[str]:
    statuses = [s.strip() for v in values for s in v.split(",") if s.strip()]
    bad = [s for s in statuses if s not in JobStatus.values]
    if bad:
        raise BadRequest(
            "Invalid job status filter.",
            validations=[{"field": "status", "detail": f"Must be among: {', '.join(JobStatus.values)}."}],
        )
    return statuses


@router.get(
    "/organizations/{organization}/provisionerjobs",
    response={200: list[JobOut], **ERRORS},
    summary="List provisioner jobs, newest first",
)
def list_jobs(request: HttpRequest, organization: str, filters: Query[JobFilter], page: Query[Page]) -> Any:
    org = visible_organization(request, organization)
    _require_provisioner_reader(request)
    now = timezone.now()
    jobs = ProvisionerJob.objects.select_related("worker").filter(organization=org)
    statuses = _statuses(filters.status)
    if statuses:
        jobs = jobs.with_status(now).filter(computed_status__in=statuses)
    jobs = jobs.order_by("-created_at", "-id")
    rows = list(page.apply(jobs))
    queue = queue_positions(rows, now)
    return [job_json(j, now, queue=queue) for j in rows]


@router.get(
    "/organizations/{organization}/provisionerjobs/{uuid:job}",
    response={200: JobOut, **ERRORS},
    summary="Get provisioner job",
)
def get_job(request: HttpRequest, organization: str, job: uuid.UUID) -> Any:
    org = visible_organization(request, organization)
    _require_provisioner_reader(request)
    found = ProvisionerJob.objects.filter(organization=org, pk=job).first()
    if found is None:
        raise NotFound("Provisioner job not found.")
    return job_json(found)


@router.get(
    "/organizations/{organization}/provisionerdaemons",
    response={200: list[DaemonOut], **ERRORS},
    summary="List provisioner daemons",
)
def list_daemons(request: HttpRequest, organization: str, page: Query[Page]) -> Any:
    org = visible_organization(request, organization)
    _require_provisioner_reader(request)
    now = timezone.now()
    # In-process daemons have no organization: they serve every one.
    daemons = (
        ProvisionerDaemon.objects.select_related("current_job")
        .filter(Q(organization=org) | Q(organization__isnull=True))
        .order_by("name", "id")
    )
    result = []
    for d in page.apply(daemons):
        online = (
            d.stopped_at is None
            and d.last_seen_at is not None
            and (now - d.last_seen_at).total_seconds() < DAEMON_OFFLINE_AFTER_SECONDS
        )
        job = d.current_job
        result.append(
            {
                "id": d.id,
                "organization_id": d.organization_id,
                "name": d.name,
                "provisioners": d.provisioners,
                "external": d.external,
                "version": d.version,
                "created_at": d.created_at,
                "last_seen_at": d.last_seen_at,
                "status": ("busy" if job else "idle") if online else "offline",
                "current_job": {"id": job.id, "status": job.get_status(now)} if job else None,
            }
        )
    return result


def _logs(job_id: Any, after: int) -> list[dict[str, Any]]:
    lines = ProvisionerJobLog.objects.filter(job_id=job_id, id__gt=after).order_by("id")
    return [log_json(line) for line in lines]


@router.get(
    "/workspacebuilds/{uuid:workspacebuild}/logs",
    response={200: list[LogOut], **ERRORS},
    tags=["Builds"],
    summary="Logs of a workspace build (a websocket with ?follow)",
)
def build_logs(request: HttpRequest, workspacebuild: uuid.UUID, filters: Query[LogFilter]) -> Any:
    build = get_build(request, workspacebuild)
    return _logs(build.job_id, filters.after)


@router.get(
    "/templateversions/{uuid:templateversion}/logs",
    response={200: list[LogOut], **ERRORS},
    tags=["Templates"],
    summary="Logs of a template version's import job",
)
def template_version_logs(request: HttpRequest, templateversion: uuid.UUID, filters: Query[LogFilter]) -> Any:
    version = get_template_version(request, templateversion)
    return _logs(version.job_id, filters.after)
