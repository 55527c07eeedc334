from django.apps import AppConfig


class MetricsConfig(AppConfig):
    name = "metrics"
    verbose_name = "Metrics"

    def ready(self) -> None:
        from django.conf import settings

        from coderd import lifecycle
        from metrics import autostart, dbquery, signals

        signals.connect()
        if settings.PROMETHEUS_COLLECT_DB_METRICS:
            dbquery.install()
        # Order 10: the observer must be in the context before the provisioner starts its daemons.
        lifecycle.on_serve_start(autostart.on_serve_start, order=10)
