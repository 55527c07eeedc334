"""Creating and canceling provisioner jobs: the only writers of a job's birth and cancellation.

Claiming, heart-beating and finishing belong to the daemon's queue; these two functions are what the
API, the admin and the workspace services call.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import transaction
from django.dispatch import Signal
from django.utils import timezone

from coderd.errors import Conflict
from provisioner.models import ProvisionerJob

# Sent after the creating transaction commits, with `job_id`, so idle daemons can wake at once
# instead of waiting for their next poll. Receivers must do bookkeeping only.
job_created = Signal()


def create_job(
    organization: Any,
    initiator: Any,
    provisioner: str,
    type: str,
    input: dict[str, Any],
) -> ProvisionerJob:
    """A pending job. Call inside the transaction that creates what the job is for."""
    now = timezone.now()
    job = ProvisionerJob.objects.create(
        organization=organization,
        initiator=initiator,
        provisioner=provisioner,
        type=type,
        input=input,
        created_at=now,
        updated_at=now,
    )
    transaction.on_commit(lambda: job_created.send(sender=ProvisionerJob, job_id=job.id))
    return job


def cancel_job(job: ProvisionerJob, now: datetime | None = None) -> ProvisionerJob:
    """Cancel a job and return it refreshed.

    pending -> canceled at once (canceled_at = completed_at = now); running -> canceling (canceled_at
    only: its daemon stops the provisioner and sets completed_at); done or already canceling -> 409.
    Each step is a conditional UPDATE, so a cancel racing a daemon's claim moves the job exactly once:
    whichever UPDATE lands first wins and the other matches no row.
    """
    now = now or timezone.now()
    jobs = ProvisionerJob.objects.filter(pk=job.pk, canceled_at__isnull=True, completed_at__isnull=True)
    if jobs.filter(started_at__isnull=True).update(canceled_at=now, completed_at=now, updated_at=now):
        job.refresh_from_db()
        return job
    if jobs.filter(started_at__isnull=False).update(canceled_at=now):
        job.refresh_from_db()
        return job
    job.refresh_from_db()
    if job.completed_at is not None:
        raise Conflict("Job has already completed.", detail=f"The job is {job.get_status(now)}.")
    raise Conflict("Job is already being canceled.")
