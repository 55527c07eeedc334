"""`manage.py runserver`: Daphne's (HTTP and websockets) plus in-process provisioner daemons.

`inner_run` runs only in the process that serves (with the autoreloader, in its child, which is
restarted on every code change), so the daemons and the lifecycle hooks start there and nowhere
else. On exit (Ctrl-C, or the reloader restarting the child) running jobs are closed (failed), since
a restart must not wait for a long build.
"""

from __future__ import annotations

import atexit
import threading
from typing import Any

from daphne.management.commands.runserver import Command as DaphneRunserverCommand
from django.conf import settings

from coderd import lifecycle
from coderd.cli import OneLineCommand, whole_number

STOP_TIMEOUT = 5.0


_count = whole_number(0)


class Command(OneLineCommand, DaphneRunserverCommand):
    help = "Serve HTTP and websockets for development, with in-process provisioner daemons."

    def add_arguments(self, parser: Any) -> None:
        super().add_arguments(parser)
        parser.add_argument(
            "--provisioner-daemons",
            type=_count,
            default=None,
            help="In-process provisioner daemons [env CODER_PROVISIONER_DAEMONS, default 3]",
        )

    def inner_run(self, *args: Any, **options: Any) -> None:
        from provisioner.daemon import start_in_process

        count = options.get("provisioner_daemons")
        if count is None:
            count = settings.PROVISIONER_DAEMONS
        ctx = lifecycle.serve_started("runserver")
        group = start_in_process(count, observer=ctx.observer)
        once = threading.Lock()

        def stop() -> None:
            if once.acquire(blocking=False):
                group.shutdown(graceful=False, timeout=STOP_TIMEOUT)
                lifecycle.serve_stopping(ctx)

        # The reloader ends this process with sys.exit() from its main thread while we serve in
        # another: atexit is where both ways out meet.
        atexit.register(stop)
        try:
            super().inner_run(*args, **options)
        finally:
            stop()
