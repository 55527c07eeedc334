import os
import sys

from django.apps import AppConfig


class MetricsConfig(AppConfig):
    name = "metrics"
    verbose_name = "Metrics"

    def ready(self) -> None:
        from metrics import autostart, signals

        signals.connect()
        autostart.for_runserver(sys.argv, os.environ)
