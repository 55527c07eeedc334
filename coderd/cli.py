"""Command-line conventions shared by coderd's commands (`server`, `provisionerd`, `runserver`,
`seed_metrics_data`).

A bad flag value, an unknown flag or a flag given twice is one line on stderr and exit code 2,
never argparse's usage block; the message names the flag, as CODER_* errors name the variable.
Ctrl-C and SIGTERM follow one rule in every long-running command (`StopSignals`).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import re
import signal
from collections.abc import Callable, Iterator
from typing import Any

from django.core.management.base import CommandParser


class OneLineParser(CommandParser):
    """Django's CommandParser whose errors are one line (`<prog>: <message>`) and exit code 2.

    A command uses it by swapping the class of the parser Django builds:
    `parser = super().create_parser(...); parser.__class__ = OneLineParser`.
    """

    def error(self, message: str) -> None:  # type: ignore[override]
        if self.called_from_command_line:
            # "argument --x: --x='y' is not ..." says the flag's name twice: keep the second.
            message = re.sub(r"^argument (\S+): (?=\1=)", "", message)
            self.exit(2, f"{self.prog}: {message}\n")
        super().error(message)


class Once(argparse.Action):
    """Stores a flag's value, refusing the flag a second time (which value would win is a guess)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: Any = None,
    ) -> None:
        given = namespace.__dict__.setdefault("_given", set())
        if self.dest in given:
            parser.error(f"{option_string} given twice")
        given.add(self.dest)
        setattr(namespace, self.dest, values)


class OneLineCommand:
    """A management command mixin (listed before BaseCommand): errors in the flags are one line and
    exit code 2 (OneLineParser), and a flag must be spelt out (`--http` never means `--http-address`)."""

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> CommandParser:
        parser = super().create_parser(prog_name, subcommand, **kwargs)  # type: ignore[misc]
        parser.__class__ = OneLineParser
        parser.allow_abbrev = False
        return parser


def whole_number(minimum: int) -> Callable[[str], int]:
    """An argparse `type`: a whole number of at least `minimum`."""

    def parse(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
        if n < minimum:
            raise argparse.ArgumentTypeError(f"{value!r} must be at least {minimum}")
        return n

    return parse


class StopSignals:
    """Coder's rule for stopping a command that runs jobs, the same for SIGINT (Ctrl-C) and SIGTERM:
    the first signal stops gracefully (no new job; a running job finishes and is reported), a second
    one stops now (a running job is stopped and recorded as failed). Each step is said in the log,
    and while running jobs are waited for, how to take the next step ("press Ctrl-C again to stop
    now").

    `graceful` and `now` run inside the signal handler: they must only set flags (Events, uvicorn's
    should_exit), never wait or take a lock another thread may hold; `busy` (jobs running now) only
    reads attributes.
    """

    def __init__(
        self,
        logger: logging.Logger,
        graceful: Callable[[], None] = lambda: None,
        now: Callable[[], None] = lambda: None,
        busy: Callable[[], int] = lambda: 0,
    ) -> None:
        self.logger = logger
        self.graceful = graceful
        self.now = now
        self.busy = busy
        self.first: signal.Signals | None = None
        self.forced = False
        self._told_waiting = False

    @property
    def requested(self) -> bool:
        return self.first is not None

    def again(self) -> str:
        """How to force the stop, in the words of the signal that asked for the graceful one."""
        if self.first == signal.SIGINT:
            return "press Ctrl-C again"
        return f"send {self.first.name if self.first else 'SIGTERM'} again"

    def handle(self, signum: int, frame: Any = None) -> None:
        sig = signal.Signals(signum)
        if self.first is None:
            self.first = sig
            self.logger.info("received %s: stopping", sig.name)
            self.waiting_for(self.busy())
            self.graceful()
        elif not self.forced:
            self.forced = True
            self.logger.warning(
                "received %s again: stopping running jobs now (they are recorded as failed)", sig.name
            )
            self.now()

    def waiting_for(self, jobs: int) -> None:
        """Say (once) that the stop waits for `jobs` running jobs, and how not to wait."""
        if jobs and not self.forced and not self._told_waiting:
            self._told_waiting = True
            self.logger.warning(
                "waiting for %d running job(s) to finish: %s to stop now (they are recorded as failed)",
                jobs,
                self.again(),
            )

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopSignals]:
        previous = {sig: signal.signal(sig, self.handle) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
