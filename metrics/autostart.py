"""Start the metrics under `manage.py runserver`, once, in the process that serves.

`manage.py server` (and gunicorn's master) call `metrics.serving.start_metrics()` themselves.
runserver calls `coderd.lifecycle.serve_started("runserver")` from its `inner_run`, which runs only in
the serving process (the autoreloader's child, or the only process with --noreload), never in the
reloader's parent nor in other management commands; this hook, registered in MetricsConfig.ready(),
starts the listener there, counts the database gauges once, and hands the in-process daemons their
JobObserver.
"""

from __future__ import annotations

from typing import Any


def should_start(command: str, enabled: bool) -> bool:
    # `server` starts its metrics itself, before its daemons; the hook only serves runserver.
    return enabled and command == "runserver"


def on_serve_start(ctx: Any) -> None:
    from django.conf import settings

    if not should_start(ctx.command, settings.PROMETHEUS_ENABLE):
        return
    from metrics.serving import start_metrics

    stop, observer = start_metrics()
    ctx.observer = observer
    ctx.stops.append(stop)
