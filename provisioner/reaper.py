"""The reaper: fails running jobs whose daemon stopped heart-beating (Coder's jobreaper).

A daemon that dies mid-job (SIGKILL, a lost machine) leaves its job running forever; the reaper
marks it failed with a clear error once its heartbeat is older than the threshold, so that the
workspace's next build can run. Each job is re-checked under lock before it is failed: a daemon
that heart-beats at the last moment keeps its job. Time is an argument: `run_once(now)`.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction

from provisioner.models import (
    HEARTBEAT_STALE_AFTER,
    LogLevel,
    ProvisionerDaemon,
    ProvisionerJob,
    ProvisionerJobLog,
)
from provisioner.observer import JobObserver

log = logging.getLogger(__name__)

# A running job with no heartbeat for this long is failed (the same point at which its status
# reads `failed`). Daemons beat every 5 s. Configurable: CODER_PROVISIONER_HUNG_JOB_TIMEOUT.
HUNG_JOB_TIMEOUT = HEARTBEAT_STALE_AFTER
# How often the server's reaper thread looks.
REAP_INTERVAL = 10.0
# A bound on one pass, so that a flood of dead jobs cannot hold the lock for long.
MAX_JOBS_PER_RUN = 50
# A daemon row not seen for this long is removed (a retired host, a renamed daemon).
FORGET_DAEMONS_AFTER = timedelta(days=1)


def hung_job_timeout() -> timedelta:
    seconds = getattr(settings, "PROVISIONER_HUNG_JOB_TIMEOUT", None)
    return timedelta(seconds=seconds) if seconds else HUNG_JOB_TIMEOUT


def hung_error(threshold: timedelta) -> str:
    return (
        f"The provisioner daemon stopped sending heartbeats for {threshold.total_seconds():g} seconds; "
        "the job was marked failed by the reaper."
    )


def run_once(
    now: datetime, threshold: timedelta | None = None, observer: JobObserver | None = None
) -> list[Any]:
    """Fail every hung job (at most MAX_JOBS_PER_RUN); the ids of the jobs this call failed."""
    from metrics.database import fold_gauge_changes
    from provisioner.queue import forget_silent_daemons

    threshold = threshold or hung_job_timeout()
    _finish_canceled_pending(now)
    forget_silent_daemons(now, FORGET_DAEMONS_AFTER)
    # Housekeeping: the workspaces' label changes (workspaces 0004) folded into their counts, so
    # that the change log stays short whether or not metrics are served.
    fold_gauge_changes()
    hung = (
        ProvisionerJob.objects.filter(
            started_at__isnull=False, completed_at__isnull=True, updated_at__lt=now - threshold
        )
        .order_by("updated_at")
        .values_list("id", flat=True)[:MAX_JOBS_PER_RUN]
    )
    reaped = []
    for job_id in list(hung):
        job = _reap(job_id, now, threshold)
        if job is None:
            continue
        reaped.append(job_id)
        log.warning("reaper: failed %s: no heartbeat since %s", _describe(job), job.updated_at)
        _after(job, observer)
    return reaped


def _reap(job_id: Any, now: datetime, threshold: timedelta) -> ProvisionerJob | None:
    with transaction.atomic():
        # PostgreSQL: lock the row. SQLite: the transaction is IMMEDIATE, the whole file is ours.
        jobs = ProvisionerJob.objects.filter(id=job_id)
        if connection.features.has_select_for_update:
            jobs = jobs.select_for_update()
        job = jobs.first()
        if (
            job is None
            or job.completed_at is not None
            or job.started_at is None
            or job.updated_at >= now - threshold
        ):
            return None  # ended, or heart-beaten since we looked
        error = hung_error(threshold)
        last = ProvisionerJobLog.objects.filter(job_id=job_id).order_by("-id").values_list("stage", flat=True)
        stage = last.first() or "Unknown"
        ProvisionerJobLog.objects.bulk_create(
            [
                ProvisionerJobLog(
                    job_id=job_id,
                    created_at=now,
                    source="provisioner_daemon",
                    level=LogLevel.ERROR,
                    stage=stage,
                    output=line,
                )
                for line in ("", "====================", error, "====================", "")
            ]
        )
        ProvisionerJob.objects.filter(id=job_id).update(completed_at=now, updated_at=now, error=error)
        ProvisionerDaemon.objects.filter(current_job_id=job_id).update(current_job=None)
        job.completed_at, job.error = now, error
    return job


def _finish_canceled_pending(now: datetime) -> None:
    # A job canceled before any daemon took it has nobody to end it; cancel_job ends it at once,
    # this catches one canceled by any other writer.
    from provisioner.queue import after_outcome

    stuck = ProvisionerJob.objects.filter(
        started_at__isnull=True, canceled_at__isnull=False, completed_at__isnull=True
    ).values_list("id", flat=True)[:MAX_JOBS_PER_RUN]
    for job_id in list(stuck):
        if ProvisionerJob.objects.filter(
            id=job_id, started_at__isnull=True, completed_at__isnull=True
        ).update(completed_at=now, updated_at=now):
            after_outcome(ProvisionerJob.objects.get(id=job_id))


def _describe(job: ProvisionerJob) -> str:
    from provisioner.queue import job_spec

    try:
        return job_spec(job).describe()
    except Exception:  # a log line must never stop the reaper
        return f"job {job.id}"


def _after(job: ProvisionerJob, observer: JobObserver | None) -> None:
    from provisioner.queue import after_outcome, job_spec

    after_outcome(job)
    if observer is None:
        return
    try:
        # The dead daemon never reported this job: it is counted here, once, as failed.
        seconds = (job.completed_at - job.started_at).total_seconds()
        observer.job_finished(job.provisioner, False, seconds, job_spec(job).build_info())
    except Exception:
        log.exception("reaper: observer failed")
