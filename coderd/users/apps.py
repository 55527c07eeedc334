from django.apps import AppConfig


class UsersConfig(AppConfig):
    name = "coderd.users"
    label = "users"
    verbose_name = "Users and organizations"

    def ready(self) -> None:
        from coderd.users import signals  # noqa: F401 (connects the receivers)
