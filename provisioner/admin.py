"""Provisioner jobs, their logs and the daemons in the admin.

A job's status is computed (timestamps + error), so it is an annotation here, shown as a column and
filtered by coderd.admin.JobStatusFilter. Canceling goes through the same functions as the API.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from django.contrib import admin
from django.db.models import Count, F, Q, QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html

from coderd.admin import (
    JobStatusFilter,
    job_duration,
    render_job_logs,
    run_each,
    status_badge,
    when_column,
    with_job_status,
)
from provisioner.api import DAEMON_OFFLINE_AFTER_SECONDS
from provisioner.models import (
    JobType,
    ProvisionerDaemon,
    ProvisionerJob,
    ProvisionerJobLog,
)
from provisioner.reaper import FORGET_DAEMONS_AFTER

DAEMON_OFFLINE_AFTER = timedelta(seconds=DAEMON_OFFLINE_AFTER_SECONDS)


def _change_link(obj: Any, text: Any = None) -> str:
    if obj is None:
        return "-"
    meta = obj._meta
    url = reverse(f"admin:{meta.app_label}_{meta.model_name}_change", args=[obj.pk])
    return format_html('<a href="{}">{}</a>', url, text if text is not None else obj)


def cancel(actor: Any, job: ProvisionerJob) -> Any:
    """Cancel through what the job is for, as the API does: a build (so its workspace is told) or a
    template version (template admins only)."""
    from provisioner.jobs import cancel_job

    if job.type == JobType.WORKSPACE_BUILD:
        from coderd.workspaces.models import WorkspaceBuild
        from coderd.workspaces.services import cancel_build

        build = WorkspaceBuild.objects.select_related("workspace").filter(job_id=job.pk).first()
        if build is not None:
            return cancel_build(actor, build)
    else:
        from coderd.workspaces.models import TemplateVersion
        from coderd.workspaces.services import cancel_template_version

        version = TemplateVersion.objects.filter(job_id=job.pk).first()
        if version is not None:
            return cancel_template_version(actor, version)
    return cancel_job(job)  # a job with nothing behind it (left over): cancel it as it is


@admin.register(ProvisionerJob)
class ProvisionerJobAdmin(admin.ModelAdmin):
    list_display = (
        "short_id", "type", "status", "subject", "initiator", "worker", "created", "took",
    )  # fmt: skip
    list_filter = (JobStatusFilter, "type", "provisioner", "created_at")
    ordering = ("-created_at",)
    created = when_column("created_at")
    # A UUID column searched with icontains matches the 8-character ids shown in the list.
    search_fields = ("id", "error", "initiator__username", "worker__name")
    list_select_related = ("initiator", "worker", "workspace_build__workspace", "template_version")
    date_hierarchy = "created_at"
    fields = (
        "id", "type", "provisioner", "status", "subject", "organization", "initiator", "worker",
        "created_at", "updated_at", "started_at", "canceled_at", "completed_at", "took", "error_text",
        "input_json", "logs",
    )  # fmt: skip
    readonly_fields = fields
    actions = ("cancel_jobs",)

    @admin.display(description="duration")
    def took(self, job: ProvisionerJob) -> str:
        return job_duration(job)

    @admin.display(description="error")
    def error_text(self, job: ProvisionerJob) -> str:
        return format_html('<span class="coderd-error">{}</span>', job.error) if job.error else "-"

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return with_job_status(super().get_queryset(request))

    @admin.display(description="id", ordering="id")
    def short_id(self, job: ProvisionerJob) -> str:
        return str(job.id)[:8]

    @admin.display(description="status", ordering="job_status")
    def status(self, job: ProvisionerJob) -> str:
        return status_badge(job.job_status)

    @admin.display(description="for")
    def subject(self, job: ProvisionerJob) -> str:
        if job.type == JobType.WORKSPACE_BUILD:
            build = getattr(job, "workspace_build", None)
            return _change_link(build) if build else "-"
        version = getattr(job, "template_version", None)
        return _change_link(version, f"version {version.name}") if version else "-"

    @admin.display(description="input")
    def input_json(self, job: ProvisionerJob) -> str:
        return format_html('<pre style="margin:0">{}</pre>', json.dumps(job.input, indent=2, sort_keys=True))

    @admin.display(description="logs")
    def logs(self, job: ProvisionerJob) -> str:
        follow = None
        if job.completed_at is None:
            if job.type == JobType.WORKSPACE_BUILD and getattr(job, "workspace_build", None) is not None:
                follow = f"/api/v2/workspacebuilds/{job.workspace_build.pk}/logs"
            elif getattr(job, "template_version", None) is not None:
                follow = f"/api/v2/templateversions/{job.template_version.pk}/logs"
        return render_job_logs(job.pk, follow)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.action(description="Cancel selected jobs")
    def cancel_jobs(self, request: HttpRequest, queryset: QuerySet) -> None:
        run_each(
            self, request, queryset, lambda j: cancel(request.user, j), "Canceled {count} job(s).",
            log_message="Canceled.",
        )  # fmt: skip


@admin.register(ProvisionerJobLog)
class ProvisionerJobLogAdmin(admin.ModelAdmin):
    list_display = ("id", "job_link", "created", "level", "stage", "output")
    created = when_column("created_at")
    list_filter = ("level", "source")
    search_fields = ("output", "stage", "job__id")
    list_select_related = ("job",)
    raw_id_fields = ("job",)
    ordering = ("-id",)

    @admin.display(description="job", ordering="job_id")
    def job_link(self, log: ProvisionerJobLog) -> str:
        return _change_link(log.job, str(log.job_id)[:8])

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class DaemonSeenFilter(admin.SimpleListFilter):
    """Daemons seen lately by default: a row silent for a day is history (the reaper removes it)."""

    title = "seen"
    parameter_name = "seen"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("day", "In the last day"), ("online", "Online now"), ("all", "All")]

    def choices(self, changelist: Any) -> Any:
        chosen = self.value() or "day"
        for lookup, title in self.lookup_choices:
            yield {
                "selected": chosen == lookup,
                "query_string": changelist.get_query_string({self.parameter_name: lookup}),
                "display": title,
            }

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet | None:
        now = timezone.now()
        chosen = self.value() or "day"
        if chosen == "online":
            return queryset.filter(stopped_at__isnull=True, last_seen_at__gte=now - DAEMON_OFFLINE_AFTER)
        if chosen == "day":
            since = now - FORGET_DAEMONS_AFTER
            return queryset.filter(
                Q(last_seen_at__gte=since) | Q(last_seen_at__isnull=True, created_at__gte=since)
            )
        return queryset


@admin.register(ProvisionerDaemon)
class ProvisionerDaemonAdmin(admin.ModelAdmin):
    list_display = (
        "name", "connected", "provisioner_list", "external", "version", "last_seen", "current_job_link", "jobs_run",
        "created",
    )  # fmt: skip
    list_filter = (DaemonSeenFilter, "external")
    search_fields = ("name", "version")
    list_select_related = ("current_job", "organization")
    ordering = ("-last_seen_at",)
    fields = (
        "id", "name", "provisioner_list", "external", "version", "organization", "created_at",
        "last_seen_at", "stopped_at", "current_job_link",
    )  # fmt: skip
    readonly_fields = fields
    last_seen = when_column("last_seen_at", "last seen")
    created = when_column("created_at")

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).annotate(n_jobs=Count("jobs"))

    @admin.display(boolean=True, description="online")
    def connected(self, daemon: ProvisionerDaemon) -> bool:
        # As the API lists it: seen within DAEMON_OFFLINE_AFTER, and not stopped since.
        return (
            daemon.stopped_at is None
            and daemon.last_seen_at is not None
            and timezone.now() - daemon.last_seen_at < DAEMON_OFFLINE_AFTER
        )

    @admin.display(description="provisioners")
    def provisioner_list(self, daemon: ProvisionerDaemon) -> str:
        return ", ".join(daemon.provisioners)

    @admin.display(description="current job")
    def current_job_link(self, daemon: ProvisionerDaemon) -> str:
        return (
            _change_link(daemon.current_job, str(daemon.current_job_id)[:8]) if daemon.current_job_id else "-"
        )

    @admin.display(description="jobs", ordering=F("n_jobs").desc(nulls_last=True))
    def jobs_run(self, daemon: ProvisionerDaemon) -> int:
        return daemon.n_jobs

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    # Deleting is allowed: a daemon that is gone for good leaves a row only an operator can clear.
