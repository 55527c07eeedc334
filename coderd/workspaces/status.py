"""A workspace's status, as Coder computes it: the one rule the API's `status`, the admin's badge, the
console's counts and any metric label all call, so that no two surfaces can disagree.

Coder (`coderd/workspacebuilds.go`, `convertWorkspaceStatus`): the latest build's job status decides,
and for a job that is running or has succeeded, the build's transition says which way it went.
"""

from __future__ import annotations

from datetime import datetime

from django.db import models
from django.db.models import Case, Q, Value, When
from django.db.models.lookups import Exact

from provisioner.models import JobStatus, status_expression


class WorkspaceStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    STARTING = "starting", "Starting"
    RUNNING = "running", "Running"
    STOPPING = "stopping", "Stopping"
    STOPPED = "stopped", "Stopped"
    FAILED = "failed", "Failed"
    CANCELING = "canceling", "Canceling"
    CANCELED = "canceled", "Canceled"
    DELETING = "deleting", "Deleting"
    DELETED = "deleted", "Deleted"


_WHILE_RUNNING = {
    "start": WorkspaceStatus.STARTING,
    "stop": WorkspaceStatus.STOPPING,
    "delete": WorkspaceStatus.DELETING,
}
_ONCE_SUCCEEDED = {
    "start": WorkspaceStatus.RUNNING,
    "stop": WorkspaceStatus.STOPPED,
    "delete": WorkspaceStatus.DELETED,
}
_BY_JOB = {
    JobStatus.PENDING: WorkspaceStatus.PENDING,
    JobStatus.CANCELING: WorkspaceStatus.CANCELING,
    JobStatus.CANCELED: WorkspaceStatus.CANCELED,
    JobStatus.FAILED: WorkspaceStatus.FAILED,
}


def workspace_status(transition: str, job_status: str) -> WorkspaceStatus:
    """Coder's workspace status from a build's transition and its job's status.

    Like Coder, anything it cannot place (an unknown transition) reads as failed rather than raising.
    """
    if job_status == JobStatus.RUNNING:
        return _WHILE_RUNNING.get(transition, WorkspaceStatus.FAILED)
    if job_status == JobStatus.SUCCEEDED:
        return _ONCE_SUCCEEDED.get(transition, WorkspaceStatus.FAILED)
    return _BY_JOB.get(job_status, WorkspaceStatus.FAILED)


def workspace_status_expression(now: datetime, *, transition: str, job_prefix: str) -> Case:
    """The same rule as `workspace_status`, as SQL: `transition` names the build's transition field and
    `job_prefix` the path to its job (from a Workspace: `transition="latest_build__transition"`,
    `job_prefix="latest_build__job__"`)."""
    job = status_expression(now, prefix=job_prefix)

    def by_transition(table: dict[str, WorkspaceStatus]) -> Case:
        whens = [When(Q(**{transition: t}), then=Value(s.value)) for t, s in table.items()]
        return Case(*whens, default=Value(WorkspaceStatus.FAILED.value), output_field=models.CharField())

    return Case(
        When(Exact(job, JobStatus.RUNNING.value), then=by_transition(_WHILE_RUNNING)),
        When(Exact(job, JobStatus.SUCCEEDED.value), then=by_transition(_ONCE_SUCCEEDED)),
        *[When(Exact(job, j.value), then=Value(s.value)) for j, s in _BY_JOB.items()],
        default=Value(WorkspaceStatus.FAILED.value),
        output_field=models.CharField(),
    )
