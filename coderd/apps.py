from django.apps import AppConfig


class CoderdConfig(AppConfig):
    """The project itself as an app: its system checks, the `server` command, admin templates."""

    name = "coderd"
    verbose_name = "coderd"

    def ready(self) -> None:
        # Importing registers the checks (@register); nothing else happens at start-up.
        from coderd import checks, deploy_checks  # noqa: F401
