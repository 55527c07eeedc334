from django.apps import AppConfig


class AuditConfig(AppConfig):
    name = "coderd.audit"
    label = "audit"
    verbose_name = "Audit trail"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from coderd.audit import signals  # noqa: F401  (registers the admin login receivers)
