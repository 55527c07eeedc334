"""Start the metrics listener under `manage.py runserver`, once, in the process that serves.

`manage.py server` and gunicorn start it themselves (`metrics.serving.start_metrics`); runserver
has no start-up hook, so MetricsConfig.ready() asks here. The autoreloader's parent only watches
files and restarts its child (which has RUN_MAIN=true): the listener belongs to that child, or to
the single process of `runserver --noreload`. Other management commands never start it.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Mapping, Sequence

_started = threading.Event()


def should_start(argv: Sequence[str], environ: Mapping[str, str], enabled: bool) -> bool:
    if not enabled or len(argv) < 2 or argv[1] != "runserver":
        return False
    return environ.get("RUN_MAIN") == "true" or "--noreload" in argv


def for_runserver(argv: Sequence[str], environ: Mapping[str, str]) -> None:
    from django.conf import settings

    if _started.is_set() or not should_start(argv, environ, settings.PROMETHEUS_ENABLE):
        return
    _started.set()
    from metrics import serving

    host, port = settings.PROMETHEUS_ADDRESS
    try:
        serving.start_listener(host, port)
    except serving.ListenerError as exc:
        sys.stderr.write(f"coderd runserver: {exc}\n")
        sys.exit(1)
    # The first count of the database gauges, once the app registry is complete (not from ready()).
    threading.Thread(target=_first_refresh, name="metrics-first-refresh", daemon=True).start()


def _first_refresh() -> None:
    import time

    from django.apps import apps

    while not apps.ready:
        time.sleep(0.05)
    from metrics.serving import refresh_database_gauges

    refresh_database_gauges()
