"""Command-line conventions shared by coderd's commands (`server`, `provisionerd`, `runserver`,
`seed_metrics_data`).

A bad flag value, an unknown flag or a flag given twice is one line on stderr and exit code 2,
never argparse's usage block; the message names the flag, as CODER_* errors name the variable.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
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
