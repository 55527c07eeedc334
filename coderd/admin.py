"""The admin site's name, and what every coderd ModelAdmin shares: actions through service functions,
a computed job status as a column and a filter, and job logs rendered in order.

The admin writes workspace, job and user state only through the same service functions as the API
(coderd.workspaces.services, coderd.users.services, provisioner.jobs), so the same rules apply; a
refusal (coderd.errors.APIError) becomes an admin message, never an error page.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from coderd.errors import APIError
from provisioner.models import JobStatus, ProvisionerJobLog, status_expression

admin.site.site_header = "coderd administration"
admin.site.site_title = "coderd admin"
admin.site.index_title = "Control plane"
admin.site.site_url = "/api/v2/docs"  # "View site": there is no other site than the API

# A build's page shows at most this many log lines (the newest are the ones cut, never the order).
MAX_LOG_LINES = 2000


def describe(exc: APIError) -> str:
    """An APIError as one sentence for an admin message: the message, its detail, each field's reason."""
    parts = [exc.message, exc.detail, *(v.get("detail", "") for v in exc.validations)]
    return " ".join(p for p in parts if p)


def run_each(
    modeladmin: admin.ModelAdmin,
    request: HttpRequest,
    objects: Iterable[Any],
    service: Callable[[Any], Any],
    done_message: str,
    log_message: str = "",
) -> int:
    """Call `service(obj)` for each object; refusals are error messages naming the object.

    `done_message` is formatted with `count` (how many succeeded). Returns that count. Each success
    goes in the object's History and Recent actions as `log_message` (default: the action's name);
    the service function itself writes the audit trail.
    """
    done = 0
    for obj in objects:
        try:
            service(obj)
        except APIError as exc:
            modeladmin.message_user(request, f"{obj}: {describe(exc)}", messages.ERROR)
        else:
            done += 1
            modeladmin.log_change(request, obj, log_message or _action_name(modeladmin, request))
    if done:
        modeladmin.message_user(request, done_message.format(count=done), messages.SUCCESS)
    return done


def _action_name(modeladmin: admin.ModelAdmin, request: HttpRequest) -> str:
    action = modeladmin.get_actions(request).get(request.POST.get("action", ""))
    return f"{action[2]}." if action else "Changed by an admin action."


def with_job_status(queryset: QuerySet, prefix: str = "") -> QuerySet:
    """Annotate `job_status` (the job's computed status; `prefix` reaches the job, e.g. "job__")."""
    return queryset.annotate(job_status=status_expression(timezone.now(), prefix=prefix))


class JobStatusFilter(admin.SimpleListFilter):
    """Filter on the `job_status` annotation (status is computed from timestamps, not stored)."""

    title = "status"
    parameter_name = "status"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return list(JobStatus.choices)

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet | None:
        value = self.value()
        if value in JobStatus.values:
            return queryset.filter(job_status=value)
        return None


_STATUS_COLOURS = {
    JobStatus.PENDING: "#6b7280",
    JobStatus.RUNNING: "#2563eb",
    JobStatus.SUCCEEDED: "#15803d",
    JobStatus.CANCELING: "#b45309",
    JobStatus.CANCELED: "#b45309",
    JobStatus.FAILED: "#b91c1c",
}


def status_badge(status: str | None) -> str:
    if not status:
        return "-"
    return format_html('<b style="color:{}">{}</b>', _STATUS_COLOURS.get(status, "inherit"), status)


def render_job_logs(job_id: Any) -> str:
    """A job's log lines in order, as a read-only block for change pages."""
    if job_id is None:
        return "-"
    lines = list(
        ProvisionerJobLog.objects.filter(job_id=job_id)
        .order_by("id")
        .values_list("created_at", "level", "stage", "output")[: MAX_LOG_LINES + 1]
    )
    if not lines:
        return format_html("<i>{}</i>", "No log lines yet.")
    cut = len(lines) > MAX_LOG_LINES
    body = format_html_join(
        "\n",
        "{} {:<5} {}{}",
        (
            (
                created.strftime("%H:%M:%S.%f")[:-3],
                level.upper(),
                f"[{stage}] " if stage else "",
                output,
            )
            for created, level, stage, output in lines[:MAX_LOG_LINES]
        ),
    )
    note = format_html("\n… only the first {} lines are shown", MAX_LOG_LINES) if cut else ""
    return format_html(
        '<pre class="coderd-logs" style="max-height:32em;overflow:auto;white-space:pre-wrap;'
        'margin:0">{}{}</pre>',
        body,
        note,
    )
