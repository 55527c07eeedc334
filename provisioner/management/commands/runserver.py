"""`manage.py runserver`: Daphne's (HTTP and websockets) plus in-process provisioner daemons.

`inner_run` runs only in the process that serves (with the autoreloader, in its child, which is
restarted on every code change), so the daemons and the lifecycle hooks start there and nowhere
else. On exit (Ctrl-C, or the reloader restarting the child) running jobs are closed (failed), since
a restart must not wait for a long build.

Bad input (an address Django cannot read, a port past 65535, a bad daemon count) is one line and exit
code 2; a port already in use is one line and exit 1, as `manage.py server` does.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import sys
import threading
from typing import Any

from daphne.management.commands.runserver import Command as DaphneRunserverCommand
from daphne.server import Server
from django.conf import settings
from django.core.management.base import CommandError, CommandParser

from coderd import lifecycle
from coderd.cli import OneLineCommand, whole_number
from coderd.env import MAX_PROVISIONER_DAEMONS

log = logging.getLogger("coderd.runserver")

STOP_TIMEOUT = 5.0


_at_least_zero = whole_number(0)


def _count(value: str) -> int:
    n = _at_least_zero(value)
    if n > MAX_PROVISIONER_DAEMONS:
        raise argparse.ArgumentTypeError(f"{value!r} must be at most {MAX_PROVISIONER_DAEMONS}")
    return n


def _unapplied_migrations() -> bool:
    from django.db import DEFAULT_DB_ALIAS, connections
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connections[DEFAULT_DB_ALIAS])
    return bool(executor.migration_plan(executor.loader.graph.leaf_nodes()))


class _Server(Server):
    """Daphne's server, but a listen failure is kept for the command (Daphne logs it and returns
    normally, so the process would exit 0 with nothing served)."""

    listen_failure: str | None = None

    def listen_error(self, failure: Any) -> None:
        type(self).listen_failure = failure.getErrorMessage()
        self.stop()


class Command(OneLineCommand, DaphneRunserverCommand):
    help = "Serve HTTP and websockets for development, with in-process provisioner daemons."
    server_cls = _Server
    _prog = "runserver"
    _serving = False

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> CommandParser:
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        self._prog = parser.prog
        return parser

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            super().handle(*args, **options)
        except CommandError as exc:
            if self._serving:  # e.g. a system check error: not about the command line
                raise
            # Django's runserver says a bad address:port with exit 1: it is bad input, so 2.
            if not self._called_from_command_line:
                raise CommandError(str(exc), returncode=2) from None
            sys.stderr.write(f"{self._prog}: {exc}\n")
            sys.exit(2)

    def run(self, **options: Any) -> None:
        # Django checked that the port is digits; Daphne would only log that it is out of range.
        if int(self.port) > 65535:
            raise CommandError(f"{options['addrport']!r} has a port outside 0-65535")
        self._serving = True
        super().run(**options)

    def add_arguments(self, parser: Any) -> None:
        super().add_arguments(parser)
        parser.add_argument(
            "--provisioner-daemons",
            type=_count,
            default=None,
            help=f"In-process provisioner daemons, at most {MAX_PROVISIONER_DAEMONS} "
            "[env CODER_PROVISIONER_DAEMONS, default 3]",
        )

    def inner_run(self, *args: Any, **options: Any) -> None:
        if _unapplied_migrations():
            # Django's runserver does not migrate (it says so itself); daemons and metrics would
            # only fail on the missing tables, over and over.
            log.warning(
                "the database is not migrated: provisioner daemons and metrics are not started "
                "(run `manage.py migrate`, or use `manage.py server`, which migrates)"
            )
            super().inner_run(*args, **options)
        else:
            self._serve_with_daemons(*args, **options)
        if _Server.listen_failure is not None:
            # Under the autoreloader this runs in a thread, where sys.exit would end only the
            # thread: leave as Django's own runserver does on a bind error.
            sys.stderr.write(f"{self._prog}: {_Server.listen_failure}\n")
            sys.stderr.flush()
            os._exit(1)

    def _serve_with_daemons(self, *args: Any, **options: Any) -> None:
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
