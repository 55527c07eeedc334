from django.apps import AppConfig


class ProvisionerConfig(AppConfig):
    name = "provisioner"
    verbose_name = "Provisioner jobs and daemons"

    def ready(self) -> None:
        from provisioner import signals  # noqa: F401 - connects the receivers
