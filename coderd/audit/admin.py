"""The audit trail in the admin: read-only, newest first, filtered by user, action and resource type.

`AuditedModelAdmin` is for the admin's own forms (a user's profile or password, a template's
words, organizations): their saves and deletes are not service calls, so it records them here.
"""

from __future__ import annotations

import json
import re
from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.utils.html import format_html

from coderd.audit.models import Action, AuditLog
from coderd.audit.services import SPECS, fresh, record_change, snapshot


class AuditedModelAdmin(admin.ModelAdmin):
    """Records each form save and delete in the audit trail, with the diff of its fields."""

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        before = snapshot(fresh(obj)) if change else None
        super().save_model(request, obj, form, change)
        record_change(
            Action.WRITE if change else Action.CREATE,
            obj,
            actor=request.user,
            status=200 if change else 201,
            before=before,
        )

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        before = snapshot(obj)
        pk = obj.pk
        super().delete_model(request, obj)
        obj.pk = pk  # Django clears it on delete; the row names what was deleted
        record_change(Action.DELETE, obj, actor=request.user, before=before, after=None)

    def save_formset(self, request: HttpRequest, form: Any, formset: Any, change: bool) -> None:
        # Inline rows (an organization's members): the database still holds their old values here.
        befores = {
            id(f.instance): (f.instance.pk, snapshot(fresh(f.instance)))
            for f in formset.initial_forms
            if f.instance.pk is not None and f.instance._meta.label in SPECS
        }
        super().save_formset(request, form, formset, change)
        for obj in formset.new_objects:
            if obj._meta.label in SPECS:
                record_change(Action.CREATE, obj, actor=request.user, status=201)
        for obj, _fields in formset.changed_objects:
            # Django counts a row as changed when its form text differs (JSON spacing): only real changes.
            if id(obj) in befores and snapshot(fresh(obj)) != befores[id(obj)][1]:
                record_change(Action.WRITE, obj, actor=request.user, before=befores[id(obj)][1])
        for obj in formset.deleted_objects:
            if id(obj) in befores:
                obj.pk, before = befores[id(obj)]  # Django clears the pk on delete
                record_change(Action.DELETE, obj, actor=request.user, before=before, after=None)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet) -> None:
        # One by one, so each deletion has its row (Django's default is one bulk DELETE).
        for obj in queryset:
            self.delete_model(request, obj)


def _audited_password_change(view: Any) -> Any:
    """The admin's own "Change password" page saves the user through Django's form, with no service
    function or signal in between: AdminSite has no hook for it, so its view is wrapped."""

    def password_change(request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        user = request.user
        before = snapshot(fresh(user)) if request.method == "POST" else None
        response = view(request, extra_context)
        if before is not None and response.status_code == 302:  # saved: Django redirects to "done"
            record_change(Action.WRITE, user, actor=user, before=before)
        return response

    return password_change


admin.site.password_change = _audited_password_change(admin.site.password_change)  # type: ignore[method-assign]


_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def _short(value: Any) -> str:
    if value is None or value == "":
        return "-"
    text = json.dumps(value) if isinstance(value, list) else str(value)
    if _UUID.match(text):
        return text[:8]  # as the admin's job lists show ids
    return text if len(text) <= 40 else text[:37] + "..."


class StatusFilter(admin.SimpleListFilter):
    title = "outcome"
    parameter_name = "outcome"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("ok", "Succeeded"), ("failed", "Failed")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet | None:
        if self.value() == "ok":
            return queryset.filter(status_code__lt=400)
        if self.value() == "failed":
            return queryset.filter(status_code__gte=400)
        return None


@admin.register(AuditLog)
class AuditLogAdmin(admin.ModelAdmin):
    list_display = (
        "time", "user", "action", "resource_type", "resource_target", "outcome", "ip", "change",
    )  # fmt: skip
    # Every user, not only those in the trail: that list would be a DISTINCT over the whole trail on
    # each page view, and the trail outgrows the users.
    list_filter = ("action", "resource_type", StatusFilter, "user", "time")
    search_fields = ("resource_target", "user__username", "=ip", "=resource_id")
    list_select_related = ("user",)
    # No date_hierarchy (its year links are a DISTINCT over the whole trail; the time filter does
    # the same job) and one count per page, not two: the trail grows without bound.
    show_full_result_count = False
    ordering = ("-time", "-id")
    fields = (
        "id", "time", "user", "organization", "action", "resource_type", "resource_id", "resource_target",
        "status_code", "ip", "user_agent", "request_id", "diff_json", "additional_fields_json",
    )  # fmt: skip
    readonly_fields = fields

    @admin.display(description="change")
    def change(self, entry: AuditLog) -> str:
        """The diff in one line: `status: active → suspended`; a create names the fields it set; a
        secret only says it changed. The whole diff is on the row's page."""
        number = entry.additional_fields.get("build_number")
        if number and entry.action != Action.WRITE:  # a start, stop or delete: the build it queued
            text = f"build #{number}"
        elif entry.action == Action.CREATE:
            text = f"set {', '.join(sorted(entry.diff))}" if entry.diff else "-"
        else:
            text = (
                "; ".join(
                    f"{name} changed"
                    if values.get("secret")
                    else f"{name}: {_short(values.get('old'))} → {_short(values.get('new'))}"
                    for name, values in sorted(entry.diff.items())
                )
                or "-"
            )
        return text if len(text) <= 80 else text[:77] + "..."

    @admin.display(description="status", ordering="status_code")
    def outcome(self, entry: AuditLog) -> str:
        colour = "#15803d" if entry.status_code < 400 else "#b91c1c"
        return format_html('<b style="color:{}">{}</b>', colour, entry.status_code)

    @admin.display(description="diff")
    def diff_json(self, entry: AuditLog) -> str:
        return format_html('<pre style="margin:0">{}</pre>', json.dumps(entry.diff, indent=2, sort_keys=True))

    @admin.display(description="additional fields")
    def additional_fields_json(self, entry: AuditLog) -> str:
        return format_html(
            '<pre style="margin:0">{}</pre>', json.dumps(entry.additional_fields, indent=2, sort_keys=True)
        )

    # The trail is written by the code that makes changes, never by hand.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
