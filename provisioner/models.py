"""Provisioner jobs, their logs, and the daemons that run them.

A job's status is not stored: it follows from its timestamps and error, as in Coder
(`codersdk.ProvisionerJobStatus`), so that no write can leave the two disagreeing.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from django.db import models
from django.db.models import Case, Q, Value, When
from django.utils import timezone

# A running job whose daemon has not heart-beaten for this long counts as failed (Coder: 30 s).
HEARTBEAT_STALE_AFTER = timedelta(seconds=30)


class Provisioner(models.TextChoices):
    ECHO = "echo", "echo"
    SHELL = "shell", "shell"


class JobType(models.TextChoices):
    TEMPLATE_VERSION_IMPORT = "template_version_import", "Template version import"
    WORKSPACE_BUILD = "workspace_build", "Workspace build"


class JobStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    CANCELING = "canceling", "Canceling"
    CANCELED = "canceled", "Canceled"
    FAILED = "failed", "Failed"


def status_of(
    *,
    started_at: datetime | None,
    completed_at: datetime | None,
    canceled_at: datetime | None,
    error: str,
    updated_at: datetime | None,
    now: datetime,
) -> str:
    if canceled_at is not None:
        return JobStatus.CANCELED if completed_at is not None else JobStatus.CANCELING
    if started_at is None:
        return JobStatus.PENDING
    if completed_at is not None:
        return JobStatus.FAILED if error else JobStatus.SUCCEEDED
    if updated_at is not None and now - updated_at > HEARTBEAT_STALE_AFTER:
        return JobStatus.FAILED
    return JobStatus.RUNNING


def status_expression(now: datetime, prefix: str = "") -> Case:
    """The same rule as `status_of`, as SQL, for annotations and aggregate counts."""
    f = prefix

    def q(**kw) -> Q:
        return Q(**{f + k: v for k, v in kw.items()})

    return Case(
        When(q(canceled_at__isnull=False, completed_at__isnull=False), then=Value("canceled")),
        When(q(canceled_at__isnull=False), then=Value("canceling")),
        When(q(started_at__isnull=True), then=Value("pending")),
        When(q(completed_at__isnull=False) & ~q(error=""), then=Value("failed")),
        When(q(completed_at__isnull=False), then=Value("succeeded")),
        When(q(updated_at__lt=now - HEARTBEAT_STALE_AFTER), then=Value("failed")),
        default=Value("running"),
        output_field=models.CharField(),
    )


class ProvisionerJobQuerySet(models.QuerySet):
    def with_status(self, now: datetime | None = None) -> ProvisionerJobQuerySet:
        return self.annotate(computed_status=status_expression(now or timezone.now()))

    def pending(self) -> ProvisionerJobQuerySet:
        return self.filter(started_at__isnull=True, canceled_at__isnull=True)


class ProvisionerDaemon(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organization = models.ForeignKey("users.Organization", on_delete=models.CASCADE, null=True, blank=True)
    name = models.CharField(max_length=128)
    provisioners = models.JSONField(default=list)
    external = models.BooleanField(default=False, help_text="Connected over the serve websocket.")
    version = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_seen_at = models.DateTimeField(null=True, blank=True)
    # Set when the daemon stops cleanly: it is offline at once, and its row is the one a daemon of
    # the same name takes over when it starts again.
    stopped_at = models.DateTimeField(null=True, blank=True)
    current_job = models.ForeignKey(
        "ProvisionerJob", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )

    class Meta:
        ordering = ["name"]
        indexes = [models.Index(fields=["last_seen_at"])]

    def __str__(self) -> str:
        return self.name


class ProvisionerJob(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organization = models.ForeignKey("users.Organization", on_delete=models.CASCADE, related_name="jobs")
    initiator = models.ForeignKey(
        "users.User", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    provisioner = models.CharField(max_length=16, choices=Provisioner.choices)
    type = models.CharField(max_length=32, choices=JobType.choices)
    # What the provisioner needs: template version source, transition, workspace name and owner.
    input = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    # Also the heartbeat: a running job's daemon bumps it (Coder does the same).
    updated_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    canceled_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)
    worker = models.ForeignKey(
        ProvisionerDaemon, on_delete=models.SET_NULL, null=True, blank=True, related_name="jobs"
    )

    objects = ProvisionerJobQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            # The claim: oldest pending job first.
            models.Index(
                fields=["created_at"],
                name="provisionerjob_pending",
                condition=Q(started_at__isnull=True, canceled_at__isnull=True),
            ),
            # The reaper: running jobs by heartbeat.
            models.Index(
                fields=["updated_at"],
                name="provisionerjob_running",
                condition=Q(started_at__isnull=False, completed_at__isnull=True),
            ),
            models.Index(fields=["organization", "created_at"]),
            # The console: jobs that failed lately, newest first.
            models.Index(fields=["completed_at"], name="provisionerjob_failed", condition=~Q(error="")),
        ]

    def __str__(self) -> str:
        return f"{self.type} {self.id}"

    def get_status(self, now: datetime | None = None) -> str:
        return status_of(
            started_at=self.started_at,
            completed_at=self.completed_at,
            canceled_at=self.canceled_at,
            error=self.error,
            updated_at=self.updated_at,
            now=now or timezone.now(),
        )

    @property
    def status(self) -> str:
        return self.get_status()

    @property
    def is_done(self) -> bool:
        return self.completed_at is not None


class LogLevel(models.TextChoices):
    TRACE = "trace"
    DEBUG = "debug"
    INFO = "info"
    WARN = "warn"
    ERROR = "error"


class ProvisionerJobLog(models.Model):
    # A growing integer id: followers resume "after id N", and order is the id's order.
    id = models.BigAutoField(primary_key=True)
    job = models.ForeignKey(ProvisionerJob, on_delete=models.CASCADE, related_name="logs")
    created_at = models.DateTimeField(default=timezone.now)
    source = models.CharField(max_length=32, default="provisioner")
    level = models.CharField(max_length=8, choices=LogLevel.choices, default=LogLevel.INFO)
    stage = models.CharField(max_length=128, blank=True)
    output = models.TextField(blank=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["job", "id"])]

    def __str__(self) -> str:
        return self.output[:80]
