"""Templates, versions, workspaces and builds in the admin.

Rows are created by the API (a version needs its import job, a workspace its first build); here
they are browsed, and started, stopped, deleted or canceled through coderd.workspaces.services.
"""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Q, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from coderd.admin import (
    JobStatusFilter,
    describe,
    job_duration,
    render_job_logs,
    run_each,
    state_badge,
    status_badge,
    when,
    when_column,
    with_job_status,
)
from coderd.audit.admin import AuditedModelAdmin
from coderd.errors import APIError, BadRequest
from coderd.workspaces import services
from coderd.workspaces.models import Template, TemplateVersion, Transition, Workspace, WorkspaceBuild
from coderd.workspaces.status import WorkspaceStatus, workspace_status, workspace_status_expression

# A workspace's page lists this many of its newest builds (the builds list has them all).
BUILDS_SHOWN = 25


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
        "created", "deleted",
    )  # fmt: skip
    list_filter = ("provisioner", "deleted", "organization")
    ordering = ("-created_at",)
    created = when_column("created_at")
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
    list_display = (
        "name",
        "template",
        "provisioner",
        "import_status",
        "import_took",
        "created_by",
        "created",
    )
    list_filter = (JobStatusFilter, "provisioner")
    ordering = ("-created_at",)
    created = when_column("created_at")
    search_fields = ("name", "template__name", "message")
    list_select_related = ("template", "created_by", "job")
    fields = (
        "id", "name", "template", "organization", "provisioner", "message", "created_by", "created_at",
        "job_link", "import_status", "import_took", "source_json", "import_logs",
    )  # fmt: skip
    readonly_fields = fields

    actions = ("make_active",)

    @admin.display(description="took")
    def import_took(self, version: TemplateVersion) -> str:
        return job_duration(version.job)

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
        follow = None
        if version.job is not None and version.job.completed_at is None:
            follow = f"/api/v2/templateversions/{version.pk}/logs"
        return render_job_logs(version.job_id, follow)


class WorkspaceStateFilter(admin.SimpleListFilter):
    """Coder's workspace states, computed from the latest build (the `state` annotation)."""

    title = "state"
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return list(WorkspaceStatus.choices)

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet | None:
        if self.value() in WorkspaceStatus.values:
            return queryset.filter(state=self.value())
        return None


class DeletedFilter(admin.SimpleListFilter):
    """Deleted workspaces are hidden unless asked for (or asked for by their state)."""

    title = "deleted"
    parameter_name = "deleted"

    def __init__(self, request: HttpRequest, params: Any, model: Any, model_admin: Any) -> None:
        # A filter is made for each request (the ModelAdmin is shared): what else it asks is kept here.
        self.asked_state = request.GET.get(WorkspaceStateFilter.parameter_name)
        super().__init__(request, params, model, model_admin)

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("no", "No"), ("yes", "Yes"), ("all", "All")]

    def chosen(self) -> str:
        if self.value() in ("no", "yes", "all"):
            return self.value()
        return "all" if self.asked_state == WorkspaceStatus.DELETED else "no"

    def choices(self, changelist: Any) -> Any:
        for lookup, title in self.lookup_choices:
            yield {
                "selected": self.chosen() == lookup,
                "query_string": changelist.get_query_string({self.parameter_name: lookup}),
                "display": title,
            }

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet | None:
        if self.chosen() == "all":
            return queryset
        return queryset.filter(deleted=self.chosen() == "yes")


def with_state(queryset: QuerySet, transition: str, job_prefix: str) -> QuerySet:
    return queryset.annotate(
        state=workspace_status_expression(timezone.now(), transition=transition, job_prefix=job_prefix)
    )


@admin.register(Workspace)
class WorkspaceAdmin(ReadOnlyAdmin):
    list_display = ("name", "owner", "template", "state_badge", "latest_build_link", "last_built", "created")
    list_filter = (WorkspaceStateFilter, DeletedFilter, "template")
    search_fields = ("name", "owner__username", "owner__email", "template__name")
    list_select_related = ("owner", "template", "latest_build__job")
    ordering = ("-created_at",)
    fields = (
        "id", "name", "owner", "organization", "template", "state_badge", "latest_build_link",
        "created_at", "updated_at", "deleted", "build_history",
    )  # fmt: skip
    readonly_fields = fields
    actions = ("start_workspaces", "stop_workspaces", "delete_workspaces")
    change_form_template = "admin/workspaces/workspace/coderd_change_form.html"
    created = when_column("created_at")

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return with_state(super().get_queryset(request), "latest_build__transition", "latest_build__job__")

    @admin.display(description="latest build", ordering="latest_build__build_number")
    def latest_build_link(self, workspace: Workspace) -> str:
        build = workspace.latest_build
        return _link(build, f"#{build.build_number} {build.transition}") if build else "-"

    @admin.display(description="last built", ordering="latest_build__created_at")
    def last_built(self, workspace: Workspace) -> str:
        return when(workspace.latest_build.created_at) if workspace.latest_build else "-"

    @admin.display(description="state", ordering="state")
    def state_badge(self, workspace: Workspace) -> str:
        return state_badge(workspace.state if workspace.latest_build_id else None)

    @admin.display(description="builds")
    def build_history(self, workspace: Workspace) -> str:
        builds = list(
            with_state(workspace.builds.all(), "transition", "job__")
            .select_related("initiator", "job")
            .order_by("-build_number")[: BUILDS_SHOWN + 1]
        )
        if not builds:
            return "-"
        now = timezone.now()
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    _link(b, f"#{b.build_number}"),
                    b.transition,
                    state_badge(b.state),
                    b.initiator.username if b.initiator else "-",
                    job_duration(b.job, now),
                    when(b.created_at),
                )
                for b in builds[:BUILDS_SHOWN]
            ),
        )
        more = ""
        if len(builds) > BUILDS_SHOWN:
            url = (
                reverse("admin:workspaces_workspacebuild_changelist")
                + f"?workspace__id__exact={workspace.pk}"
            )
            more = format_html('<p><a href="{}">All builds of this workspace</a></p>', url)
        return format_html(
            '<table class="coderd-builds"><thead><tr><th>build</th><th>transition</th><th>state</th>'
            "<th>initiator</th><th>duration</th><th>created</th></tr></thead><tbody>{}</tbody></table>{}",
            rows,
            more,
        )

    # --- start / stop / delete buttons on the workspace's page ---

    def get_urls(self) -> list:
        view = self.admin_site.admin_view
        return [
            path(
                "<uuid:object_id>/build/<str:transition>/",
                view(self.build_view),
                name="workspaces_workspace_build",
            ),
            *super().get_urls(),
        ]

    def can_build(self, request: HttpRequest, workspace: Workspace) -> bool:
        from coderd.users.auth import can_change_workspace

        return can_change_workspace(request.user, workspace)

    def render_change_form(
        self, request: HttpRequest, context: dict, *args: Any, obj: Any = None, **kw: Any
    ) -> Any:
        if obj is not None:
            context["can_build"] = self.can_build(request, obj) and not obj.deleted
            context["build_urls"] = {
                t: reverse("admin:workspaces_workspace_build", args=[obj.pk, t]) for t in Transition.values
            }
        return super().render_change_form(request, context, *args, obj=obj, **kw)

    def build_view(self, request: HttpRequest, object_id: Any, transition: str) -> HttpResponse:
        """POST: queue a start, stop or delete build (services.create_build, as the API). A GET of
        delete asks first."""
        workspace = get_object_or_404(Workspace, pk=object_id)
        if transition not in Transition.values:
            raise PermissionDenied
        page = reverse("admin:workspaces_workspace_change", args=[workspace.pk])
        if not self.can_build(request, workspace):
            raise PermissionDenied
        if request.method != "POST":
            if transition != Transition.DELETE:
                return HttpResponseRedirect(page)
            context = {
                **self.admin_site.each_context(request),
                "title": "Are you sure?",
                "subtitle": None,
                "object": workspace,
                "opts": self.opts,
                "app_label": self.opts.app_label,
                "page_url": page,
            }
            return TemplateResponse(request, "admin/workspaces/workspace/coderd_delete_confirm.html", context)
        try:
            build = services.create_build(request.user, workspace, transition)
        except APIError as exc:
            self.message_user(request, f"{workspace}: {describe(exc)}", messages.ERROR)
            return HttpResponseRedirect(page)
        self.log_change(request, workspace, f"Queued a {transition} build.")
        self.message_user(
            request, f"{workspace}: build #{build.build_number} ({transition}) is queued.", messages.SUCCESS
        )
        return HttpResponseRedirect(reverse("admin:workspaces_workspacebuild_change", args=[build.pk]))

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
        "__str__", "workspace_link", "owner", "transition", "state_badge", "initiator", "template_version",
        "took", "created",
    )  # fmt: skip
    list_filter = (JobStatusFilter, "transition", "created_at")
    search_fields = ("workspace__name", "workspace__owner__username", "template_version__name")
    list_select_related = ("workspace__owner", "initiator", "template_version", "job")
    ordering = ("-created_at",)
    fields = (
        "id", "workspace_link", "build_number", "transition", "state_badge", "status", "initiator",
        "template_version", "created_at", "took", "job_link", "job_error", "logs",
    )  # fmt: skip
    readonly_fields = fields
    actions = ("cancel_builds",)
    created = when_column("created_at")

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return with_state(with_job_status(super().get_queryset(request), "job__"), "transition", "job__")

    @admin.display(description="workspace", ordering="workspace__name")
    def workspace_link(self, build: WorkspaceBuild) -> str:
        return _link(build.workspace)

    @admin.display(description="owner", ordering="workspace__owner__username")
    def owner(self, build: WorkspaceBuild) -> str:
        return build.workspace.owner.username

    @admin.display(description="state", ordering="state")
    def state_badge(self, build: WorkspaceBuild) -> str:
        return state_badge(
            getattr(build, "state", None) or workspace_status(build.transition, build.job.status)
        )

    @admin.display(description="job status", ordering="job_status")
    def status(self, build: WorkspaceBuild) -> str:
        return status_badge(build.job_status)

    @admin.display(description="duration")
    def took(self, build: WorkspaceBuild) -> str:
        return job_duration(build.job)

    @admin.display(description="job")
    def job_link(self, build: WorkspaceBuild) -> str:
        return _link(build.job, str(build.job_id))

    @admin.display(description="error")
    def job_error(self, build: WorkspaceBuild) -> str:
        return (
            format_html('<span class="coderd-error">{}</span>', build.job.error) if build.job.error else "-"
        )

    @admin.display(description="logs")
    def logs(self, build: WorkspaceBuild) -> str:
        follow = f"/api/v2/workspacebuilds/{build.pk}/logs" if build.job.completed_at is None else None
        return render_job_logs(build.job_id, follow)

    @admin.action(description="Cancel selected builds")
    def cancel_builds(self, request: HttpRequest, queryset: QuerySet) -> None:
        run_each(
            self, request, queryset, lambda b: services.cancel_build(request.user, b),
            "Canceled {count} build(s).", log_message="Canceled.",
        )  # fmt: skip
