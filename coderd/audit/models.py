"""The audit trail: one row per change a person made (or tried to make), as Coder's `audit_logs`."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone


class Action(models.TextChoices):
    # Coder's codersdk.AuditAction values that this control plane can produce.
    CREATE = "create"
    WRITE = "write"
    DELETE = "delete"
    START = "start"
    STOP = "stop"
    LOGIN = "login"
    LOGOUT = "logout"


class ResourceType(models.TextChoices):
    # Coder's codersdk.ResourceType values for the resources this control plane has.
    TEMPLATE = "template", "Template"
    TEMPLATE_VERSION = "template_version", "Template version"
    USER = "user", "User"
    WORKSPACE = "workspace", "Workspace"
    WORKSPACE_BUILD = "workspace_build", "Workspace build"
    API_KEY = "api_key", "API key or session"
    ORGANIZATION = "organization", "Organization"
    ORGANIZATION_MEMBER = "organization_member", "Organization member"


class AuditLog(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    time = models.DateTimeField(default=timezone.now)
    # SET_NULL, not CASCADE: the trail outlives what it is about (users are soft-deleted anyway).
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    organization = models.ForeignKey(
        "users.Organization", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    ip = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.TextField(blank=True)
    resource_type = models.CharField(max_length=32, choices=ResourceType.choices)
    # As Coder: an API key's resource id is its user's id (the key's own id is not a UUID).
    resource_id = models.UUIDField()
    resource_target = models.CharField(max_length=256, blank=True)
    action = models.CharField(max_length=16, choices=Action.choices)
    diff = models.JSONField(default=dict, blank=True)
    status_code = models.PositiveSmallIntegerField()
    additional_fields = models.JSONField(default=dict, blank=True)
    request_id = models.UUIDField(null=True, blank=True)

    class Meta:
        ordering = ("-time", "-id")
        indexes = [
            models.Index(fields=["-time", "-id"], name="audit_time_idx"),
            models.Index(fields=["user", "-time"], name="audit_user_time_idx"),
            # One object's history (q=resource_id:, the admin's search by id).
            models.Index(fields=["resource_id", "-time"], name="audit_resource_time_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.action} {self.resource_type} {self.resource_target or self.resource_id}"

    @property
    def succeeded(self) -> bool:
        return self.status_code < 400
