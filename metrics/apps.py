from django.apps import AppConfig


class MetricsConfig(AppConfig):
    name = "metrics"
    verbose_name = "Metrics"

    def ready(self) -> None:
        from coderd import lifecycle
        from metrics import autostart, signals

        signals.connect()
        # Order 10: the observer must be in the context before the provisioner starts its daemons.
        lifecycle.on_serve_start(autostart.on_serve_start, order=10)
