from django.apps import AppConfig


class CoderdConfig(AppConfig):
    """The project itself as an app: its system checks, the `server` command, admin templates."""

    name = "coderd"
    verbose_name = "coderd"

    def ready(self) -> None:
        from django.contrib import admin
        from django.contrib.auth.models import Group

        # Importing registers the checks (@register) and the receivers; nothing else happens at start-up.
        from coderd import checks, deploy_checks, signals  # noqa: F401

        # Roles are coderd's own (User.roles): Django's groups mean nothing here. The admin app's
        # ready() (earlier in INSTALLED_APPS) has registered them by now.
        if admin.site.is_registered(Group):
            admin.site.unregister(Group)
