"""The admin site's name, and what every coderd ModelAdmin shares: actions through service functions,
a computed job status as a column and a filter, and job logs rendered in order.

The admin writes workspace, job and user state only through the same service functions as the API
(coderd.workspaces.services, coderd.users.services, provisioner.jobs), so the same rules apply; a
refusal (coderd.errors.APIError) becomes an admin message, never an error page.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from django.contrib import admin, messages
from django.contrib.humanize.templatetags.humanize import naturaltime
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


# Job status badge classes (coderd/static/coderd/console.css); workspace states have one class each.
_STATE_CLASS = {
    JobStatus.PENDING: "pending",
    JobStatus.RUNNING: "busy",
    JobStatus.SUCCEEDED: "ok",
    JobStatus.CANCELING: "warn",
    JobStatus.CANCELED: "warn",
    JobStatus.FAILED: "bad",
}


def status_badge(status: str | None) -> str:
    """A job's status as a badge."""
    if not status:
        return "-"
    return format_html(
        '<span class="coderd-badge coderd-{}">{}</span>', _STATE_CLASS.get(status, "off"), status
    )


def state_badge(state: str | None) -> str:
    """A workspace's (or a build's) state, Coder's words: running is good, not work in progress."""
    if not state:
        return "-"
    return format_html('<span class="coderd-badge coderd-state-{}">{}</span>', state, state)


# --- times people read --------------------------------------------------------------------------


def when(value: datetime | None) -> str:
    """'3 minutes ago', with the exact UTC time (to the second) on hover."""
    if value is None:
        return "-"
    exact = value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return format_html(
        '<time datetime="{}" title="{}">{}</time>', value.isoformat(), exact, naturaltime(value)
    )


def when_column(field: str, description: str | None = None) -> Callable[[Any, Any], str]:
    """A list column showing `field` as `when()` does, sortable by the field."""

    @admin.display(description=description or field.removesuffix("_at").replace("_", " "), ordering=field)
    def column(self: Any, obj: Any) -> str:
        return when(getattr(obj, field))

    column.__name__ = f"{field}_when"
    return column


def format_seconds(seconds: float | None) -> str:
    """A duration for people: 850 ms, 12.4 s, 3 m 05 s, 2 h 07 m."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} m {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} m"


def job_duration(job: Any, now: datetime | None = None) -> str:
    """How long a job ran (started to completed), or has been running, or waited (not started)."""
    if job is None:
        return "-"
    if job.started_at is None:
        if job.completed_at is not None:
            return "-"  # canceled before a daemon took it
        waited = (now or timezone.now()) - job.created_at
        return format_html('<span title="waiting for a daemon">queued {}</span>', format_seconds(_s(waited)))
    end = job.completed_at or now or timezone.now()
    text = format_seconds(_s(end - job.started_at))
    return text if job.completed_at else format_html('<span title="still running">{} …</span>', text)


def _s(delta: timedelta) -> float:
    return max(0.0, delta.total_seconds())


def render_job_logs(job_id: Any, follow_url: str | None = None) -> str:
    """A job's log lines in order, as a read-only block for change pages. With `follow_url` (the
    API's follow websocket, for a job not yet ended) coderd/logs.js appends lines as they come."""
    if job_id is None:
        return "-"
    rows = list(
        ProvisionerJobLog.objects.filter(job_id=job_id)
        .order_by("id")
        .values_list("id", "created_at", "level", "stage", "output")[: MAX_LOG_LINES + 1]
    )
    cut = len(rows) > MAX_LOG_LINES
    rows = rows[:MAX_LOG_LINES]
    body = format_html_join(
        "",
        '<span class="coderd-log coderd-log-{}">{} {:<5} {}{}</span>\n',
        (
            (
                level,
                created.astimezone(UTC).strftime("%H:%M:%S.%f")[:-3],
                level.upper(),
                f"[{stage}] " if stage else "",
                output,
            )
            for _id, created, level, stage, output in rows
        ),
    )
    note = format_html("… only the first {} lines are shown\n", MAX_LOG_LINES) if cut else ""
    follow = ""
    if follow_url and not cut:
        after = rows[-1][0] if rows else 0
        sep = "&" if "?" in follow_url else "?"
        follow = format_html(' data-follow="{}{}follow&amp;after={}"', follow_url, sep, after)
    empty = "" if rows else format_html('<i class="coderd-log-empty">{}</i>\n', "No log lines yet.")
    return format_html(
        '<div class="coderd-logs-box"><pre class="coderd-logs"{}>{}{}{}</pre>'
        '<p class="coderd-logs-state help"></p></div>',
        follow,
        empty,
        body,
        note,
    )
