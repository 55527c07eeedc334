"""`manage.py provisionerd start`: an external provisioner daemon (Coder's `coder provisionerd start`).

    python manage.py provisionerd start --url https://coder.example.com --psk KEY \
        [--name N] [--provisioner-types echo,shell] [--organization ORG] [--prometheus-address HOST:PORT]

It connects to coderd's serve websocket with the pre-shared key and runs jobs here (shell scripts
run under this machine's CODER_DATA_DIR/workspaces). It reconnects with backoff when coderd goes
away. Ctrl-C or SIGTERM: finish the running job, then exit; a second one: stop the running job now
(it is recorded failed) and exit (coderd.cli.StopSignals, the server's rule too).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import socket
import sys
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from coderd.cli import Once as _Once
from coderd.cli import OneLineCommand, StopSignals
from coderd.env import (
    EnvError,
    invoked_as,
    parse_address,
    parse_bool,
    parse_duration,
    parse_http_url,
    psk_problem,
)
from provisioner.runners import KNOWN_PROVISIONERS

logger = logging.getLogger("provisioner.provisionerd")


# An idle daemon waits this long at most between two asks for a job: past it, builds would sit
# queued for hours (and a huge value would overflow the wait).
MAX_POLL_INTERVAL = 3600.0


def _url(value: str) -> str:
    try:
        return parse_http_url(value, "--url")
    except EnvError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _poll_interval(value: str, name: str) -> float:
    return parse_duration(value, name, maximum=MAX_POLL_INTERVAL)


def _types(value: str) -> list[str]:
    types = [t.strip() for t in value.split(",") if t.strip()]
    unknown = [t for t in types if t not in KNOWN_PROVISIONERS]
    if not types or unknown:
        raise argparse.ArgumentTypeError(
            f"--provisioner-types={value!r}: use a comma-separated list of {', '.join(KNOWN_PROVISIONERS)}"
        )
    return list(dict.fromkeys(types))


def _wrap(parse: Any, name: str) -> Any:
    def convert(value: str) -> Any:
        try:
            return parse(value, name)
        except EnvError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


# flag -> (environment variable, default, help); the default as --help shows it is DEFAULT_SHOWN's.
ENV = {
    "url": ("CODER_URL", None, "URL of coderd"),
    "psk": ("CODER_PROVISIONER_DAEMON_PSK", None, "Pre-shared key coderd expects from external daemons"),
    "name": ("CODER_PROVISIONER_DAEMON_NAME", "<hostname>", "Name shown in coderd's daemon list"),
    "provisioner_types": ("CODER_PROVISIONER_TYPES", "echo,shell", "Provisioners this daemon runs"),
    "organization": ("CODER_ORGANIZATION", "default", "Organization whose jobs to run (id or name)"),
    "poll_interval": (
        "CODER_PROVISIONER_DAEMON_POLL_INTERVAL",
        "1s",
        "How often an idle daemon asks for a job (at most 1h)",
    ),
    "prometheus_enable": ("CODER_PROMETHEUS_ENABLE", "false", "Serve this daemon's metrics"),
    "prometheus_address": ("CODER_PROMETHEUS_ADDRESS", "127.0.0.1:2112", "Address of the metrics listener"),
}


DEFAULT_SHOWN = {"name": "this machine's hostname", "organization": "the default organization"}


class Command(OneLineCommand, BaseCommand):
    help = "Run an external provisioner daemon: `provisionerd start --url URL --psk KEY`."
    requires_system_checks: list[str] = []
    requires_migrations_checks = False
    suppressed_base_arguments = {
        "--version", "-v", "--verbosity", "--settings", "--pythonpath", "--traceback",
        "--no-color", "--force-color",
    }  # fmt: skip

    def add_arguments(self, parser: CommandParser) -> None:
        # Optional for argparse so that a missing subcommand gets our line naming it, not argparse's
        # "the following arguments are required: action".
        parser.usage = "%(prog)s start --url URL --psk KEY [options]"
        parser.add_argument(
            "subcommand", nargs="?", choices=["start"], metavar="start", help="connect to coderd and run jobs"
        )
        types = {
            "url": _url,
            "psk": str,
            "name": str,
            "provisioner_types": _types,
            "organization": str,
            "poll_interval": _wrap(_poll_interval, "--poll-interval"),
            "prometheus_address": _wrap(parse_address, "--prometheus-address"),
        }
        metavars = {
            "url": "URL",
            "psk": "KEY",
            "name": "NAME",
            "provisioner_types": "TYPES",
            "organization": "ORG",
            "poll_interval": "DURATION",
            "prometheus_enable": "BOOL",
            "prometheus_address": "HOST:PORT",
        }
        for dest, (env, default, text) in ENV.items():
            flag = "--" + dest.replace("_", "-")
            extra: dict[str, Any] = (
                {"nargs": "?", "const": True, "type": _wrap(parse_bool, flag)}
                if dest == "prometheus_enable"
                else {"type": types[dest]}
            )
            parser.add_argument(
                flag,
                dest=dest,
                action=_Once,
                metavar=metavars[dest],
                default=None,
                help=f"{text} [env {env}, "
                + ("required" if default is None else f"default {DEFAULT_SHOWN.get(dest, default)}")
                + "]",
                **extra,
            )

    def _value(self, options: dict[str, Any], dest: str) -> Any:
        """The flag, else its CODER_* variable (parsed as the flag would be), else the default."""
        if options.get(dest) is not None:
            return options[dest]
        env, default, _ = ENV[dest]
        raw = os.environ.get(env)
        if raw is None:
            if default is None:
                self._fail(f"--{dest.replace('_', '-')} is required (or set {env})")
            if dest == "name":
                return socket.gethostname()
            raw = default
        parsers = {
            "url": _url,
            "provisioner_types": _types,
            "poll_interval": lambda v: _poll_interval(v, env),
            "prometheus_address": lambda v: parse_address(v, env),
            "prometheus_enable": lambda v: parse_bool(v, env),
        }
        try:
            return parsers.get(dest, str)(raw)
        except (argparse.ArgumentTypeError, EnvError) as exc:
            self._fail(str(exc).replace(f"--{dest.replace('_', '-')}=", f"{env}="))

    def _fail(self, message: str, code: int = 2) -> None:
        sys.stderr.write(f"{invoked_as()}: {message}\n")
        sys.exit(code)

    def handle(self, *args: Any, **options: Any) -> None:
        from provisioner.remote import Refused, RemoteDaemon

        if options.get("subcommand") is None:
            self._fail(
                "missing subcommand: start (manage.py provisionerd start --url URL --psk KEY; see --help)"
            )
        logging.getLogger().setLevel(settings.LOG_LEVEL)
        url = self._value(options, "url")
        psk = self._value(options, "psk")
        if not psk:
            self._fail("--psk must not be empty")
        if psk_problem(psk):  # it travels in a header; never echoed
            self._fail(f"--psk {psk_problem(psk)}")
        name = self._value(options, "name")
        types = self._value(options, "provisioner_types")
        organization = self._value(options, "organization")
        poll = self._value(options, "poll_interval")
        # Giving --prometheus-address on the command line asks for metrics.
        enable = options.get("prometheus_address") is not None or self._value(options, "prometheus_enable")
        observer, stop_metrics = None, None
        if enable:
            host, port = self._value(options, "prometheus_address")
            from metrics.serving import ListenerError, start_daemon_metrics

            try:
                stop_metrics, observer = start_daemon_metrics(host, port)
            except ListenerError as exc:
                self._fail(str(exc), code=1)
            logger.info("serving metrics on http://%s:%d/", host, port)

        # Ctrl-C and SIGTERM alike: the first lets the running job finish, a second stops it now
        # (recorded failed), as `manage.py server` does (StopSignals). A job that reaches this
        # daemon after the first signal runs too, and the wait is said then.
        stop = StopSignals(
            logger,
            graceful=lambda: daemon.shutdown(),
            now=lambda: daemon.close(),
            busy=lambda: int(daemon.running is not None),
        )
        daemon = RemoteDaemon(
            url,
            psk,
            name,
            types,
            organization=organization,
            observer=observer,
            poll_interval=poll,
            on_job=lambda spec: stop.waiting_for(1) if stop.requested else None,
        )
        stack = contextlib.ExitStack()
        stack.enter_context(stop.installed())
        logger.info(
            "provisionerd %s: %s for %s, data folder %s", name, ",".join(types), url, settings.DATA_DIR
        )
        if "shell" in types:
            from provisioner.runners.shell import sandbox_notice

            logger.log(*sandbox_notice(daemon.runners.get("shell")))
        try:
            daemon.run()
        except Refused as exc:
            # Retrying cannot help: one line, exit 1 (the flags parsed; coderd said no).
            self._fail(
                f"{exc} at {daemon.url}: check --psk (coderd's CODER_PROVISIONER_DAEMON_PSK), "
                "--organization and --url",
                code=1,
            )
        finally:
            stack.close()
            if stop_metrics is not None:
                stop_metrics()
        logger.info("stopped")
