"""Templates, versions, workspaces and builds in the admin.

Rows are created by the API (a version needs its import job, a workspace its first build); here
they are browsed, and started, stopped, deleted or canceled through coderd.workspaces.services.
"""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin
from django.db.models import Count, Q, QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html

from coderd.admin import JobStatusFilter, render_job_logs, run_each, status_badge, with_job_status
from coderd.audit.admin import AuditedModelAdmin
from coderd.errors import BadRequest
from coderd.workspaces import services
from coderd.workspaces.models import Template, TemplateVersion, Transition, Workspace, WorkspaceBuild


def _link(obj: Any, text: Any = None) -> str:
    if obj is None:
        return "-"
    meta = obj._meta
    url = reverse(f"admin:{meta.app_label}_{meta.model_name}_change", args=[obj.pk])
    return format_html('<a href="{}">{}</a>', url, text if text is not None else obj)


def _pretty_json(value: Any) -> str:
    return format_html('<pre style="margin:0">{}</pre>', json.dumps(value, indent=2, sort_keys=True))


class ReadOnlyAdmin(admin.ModelAdmin):
    """Browse only: these rows change through service functions (the API's, or the actions here)."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Template)
class TemplateAdmin(AuditedModelAdmin):
    list_display = (
        "name", "organization", "provisioner", "active_version_link", "live_workspaces", "created_by",
        "created_at", "deleted",
    )  # fmt: skip
    list_filter = ("provisioner", "deleted", "organization")
    search_fields = ("name", "display_name", "organization__name")
    list_select_related = ("organization", "active_version", "created_by")
    fields = (
        "id", "organization", "name", "display_name", "description", "provisioner", "active_version",
        "created_by", "created_at", "updated_at", "deleted",
    )  # fmt: skip
    # Only the words people read are edited here; versions move through set_active_version.
    readonly_fields = tuple(f for f in fields if f not in {"display_name", "description"})
    actions = ("delete_templates",)

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return (
            super()
            .get_queryset(request)
            .annotate(n_workspaces=Count("workspaces", filter=Q(workspaces__deleted=False)))
        )

    @admin.display(description="active version", ordering="active_version__name")
    def active_version_link(self, template: Template) -> str:
        return _link(template.active_version)

    @admin.display(description="workspaces", ordering="n_workspaces")
    def live_workspaces(self, template: Template) -> int:
        return template.n_workspaces

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # soft delete by the action, refused while workspaces use the template

    @admin.action(description="Delete selected templates")
    def delete_templates(self, request: HttpRequest, queryset: QuerySet) -> None:
        run_each(
            self, request, queryset, lambda t: services.delete_template(request.user, t),
            "Deleted {count} template(s).", log_message="Deleted (the row stays for history).",
        )  # fmt: skip


@admin.register(TemplateVersion)
class TemplateVersionAdmin(ReadOnlyAdmin):
    list_display = ("name", "template", "provisioner", "import_status", "created_by", "created_at")
    list_filter = (JobStatusFilter, "provisioner")
    search_fields = ("name", "template__name", "message")
    list_select_related = ("template", "created_by", "job")
    fields = (
        "id", "name", "template", "organization", "provisioner", "message", "created_by", "created_at",
        "job_link", "import_status", "source_json", "import_logs",
    )  # fmt: skip
    readonly_fields = fields

    actions = ("make_active",)

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return with_job_status(super().get_queryset(request), "job__")

    @admin.action(description="Make the active version of its template")
    def make_active(self, request: HttpRequest, queryset: QuerySet) -> None:
        def activate(version: TemplateVersion) -> None:
            if version.template is None:
                raise BadRequest("This version belongs to no template yet.")
            services.set_active_version(request.user, version.template, version)

        run_each(
            self,
            request,
            queryset.select_related("template"),
            activate,
            "Activated {count} version(s).",
            log_message="Made the active version of its template.",
        )

    @admin.display(description="import", ordering="job_status")
    def import_status(self, version: TemplateVersion) -> str:
        return status_badge(version.job_status)

    @admin.display(description="job")
    def job_link(self, version: TemplateVersion) -> str:
        return _link(version.job, str(version.job_id))

    @admin.display(description="source")
    def source_json(self, version: TemplateVersion) -> str:
        return _pretty_json(version.source)

    @admin.display(description="import logs")
    def import_logs(self, version: TemplateVersion) -> str:
        return render_job_logs(version.job_id)


@admin.register(Workspace)
class WorkspaceAdmin(ReadOnlyAdmin):
    list_display = ("name", "owner", "template", "latest_build_link", "status", "created_at", "deleted")
    list_filter = (JobStatusFilter, "deleted", "template")
    search_fields = ("name", "owner__username", "owner__email", "template__name")
    list_select_related = ("owner", "template", "latest_build")
    fields = (
        "id", "name", "owner", "organization", "template", "latest_build_link", "status", "created_at",
        "updated_at", "deleted",
    )  # fmt: skip
    readonly_fields = fields
    actions = ("start_workspaces", "stop_workspaces", "delete_workspaces")

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return with_job_status(super().get_queryset(request), "latest_build__job__")

    @admin.display(description="latest build", ordering="latest_build__build_number")
    def latest_build_link(self, workspace: Workspace) -> str:
        build = workspace.latest_build
        return _link(build, f"#{build.build_number} {build.transition}") if build else "-"

    @admin.display(description="status", ordering="job_status")
    def status(self, workspace: Workspace) -> str:
        return status_badge(workspace.job_status if workspace.latest_build_id else None)

    def _build(self, request: HttpRequest, queryset: QuerySet, transition: str, verb: str) -> None:
        run_each(
            self, request, queryset, lambda w: services.create_build(request.user, w, transition),
            f"{verb} {{count}} workspace(s): a {transition} build is queued for each.",
            log_message=f"Queued a {transition} build.",
        )  # fmt: skip

    @admin.action(description="Start selected workspaces")
    def start_workspaces(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._build(request, queryset, Transition.START, "Starting")

    @admin.action(description="Stop selected workspaces")
    def stop_workspaces(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._build(request, queryset, Transition.STOP, "Stopping")

    @admin.action(description="Delete selected workspaces (runs a delete build)")
    def delete_workspaces(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._build(request, queryset, Transition.DELETE, "Deleting")


@admin.register(WorkspaceBuild)
class WorkspaceBuildAdmin(ReadOnlyAdmin):
    list_display = (
        "__str__", "workspace_link", "owner", "transition", "status", "initiator", "template_version",
        "created_at",
    )  # fmt: skip
    list_filter = (JobStatusFilter, "transition", "created_at")
    search_fields = ("workspace__name", "workspace__owner__username", "template_version__name")
    list_select_related = ("workspace__owner", "initiator", "template_version", "job")
    fields = (
        "id", "workspace_link", "build_number", "transition", "status", "initiator", "template_version",
        "created_at", "job_link", "job_error", "logs",
    )  # fmt: skip
    readonly_fields = fields
    actions = ("cancel_builds",)

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return with_job_status(super().get_queryset(request), "job__")

    @admin.display(description="workspace", ordering="workspace__name")
    def workspace_link(self, build: WorkspaceBuild) -> str:
        return _link(build.workspace)

    @admin.display(description="owner", ordering="workspace__owner__username")
    def owner(self, build: WorkspaceBuild) -> str:
        return build.workspace.owner.username

    @admin.display(description="status", ordering="job_status")
    def status(self, build: WorkspaceBuild) -> str:
        return status_badge(build.job_status)

    @admin.display(description="job")
    def job_link(self, build: WorkspaceBuild) -> str:
        return _link(build.job, str(build.job_id))

    @admin.display(description="error")
    def job_error(self, build: WorkspaceBuild) -> str:
        return build.job.error or "-"

    @admin.display(description="logs")
    def logs(self, build: WorkspaceBuild) -> str:
        return render_job_logs(build.job_id)

    @admin.action(description="Cancel selected builds")
    def cancel_builds(self, request: HttpRequest, queryset: QuerySet) -> None:
        run_each(
            self, request, queryset, lambda b: services.cancel_build(request.user, b),
            "Canceled {count} build(s).", log_message="Canceled.",
        )  # fmt: skip
