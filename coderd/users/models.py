"""Users, organizations, roles and API keys."""

from __future__ import annotations

import hashlib
import secrets
import uuid

from django.contrib.auth.base_user import AbstractBaseUser, BaseUserManager
from django.db import models
from django.db.models import Q
from django.db.models.functions import Lower


class Role(models.TextChoices):
    OWNER = "owner", "Owner"
    USER_ADMIN = "user-admin", "User admin"
    TEMPLATE_ADMIN = "template-admin", "Template admin"
    AUDITOR = "auditor", "Auditor"
    MEMBER = "member", "Member"


class UserStatus(models.TextChoices):
    ACTIVE = "active", "Active"
    DORMANT = "dormant", "Dormant"
    SUSPENDED = "suspended", "Suspended"


class UserManager(BaseUserManager["User"]):
    def create_user(self, email: str, username: str, password: str | None = None, **extra) -> User:
        user = self.model(email=self.normalize_email(email), username=username, **extra)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_superuser(self, email: str, username: str, password: str | None = None, **extra) -> User:
        extra.setdefault("roles", [Role.OWNER])
        return self.create_user(email, username, password, **extra)


class User(AbstractBaseUser):
    """A person. Site-wide roles live in `roles` (Coder's names); every user is a `member`."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    email = models.EmailField(unique=True)
    username = models.CharField(max_length=64, unique=True)
    name = models.CharField(max_length=128, blank=True)
    status = models.CharField(max_length=16, choices=UserStatus.choices, default=UserStatus.ACTIVE)
    roles = models.JSONField(default=list, blank=True, help_text="Site roles besides member.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    last_seen_at = models.DateTimeField(null=True, blank=True)
    deleted = models.BooleanField(default=False)

    objects = UserManager()

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS = ["username"]

    class Meta:
        ordering = ["username"]
        indexes = [
            models.Index(fields=["status"]),
            models.Index(fields=["last_seen_at"]),
        ]
        constraints = [
            models.UniqueConstraint(Lower("username"), name="users_username_lower_unique"),
            # Emails are compared without case (login, the duplicate check): so is their uniqueness.
            models.UniqueConstraint(Lower("email"), name="users_email_lower_unique"),
        ]

    def __str__(self) -> str:
        return self.username

    @property
    def role_names(self) -> list[str]:
        return [Role.MEMBER, *[r for r in self.roles if r != Role.MEMBER]]

    def has_role(self, *roles: str) -> bool:
        return any(r in self.roles for r in roles)

    @property
    def is_owner(self) -> bool:
        return Role.OWNER in self.roles

    # The Django admin asks these: owners may do everything there; auditors get in to read (the
    # console's overview, every list and page) and change nothing. Other roles stay out.
    @property
    def is_active(self) -> bool:  # type: ignore[override]
        return self.status != UserStatus.SUSPENDED and not self.deleted

    @property
    def is_staff(self) -> bool:
        return self.is_active and self.has_role(Role.OWNER, Role.AUDITOR)

    @property
    def is_superuser(self) -> bool:
        return self.is_owner and self.is_active

    def has_perm(self, perm: str, obj: object = None) -> bool:
        if self.is_superuser:
            return True
        return self.is_staff and perm.partition(".")[2].startswith("view_")

    def has_perms(self, perm_list, obj: object = None) -> bool:
        return all(self.has_perm(p, obj) for p in perm_list)

    def has_module_perms(self, app_label: str) -> bool:
        return self.is_staff


class Organization(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=64, unique=True)
    display_name = models.CharField(max_length=128, blank=True)
    description = models.TextField(blank=True)
    is_default = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    members = models.ManyToManyField(User, through="OrganizationMember", related_name="organizations")

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(
                fields=["is_default"], condition=models.Q(is_default=True), name="one_default_organization"
            ),
        ]

    def __str__(self) -> str:
        return self.name


class OrganizationMember(models.Model):
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE)
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="memberships")
    roles = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["organization", "user"], name="one_membership_per_org"),
        ]

    def __str__(self) -> str:
        return f"{self.user} in {self.organization}"


class LoginType(models.TextChoices):
    PASSWORD = "password", "Password (session)"
    TOKEN = "token", "API token"


def hash_secret(secret: str) -> bytes:
    # API secrets are 22 random url-safe characters: a fast hash is enough (as Coder's SHA-256).
    return hashlib.sha256(secret.encode()).digest()


class APIKey(models.Model):
    """A session or API token. The client holds `<id>-<secret>`; only the secret's hash is kept."""

    id = models.CharField(primary_key=True, max_length=10, editable=False)
    hashed_secret = models.BinaryField(editable=False)
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="api_keys")
    login_type = models.CharField(max_length=16, choices=LoginType.choices)
    token_name = models.CharField(max_length=64, blank=True)
    lifetime_seconds = models.PositiveIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    expires_at = models.DateTimeField(db_index=True)
    # Written at most once a minute per key (settings.API_KEY_LAST_USED_WRITE_INTERVAL).
    last_used = models.DateTimeField()

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # A user's named tokens have distinct names (as Coder's); unnamed ones are not compared.
            models.UniqueConstraint(
                "user",
                "token_name",
                condition=Q(login_type="token") & ~Q(token_name=""),
                name="apikey_token_name_unique",
            ),
        ]
        indexes = [
            # Active users in the last hour: a range on last_used, distinct user_id, from the index.
            models.Index(fields=["last_used", "user"], name="apikey_last_used_user"),
        ]

    def __str__(self) -> str:
        return f"{self.id} ({self.user}, {self.login_type})"

    @staticmethod
    def new_id_and_secret() -> tuple[str, str]:
        return secrets.token_urlsafe(8)[:10].replace("-", "x"), secrets.token_urlsafe(16)
