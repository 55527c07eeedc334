"""Command-line conventions shared by coderd's commands (`server`, `provisionerd`).

A bad flag value, an unknown flag or a flag given twice is one line on stderr and exit code 2,
never argparse's usage block; the message names the flag, as CODER_* errors name the variable.
"""

from __future__ import annotations

import argparse
import re
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
