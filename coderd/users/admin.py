"""Users, organizations, memberships and API keys in the admin.

Status changes and deletion go through coderd.users.services (suspend_user, activate_user,
delete_user, set_user_roles), as the API's do. Passwords are hashed by the forms; an API key's hash
is never shown.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.auth.forms import BaseUserCreationForm
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.db.models import Count, Q, QuerySet
from django.http import HttpRequest
from django.utils import timezone

from coderd.admin import describe, run_each, when_column
from coderd.audit.admin import AuditedModelAdmin
from coderd.errors import APIError
from coderd.users import services
from coderd.users.models import APIKey, Organization, OrganizationMember, Role, User

ROLE_CHOICES = [(r.value, r.label) for r in Role if r != Role.MEMBER]


def roles_field() -> forms.MultipleChoiceField:
    """Site roles as checkboxes; `member` is implicit and never stored."""
    return forms.MultipleChoiceField(
        choices=ROLE_CHOICES,
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="Every user is a member; these roles add to it.",
    )


def _check_name(value: str) -> str:
    try:
        return services.validate_username(value)
    except APIError as exc:
        raise ValidationError(exc.validations[0]["detail"] if exc.validations else exc.message) from None


class UserCreationForm(BaseUserCreationForm):
    """A new user: email, username, roles and a password typed twice (hashed on save)."""

    roles = roles_field()

    class Meta:
        model = User
        fields = ("email", "username", "name", "roles")

    def clean_username(self) -> str:
        return _check_name(self.cleaned_data["username"])

    def clean_email(self) -> str:
        email = User.objects.normalize_email(self.cleaned_data["email"])
        if User.objects.filter(email__iexact=email).exists():
            raise ValidationError("A user with that email already exists.")
        return email


class UserChangeForm(forms.ModelForm):
    """Profile and roles; a new password is optional and hashed. Status changes are actions."""

    roles = roles_field()
    new_password = forms.CharField(
        required=False,
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
        help_text="Leave empty to keep the current password.",
    )

    class Meta:
        model = User
        fields = ("email", "username", "name", "roles")

    def clean_username(self) -> str:
        return _check_name(self.cleaned_data["username"])

    def clean_new_password(self) -> str:
        password = self.cleaned_data.get("new_password", "")
        if password:
            validate_password(password, self.instance)
        return password

    def save(self, commit: bool = True) -> User:
        user = super().save(commit=False)
        if self.cleaned_data.get("new_password"):
            user.set_password(self.cleaned_data["new_password"])
        if commit:
            user.save()
        return user


@admin.register(User)
class UserAdmin(AuditedModelAdmin):
    form = UserChangeForm
    add_form = UserCreationForm
    list_display = (
        "username",
        "email",
        "status",
        "site_roles",
        "live_workspaces",
        "last_seen",
        "created",
    )
    list_filter = ("status", "deleted", "created_at", "last_seen_at")
    search_fields = ("username", "email", "name")
    ordering = ("-created_at",)
    last_seen = when_column("last_seen_at", "last seen")
    created = when_column("created_at")
    date_hierarchy = "created_at"
    readonly_fields = ("id", "status", "last_seen_at", "created_at", "updated_at", "deleted")
    actions = ("suspend_users", "activate_users", "delete_users")
    add_fieldsets = ((None, {"fields": ("email", "username", "name", "roles", "password1", "password2")}),)
    fieldsets = (
        (None, {"fields": ("id", "email", "username", "name", "status")}),
        ("Roles", {"fields": ("roles",)}),
        ("Password", {"fields": ("new_password",)}),
        ("History", {"fields": ("created_at", "updated_at", "last_seen_at", "deleted")}),
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return (
            super()
            .get_queryset(request)
            .annotate(live_workspace_count=Count("workspaces", filter=Q(workspaces__deleted=False)))
        )

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        if obj is None:
            kwargs["form"] = self.add_form
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        return self.add_fieldsets if obj is None else self.fieldsets

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return () if obj is None else self.readonly_fields

    @admin.display(description="roles")
    def site_roles(self, user: User) -> str:
        return ", ".join(user.role_names)

    @admin.display(description="workspaces", ordering="live_workspace_count")
    def live_workspaces(self, user: User) -> int:
        return user.live_workspace_count

    def save_model(self, request: HttpRequest, obj: User, form: Any, change: bool) -> None:
        if not change:
            super().save_model(request, obj, form, change)
            services.ensure_member(obj, services.default_organization())
            return
        # Roles change through the service (who may grant owner), the rest of the profile here.
        new_roles = sorted(form.cleaned_data.get("roles") or [])
        obj.roles = User.objects.values_list("roles", flat=True).get(pk=obj.pk)
        super().save_model(request, obj, form, change)
        if new_roles != sorted(obj.roles):
            try:
                services.set_user_roles(request.user, obj, new_roles)
            except APIError as exc:
                self.message_user(request, f"Roles not changed: {describe(exc)}", messages.ERROR)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Users are soft-deleted by the action below (their history stays), never removed.
        return False

    @admin.action(description="Suspend selected users")
    def suspend_users(self, request: HttpRequest, queryset: QuerySet) -> None:
        run_each(
            self,
            request,
            queryset,
            lambda u: services.suspend_user(request.user, u),
            "Suspended {count} user(s).",
            log_message="Suspended.",
        )

    @admin.action(description="Activate selected users")
    def activate_users(self, request: HttpRequest, queryset: QuerySet) -> None:
        run_each(
            self,
            request,
            queryset,
            lambda u: services.activate_user(request.user, u),
            "Activated {count} user(s).",
            log_message="Activated.",
        )

    @admin.action(description="Delete selected users (keeps their history)")
    def delete_users(self, request: HttpRequest, queryset: QuerySet) -> None:
        run_each(
            self,
            request,
            queryset,
            lambda u: services.delete_user(request.user, u),
            "Deleted {count} user(s).",
            log_message="Deleted (the row and its history stay).",
        )


class MemberInline(admin.TabularInline):
    model = OrganizationMember
    extra = 0
    autocomplete_fields = ("user",)
    fields = ("user", "roles", "created_at")
    readonly_fields = ("created_at",)


@admin.register(Organization)
class OrganizationAdmin(AuditedModelAdmin):
    list_display = ("name", "display_name", "is_default", "member_count", "template_count", "created")
    list_filter = ("is_default",)
    ordering = ("-created_at",)
    created = when_column("created_at")
    search_fields = ("name", "display_name")
    readonly_fields = ("id", "is_default", "created_at", "updated_at")
    fields = ("id", "name", "display_name", "description", "is_default", "created_at", "updated_at")
    inlines = (MemberInline,)

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return (
            super()
            .get_queryset(request)
            .annotate(
                n_members=Count("organizationmember", distinct=True),
                n_templates=Count("templates", filter=Q(templates__deleted=False), distinct=True),
            )
        )

    @admin.display(description="members", ordering="n_members")
    def member_count(self, org: Organization) -> int:
        return org.n_members

    @admin.display(description="templates", ordering="n_templates")
    def template_count(self, org: Organization) -> int:
        return org.n_templates

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Deleting an organization would cascade to its workspaces and jobs.
        return False


@admin.register(OrganizationMember)
class OrganizationMemberAdmin(AuditedModelAdmin):
    list_display = ("user", "organization", "roles", "created")
    list_filter = ("organization",)
    ordering = ("-created_at",)
    created = when_column("created_at")
    search_fields = ("user__username", "user__email", "organization__name")
    list_select_related = ("user", "organization")
    autocomplete_fields = ("user", "organization")


class KeyStateFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("live", "Live"), ("expired", "Expired")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet | None:
        now = timezone.now()
        if self.value() == "live":
            return queryset.filter(expires_at__gt=now)
        if self.value() == "expired":
            return queryset.filter(expires_at__lte=now)
        return None


@admin.register(APIKey)
class APIKeyAdmin(admin.ModelAdmin):
    """Keys are read-only (deleting one revokes it); the secret's hash is never shown."""

    list_display = ("id", "user", "login_type", "token_name", "created", "expires", "used", "live")
    created = when_column("created_at")
    expires = when_column("expires_at")
    used = when_column("last_used", "last used")
    list_filter = (KeyStateFilter, "login_type", "expires_at", "last_used")
    search_fields = ("id", "token_name", "user__username", "user__email")
    list_select_related = ("user",)
    raw_id_fields = ("user",)
    fields = (
        "id",
        "user",
        "login_type",
        "token_name",
        "lifetime_seconds",
        "created_at",
        "expires_at",
        "last_used",
    )
    readonly_fields = fields
    ordering = ("-created_at",)

    @admin.display(boolean=True, description="live")
    def live(self, key: APIKey) -> bool:
        return key.expires_at > timezone.now()

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # keys are issued by login and POST /users/{user}/keys, shown once

    # Deleting a key revokes it, through the service (who may, and the audit trail).
    def delete_model(self, request: HttpRequest, obj: APIKey) -> None:
        services.delete_api_key(request.user, obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet) -> None:
        for key in queryset.select_related("user"):
            services.delete_api_key(request.user, key)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
