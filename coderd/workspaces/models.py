"""Templates, their versions, workspaces and workspace builds."""

from __future__ import annotations

import uuid

from django.db import models
from django.db.models import Q
from django.db.models.functions import Lower


class Template(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organization = models.ForeignKey("users.Organization", on_delete=models.CASCADE, related_name="templates")
    name = models.CharField(max_length=64)
    display_name = models.CharField(max_length=128, blank=True)
    description = models.TextField(blank=True)
    provisioner = models.CharField(max_length=16)
    active_version = models.ForeignKey(
        "TemplateVersion", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    created_by = models.ForeignKey("users.User", on_delete=models.SET_NULL, null=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    deleted = models.BooleanField(default=False)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(
                "organization", Lower("name"), condition=Q(deleted=False), name="template_name_unique_live"
            ),
        ]

    def __str__(self) -> str:
        return self.name


class TemplateVersion(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organization = models.ForeignKey("users.Organization", on_delete=models.CASCADE, related_name="+")
    template = models.ForeignKey(
        Template, on_delete=models.CASCADE, null=True, blank=True, related_name="versions"
    )
    name = models.CharField(max_length=64)
    message = models.TextField(blank=True)
    provisioner = models.CharField(max_length=16)
    # echo: {"start": {"duration_ms", "logs", "fail"}, ...}; shell: {"start": "#!/bin/sh ...", ...}
    source = models.JSONField(default=dict)
    job = models.OneToOneField(
        "provisioner.ProvisionerJob", on_delete=models.PROTECT, related_name="template_version"
    )
    created_by = models.ForeignKey("users.User", on_delete=models.SET_NULL, null=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # Names are unique within a template (as Coder's), whatever the case; versions not yet
            # attached to a template are free.
            models.UniqueConstraint(
                "template",
                Lower("name"),
                condition=Q(template__isnull=False),
                name="template_version_name_unique",
            ),
        ]

    def __str__(self) -> str:
        return self.name


class Workspace(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey("users.User", on_delete=models.CASCADE, related_name="workspaces")
    organization = models.ForeignKey(
        "users.Organization", on_delete=models.CASCADE, related_name="workspaces"
    )
    template = models.ForeignKey(Template, on_delete=models.PROTECT, related_name="workspaces")
    name = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    deleted = models.BooleanField(default=False)
    # Denormalised so that lists and the latest-build gauge need no "max(build_number)" subquery.
    latest_build = models.OneToOneField(
        "WorkspaceBuild", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    # Copies of the latest build's version and transition, of its job's status (the heartbeat aside:
    # a running job stays "running" here) and of the names the metrics label with, so that the
    # metrics' refresh reads one index of one table. Written only by database triggers (migration
    # workspaces 0002), which fire on every write to a workspace, a build, a job's outcome, or a
    # user's, template's or version's name: code never sets them.
    latest_version_id = models.UUIDField(null=True, blank=True, editable=False)
    latest_version_name = models.CharField(max_length=64, null=True, blank=True, editable=False)
    latest_transition = models.CharField(max_length=8, null=True, blank=True, editable=False)
    latest_job_state = models.CharField(max_length=10, null=True, blank=True, editable=False)
    owner_username = models.CharField(max_length=64, null=True, blank=True, editable=False)
    template_name = models.CharField(max_length=64, null=True, blank=True, editable=False)

    class Meta:
        ordering = ["owner_id", "name"]
        constraints = [
            models.UniqueConstraint(
                "owner", Lower("name"), condition=Q(deleted=False), name="workspace_name_unique_per_owner"
            ),
        ]
        indexes = [
            models.Index(fields=["deleted", "template"]),
            # The metrics' refresh: live workspaces in GROUP BY order (the labels), read from the
            # index alone (SQLite wants `deleted` in it too to call it covering).
            models.Index(
                fields=[
                    "template_name",
                    "latest_version_name",
                    "owner_username",
                    "latest_transition",
                    "latest_job_state",
                    "deleted",
                ],
                name="workspace_latest_build_gauge",
                condition=Q(deleted=False, latest_job_state__isnull=False),
            ),
            # ... and the few whose job runs, whose heartbeat decides running or failed.
            models.Index(
                fields=["latest_build"],
                name="workspace_latest_job_running",
                condition=Q(deleted=False, latest_job_state="running"),
            ),
            # The workspace list's order (owner's username, name, id): a page of 100 out of 10,000
            # is read as its 100 rows, where sorting on the joined users' names read and joined
            # all 10,000 (85 ms on SQLite). Partial as the list is (the rare `deleted:true` list,
            # of the deleted ones too, is sorted): SQLite prefers a partial index to a full one.
            models.Index(
                fields=["owner_username", "name", "id"],
                name="workspace_list_order",
                condition=Q(deleted=False),
            ),
        ]

    def __str__(self) -> str:
        return self.name


class Transition(models.TextChoices):
    START = "start", "start"
    STOP = "stop", "stop"
    DELETE = "delete", "delete"


class WorkspaceBuild(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="builds")
    build_number = models.PositiveIntegerField()
    transition = models.CharField(max_length=8, choices=Transition.choices)
    initiator = models.ForeignKey("users.User", on_delete=models.SET_NULL, null=True, related_name="+")
    template_version = models.ForeignKey(TemplateVersion, on_delete=models.PROTECT, related_name="builds")
    job = models.OneToOneField(
        "provisioner.ProvisionerJob", on_delete=models.PROTECT, related_name="workspace_build"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["workspace_id", "-build_number"]
        constraints = [
            models.UniqueConstraint(fields=["workspace", "build_number"], name="build_number_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.workspace} #{self.build_number} {self.transition}"


class WorkspaceGaugeChange(models.Model):
    """One live workspace entering (+1) or leaving (-1) a label set of
    `coderd_workspace_latest_build_status`, appended by a database trigger (migration workspaces
    0004) whenever a workspace's copies change. Appends only: concurrent builds never wait on each
    other here. Each reaper pass folds these rows into `WorkspaceGaugeCount` and deletes them; the
    metrics' refresh reads the counts and adds the rows not folded yet."""

    id = models.BigAutoField(primary_key=True)
    status = models.CharField(max_length=10)
    template_name = models.CharField(max_length=64)
    template_version = models.CharField(max_length=64)
    workspace_owner = models.CharField(max_length=64)
    workspace_transition = models.CharField(max_length=8)
    delta = models.SmallIntegerField()

    def __str__(self) -> str:
        return f"{self.status} {self.template_name} {self.workspace_owner} {self.delta:+d}"


class WorkspaceGaugeCount(models.Model):
    """Live workspaces per label set, as of the last fold: thousands of rows to read at a refresh
    instead of grouping every workspace. Written only by `metrics.database.fold_gauge_changes`,
    under a lock. Each row carries the number of the fold that last changed it, so that a process's
    refresh reads only the rows changed since its last one; a label set whose count falls to 0 is
    kept at 0 for `metrics.database.FOLDS_KEPT` folds (a reader must see it fall), then deleted."""

    id = models.BigAutoField(primary_key=True)
    status = models.CharField(max_length=10)
    template_name = models.CharField(max_length=64)
    template_version = models.CharField(max_length=64)
    workspace_owner = models.CharField(max_length=64)
    workspace_transition = models.CharField(max_length=8)
    n = models.IntegerField()
    fold = models.BigIntegerField(db_default=0)

    class Meta:
        indexes = [
            # The rows changed since a reader's last fold, and the zeros old enough to delete.
            models.Index(fields=["fold"], name="workspace_gauge_count_fold"),
            models.Index(fields=["fold"], condition=models.Q(n=0), name="workspace_gauge_count_zero"),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=[
                    "status",
                    "template_name",
                    "template_version",
                    "workspace_owner",
                    "workspace_transition",
                ],
                name="workspace_gauge_count_labels",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.status} {self.template_name} {self.workspace_owner}: {self.n}"


class WorkspaceGaugeFold(models.Model):
    """One row per fold of the gauge changes, the last `metrics.database.FOLDS_KEPT` kept: its number
    (the `fold` written on the counts it changed) and a random token. A reader remembers the number
    and token of the last fold it read; finding that same pair again proves the counts it holds are
    this database's as of that fold (not a database restored, refilled or rolled back since, where
    the same number may stand for other counts), so the rows with a higher `fold` are all it needs."""

    number = models.BigIntegerField(primary_key=True)
    token = models.BigIntegerField()

    def __str__(self) -> str:
        return f"fold {self.number}"
