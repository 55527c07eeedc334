"""The job queue: claim, heartbeat, logs, finish. The only writers of a running job's state.

Each step is a conditional write, so a job is taken by exactly one daemon and ended exactly once,
whatever the number of daemons, reapers and cancels racing for it (Coder's AcquireProvisionerJob,
healthchecks' `Flip` claim). Times come in as arguments so that tests move the clock.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from django.db import connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from provisioner import notify
from provisioner.execution import CANCELED, GONE, RUNNING, LogLine, iso
from provisioner.models import (
    HEARTBEAT_STALE_AFTER,
    JobType,
    ProvisionerDaemon,
    ProvisionerJob,
    ProvisionerJobLog,
)
from provisioner.runners import JobSpec

log = logging.getLogger(__name__)

# A claim that loses a race (another daemon took the same job first) looks again, this many times.
CLAIM_ATTEMPTS = 20


# --- daemons -------------------------------------------------------------------------------------


def register_daemon(
    name: str,
    provisioners: list[str],
    now: datetime,
    *,
    external: bool = False,
    organization_id: Any = None,
    version: str = "",
) -> ProvisionerDaemon:
    """A daemon's row: one of the same name that stopped (cleanly, or silent since
    HEARTBEAT_STALE_AFTER) is taken over (a restart), else a new one.

    Two live daemons may share a name (two server processes on one host): each keeps its own row.
    In-process daemons have no organization (they serve every one); external ones have theirs.
    """
    fields = {
        "provisioners": list(provisioners),
        "organization_id": organization_id,
        "version": version,
        "current_job": None,
        "last_seen_at": now,
        "stopped_at": None,
    }
    dead = ProvisionerDaemon.objects.filter(name=name, external=external).filter(
        Q(stopped_at__isnull=False)
        | Q(last_seen_at__isnull=True)
        | Q(last_seen_at__lt=now - HEARTBEAT_STALE_AFTER)
    )
    # A cleanly stopped row first (a restart within seconds), then the one silent the longest.
    for row in dead.order_by(F("stopped_at").desc(nulls_last=True), "last_seen_at")[:5]:
        # Conditional on the old values: of two starters racing for one dead row, one wins.
        taken = ProvisionerDaemon.objects.filter(
            id=row.id, last_seen_at=row.last_seen_at, stopped_at=row.stopped_at
        ).update(**fields)
        if taken:
            row.refresh_from_db()
            return row
    return ProvisionerDaemon.objects.create(name=name, external=external, **fields)


def daemon_seen(daemon_id: Any, now: datetime) -> None:
    ProvisionerDaemon.objects.filter(id=daemon_id).update(last_seen_at=now)


def daemon_gone(daemon_id: Any, now: datetime | None = None) -> None:
    """A daemon that stops cleanly says so: it holds no job, it is offline from now, and its row is
    the one its successor under the same name takes over."""
    ProvisionerDaemon.objects.filter(id=daemon_id).update(current_job=None, stopped_at=now or timezone.now())


def forget_silent_daemons(now: datetime, after: timedelta) -> int:
    """Remove the rows of daemons not seen for `after` (the reaper, daily-ish): a host renamed or
    retired leaves no row forever. Their jobs keep their history (`worker` is set to NULL)."""
    silent = ProvisionerDaemon.objects.filter(
        Q(last_seen_at__lt=now - after) | Q(last_seen_at__isnull=True, created_at__lt=now - after)
    )
    deleted, _ = silent.delete()
    return deleted


# --- claim ---------------------------------------------------------------------------------------


def _candidates(provisioners: list[str]):
    return ProvisionerJob.objects.pending().filter(provisioner__in=provisioners).order_by("created_at", "id")


def claim(daemon_id: Any, provisioners: list[str], now: datetime) -> ProvisionerJob | None:
    """Take the oldest pending job one of `provisioners` can run, or None. Atomic on every backend."""
    if not provisioners:
        return None
    if connection.features.has_select_for_update_skip_locked:
        job = _claim_skip_locked(daemon_id, provisioners, now)
    else:
        job = _claim_conditional(daemon_id, provisioners, now)
    if job is None:
        return None
    ProvisionerDaemon.objects.filter(id=daemon_id).update(current_job=job.id, last_seen_at=now)
    notify.job_changed(job.id, _workspace_id(job.id))
    return job


def _claim_skip_locked(daemon_id: Any, provisioners: list[str], now: datetime) -> ProvisionerJob | None:
    # PostgreSQL: rows another claimer holds are skipped, not waited for; the row we lock is ours.
    with transaction.atomic():
        job = _candidates(provisioners).select_for_update(skip_locked=True).first()
        if job is None:
            return None
        ProvisionerJob.objects.filter(id=job.id).update(started_at=now, updated_at=now, worker_id=daemon_id)
        job.started_at = job.updated_at = now
        job.worker_id = daemon_id
        return job


def _claim_conditional(daemon_id: Any, provisioners: list[str], now: datetime) -> ProvisionerJob | None:
    # SQLite has no row locks: the UPDATE repeats the "still pending" test and must change one row.
    for _ in range(CLAIM_ATTEMPTS):
        job_id = _candidates(provisioners).values_list("id", flat=True).first()
        if job_id is None:
            return None
        taken = ProvisionerJob.objects.filter(
            id=job_id, started_at__isnull=True, canceled_at__isnull=True
        ).update(started_at=now, updated_at=now, worker_id=daemon_id)
        if taken == 1:
            return ProvisionerJob.objects.get(id=job_id)
    return None


def report_acquired(observer: Any, job: ProvisionerJob, spec: JobSpec, now: datetime) -> None:
    """Tell `observer` how long a job just claimed waited (Coder's AcquireJob observes its queue
    wait, by provisioner, job type, transition and build reason). Never raises: a metric must not
    lose a claimed job."""
    # Every build here is started by a person or a client: Coder's reason "initiator".
    transition, reason = (spec.transition, "initiator") if spec.is_build else ("", "")
    try:
        observer.job_acquired(
            job.provisioner, job.type, transition, reason, (now - job.created_at).total_seconds()
        )
    except Exception:
        log.exception("observer job_acquired failed")


def _workspace_id(job_id: Any) -> Any:
    from coderd.workspaces.models import WorkspaceBuild

    return WorkspaceBuild.objects.filter(job_id=job_id).values_list("workspace_id", flat=True).first()


def job_spec(job: ProvisionerJob) -> JobSpec:
    """What the provisioner needs, read from the build or template version the job is for."""
    from coderd.workspaces.models import TemplateVersion, WorkspaceBuild

    data: dict[str, Any] = {
        **{k: v for k, v in (job.input or {}).items() if isinstance(k, str)},
        "job_id": str(job.id),
        "type": job.type,
        "provisioner": job.provisioner,
    }
    # The services' input names two fields differently; the rows below win when they exist.
    data.setdefault("template_version", data.get("template_version_name", ""))
    data.setdefault("build_id", data.get("workspace_build_id", ""))
    if job.type == JobType.WORKSPACE_BUILD:
        build = (
            WorkspaceBuild.objects.select_related(
                "workspace__owner", "workspace__template", "template_version"
            )
            .filter(job_id=job.id)
            .first()
        )
        if build is not None:
            ws, version = build.workspace, build.template_version
            data.update(
                source=version.source,
                transition=build.transition,
                build_id=str(build.id),
                build_number=build.build_number,
                workspace_id=str(ws.id),
                workspace_name=ws.name,
                workspace_owner=ws.owner.username,
                workspace_owner_email=ws.owner.email,
                workspace_owner_id=str(ws.owner_id),
                template_id=str(ws.template_id),
                template_name=ws.template.name,
                template_version=version.name,
                template_version_id=str(version.id),
            )
    else:
        version = TemplateVersion.objects.select_related("template").filter(job_id=job.id).first()
        if version is not None:
            data.update(
                source=version.source,
                template_version=version.name,
                template_version_id=str(version.id),
                template_id=str(version.template_id or ""),
                template_name=version.template.name if version.template else "",
            )
    if not isinstance(data.get("source"), dict):
        data["source"] = {}
    return JobSpec.from_dict(data)


# --- while running -------------------------------------------------------------------------------


def heartbeat(job_id: Any, daemon_id: Any, now: datetime, beat: bool = True) -> str:
    """The job's state for its daemon (RUNNING, CANCELED or GONE); `beat` also records a heartbeat."""
    row = ProvisionerJob.objects.filter(id=job_id).values_list("canceled_at", "completed_at").first()
    if row is None or row[1] is not None:
        return GONE
    if beat:
        ProvisionerJob.objects.filter(id=job_id, completed_at__isnull=True).update(updated_at=now)
        if daemon_id is not None:
            daemon_seen(daemon_id, now)
    return CANCELED if row[0] is not None else RUNNING


def is_canceled(job_id: Any) -> bool:
    return ProvisionerJob.objects.filter(id=job_id, canceled_at__isnull=False).exists()


def append_logs(job_id: Any, lines: list[LogLine]) -> None:
    """Store lines in order (the growing id is the order) and wake the job's followers."""
    if not lines:
        return
    ProvisionerJobLog.objects.bulk_create(
        [
            ProvisionerJobLog(
                job_id=job_id,
                created_at=line.created_at,
                source=line.source[:32],
                level=line.level if line.level in {"trace", "debug", "info", "warn", "error"} else "info",
                stage=line.stage[:128],
                output=line.output,
            )
            for line in lines
        ]
    )
    notify.job_changed(job_id)


# Coder's LogSource values; a daemon's own label for a line is read as the provisioner's.
LOG_SOURCES = {"provisioner_daemon", "provisioner"}


def log_json(entry: ProvisionerJobLog) -> dict[str, Any]:
    """A line as Coder's `ProvisionerJobLog`, for the JSON list and the follow websocket alike."""
    return {
        "id": entry.id,
        "created_at": iso(entry.created_at),
        "log_source": entry.source if entry.source in LOG_SOURCES else "provisioner",
        "log_level": entry.level,
        "stage": entry.stage,
        "output": entry.output,
    }


def logs_after(job_id: Any, after_id: int = 0, limit: int | None = None) -> tuple[bool, list[dict[str, Any]]]:
    """(job ended, up to `limit` of its log lines after `after_id`). The end is read first: a job's
    logs are all written before it ends, so when it has ended and fewer than `limit` lines came back,
    these are the last lines."""
    done = ProvisionerJob.objects.filter(id=job_id, completed_at__isnull=False).exists()
    entries = ProvisionerJobLog.objects.filter(job_id=job_id, id__gt=after_id).order_by("id")
    if limit is not None:
        entries = entries[:limit]
    return done, [log_json(e) for e in entries]


# --- ending --------------------------------------------------------------------------------------


def complete(job_id: Any, now: datetime, error: str = "", daemon_id: Any = None) -> str | None:
    """Record a job's outcome once; the stored status, or None when it had already ended
    (the reaper failed it, or it was canceled before it started)."""
    jobs = ProvisionerJob.objects.filter(id=job_id, started_at__isnull=False, completed_at__isnull=True)
    if daemon_id is not None:
        jobs = jobs.filter(worker_id=daemon_id)
    with transaction.atomic():
        if not jobs.update(completed_at=now, updated_at=now, error=error or ""):
            return None
        if daemon_id is not None:
            ProvisionerDaemon.objects.filter(id=daemon_id, current_job_id=job_id).update(
                current_job=None, last_seen_at=now
            )
    job = ProvisionerJob.objects.get(id=job_id)
    after_outcome(job)
    return job.get_status(now)


def fail(job_id: Any, now: datetime, error: str, daemon_id: Any = None) -> str | None:
    return complete(job_id, now, error=error or "The job failed.", daemon_id=daemon_id)


def after_outcome(job: ProvisionerJob) -> None:
    """Once an outcome is stored: the workspace follows its build, and followers are told.

    on_build_job_finished tells watch-ws followers itself (its workspace_changed signal)."""
    if job.type == JobType.WORKSPACE_BUILD:
        try:
            from coderd.workspaces.services import on_build_job_finished

            on_build_job_finished(job)
        except Exception:  # the outcome is stored; a workspace left behind must not hide it
            log.exception("job %s: on_build_job_finished failed", job.id)
            notify.workspace_changed(_workspace_id(job.id))
    notify.job_changed(job.id)
