"""`manage.py server`: coderd's `coder server`. Migrates, starts the daemons and serves HTTP and websockets.

Every flag has a CODER_* variable; the variables are read once by settings.py and a flag given on the
command line overrides its variable's value in `django.conf.settings` before anything starts, so the
rest of coderd reads one place. Start-up logs only where it serves and the data folder; SIGTERM or
Ctrl-C stops the listener, lets in-process daemons finish their jobs (a second one stops them now,
recorded as failed: coderd.cli.StopSignals, provisionerd's rule too), and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import logging
import socket
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from coderd.cli import Once, OneLineCommand, OneLineParser, StopSignals
from coderd.env import (
    MAX_PROVISIONER_DAEMONS,
    EnvError,
    format_duration,
    invoked_as,
    parse_address,
    parse_bool,
    parse_duration,
    parse_http_url,
    parse_int,
)

logger = logging.getLogger("coderd.server")

# Imported by provisionerd under these names before they moved to coderd.cli.
_Once = Once
__all__ = ["FLAGS", "Command", "OneLineParser", "_Once"]

# Open websockets (log followers, watchers) are asked to close on shutdown; past this they are cut.
GRACEFUL_HTTP_SECONDS = 5.0
BACKLOG = 2048  # uvicorn's default
LOG_LEVELS = ("debug", "info", "warning", "error")


def _key_lifetime(value: str, name: str) -> float:
    # Keys live whole seconds: a session under 1 s would be a key that is never valid.
    return parse_duration(value, name, minimum=1.0)


def _log_level(value: str, name: str) -> str:
    if value.strip().lower() not in LOG_LEVELS:
        raise EnvError(f"{name}={value!r} is not one of {', '.join(LOG_LEVELS)}")
    return value.strip().upper()


@dataclass(frozen=True)
class Flag:
    """A command-line flag, the CODER_* variable it overrides and the setting both end up in."""

    name: str
    env: str
    setting: str
    default: str
    parse: Callable[[str, str], Any]
    help: str
    metavar: str = "VALUE"
    boolean: bool = False


FLAGS: tuple[Flag, ...] = (
    Flag("--http-address", "CODER_HTTP_ADDRESS", "HTTP_ADDRESS", "127.0.0.1:3000", parse_address,
         "Address to serve the API, the admin and websockets on (host:port; port 0 picks a free one).",
         "HOST:PORT"),
    Flag("--access-url", "CODER_ACCESS_URL", "ACCESS_URL", "http://<http-address>", parse_http_url,
         "External URL people and external daemons reach coderd at; its host is an allowed host.",
         "URL"),
    Flag("--provisioner-daemons", "CODER_PROVISIONER_DAEMONS", "PROVISIONER_DAEMONS", "3",
         lambda v, n: parse_int(v, n, minimum=0, maximum=MAX_PROVISIONER_DAEMONS),
         f"Number of provisioner daemons run inside the server, at most {MAX_PROVISIONER_DAEMONS} "
         "(0: only external daemons run jobs).",
         "N"),
    Flag("--prometheus-enable", "CODER_PROMETHEUS_ENABLE", "PROMETHEUS_ENABLE", "false", parse_bool,
         "Serve Prometheus metrics on --prometheus-address (and /metrics for owners and auditors).",
         "BOOL", boolean=True),
    Flag("--prometheus-address", "CODER_PROMETHEUS_ADDRESS", "PROMETHEUS_ADDRESS", "127.0.0.1:2112",
         parse_address, "Address of the unauthenticated metrics listener.", "HOST:PORT"),
    Flag("--prometheus-legacy-metrics", "CODER_PROMETHEUS_LEGACY_METRICS", "PROMETHEUS_LEGACY_METRICS",
         "true", parse_bool,
         "Also export the 2022 names (the _ms histograms, coderd_api_workspace_latest_build_total).",
         "BOOL", boolean=True),
    Flag("--prometheus-collect-db-metrics", "CODER_PROMETHEUS_COLLECT_DB_METRICS",
         "PROMETHEUS_COLLECT_DB_METRICS", "true", parse_bool,
         "Export coderd_db_query_latencies_seconds and coderd_db_query_counts_total (every query).",
         "BOOL", boolean=True),
    Flag("--prometheus-refresh-interval", "CODER_PROMETHEUS_REFRESH_INTERVAL",
         "PROMETHEUS_REFRESH_INTERVAL", "60s", parse_duration,
         "How often the database-derived gauges are recounted (a duration: 1s, 30s, 5m).", "DURATION"),
    Flag("--session-duration", "CODER_SESSION_DURATION", "SESSION_DURATION", "24h", _key_lifetime,
         "How long a session token from login lives.", "DURATION"),
    Flag("--max-token-lifetime", "CODER_MAX_TOKEN_LIFETIME", "MAX_TOKEN_LIFETIME", "720h",
         _key_lifetime, "The longest lifetime an API token may be given.", "DURATION"),
    Flag("--log-level", "CODER_LOG_LEVEL", "LOG_LEVEL", "info", _log_level,
         "Lowest level of log line printed: debug, info, warning or error.", "LEVEL"),
)  # fmt: skip


def _argparse_type(flag: Flag) -> Callable[[str], Any]:
    def convert(value: str) -> Any:
        try:
            return flag.parse(value, flag.name)
        except EnvError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


class _Server:
    """uvicorn's Server, minus its signal handling: the command owns SIGTERM and SIGINT."""

    def __init__(self, config: Any) -> None:
        import uvicorn

        class Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:
                # uvicorn re-raises the signal after stopping, which would end the process with
                # -SIGTERM before the daemons are stopped; the command's handlers set the flags.
                yield

        self.server = Server(config)

    def stop(self, force: bool = False) -> None:
        self.server.should_exit = True
        if force:
            self.server.force_exit = True


class Command(OneLineCommand, BaseCommand):
    help = (
        "Start coderd: migrate the database, start the in-process provisioner daemons (and the "
        "metrics listener when enabled) and serve the API, the admin and websockets. Each flag "
        "overrides its CODER_* environment variable. Set only by variable: CODER_DATA_DIR (data "
        "folder), CODER_PG_CONNECTION_URL (PostgreSQL instead of SQLite), CODER_REDIS_URL, "
        "CODER_SECRET_KEY, CODER_PROVISIONER_DAEMON_PSK, CODER_PROVISIONER_HUNG_JOB_TIMEOUT, "
        "CODER_PROVISIONER_SHELL_SANDBOX and CODER_PROVISIONER_SHELL_BWRAP (the shell scripts' sandbox), "
        "CODER_PROMETHEUS_PUBLIC, CODER_PROMETHEUS_DJANGO_DB_METRICS, CODER_ALLOWED_HOSTS, "
        "CODER_WORKERS and CODER_REPLICAS (for the deployment checks), CODER_DEBUG; docs/configuration.md's "
        "Configuration table says what each does."
    )
    requires_system_checks: list[str] = []  # run in handle(), after the flags are applied
    requires_migrations_checks = False
    suppressed_base_arguments = {
        "--version", "-v", "--verbosity", "--settings", "--pythonpath", "--traceback",
        "--no-color", "--force-color",
    }  # fmt: skip

    def add_arguments(self, parser: CommandParser) -> None:
        for flag in FLAGS:
            extra: dict[str, Any] = {"nargs": "?", "const": True} if flag.boolean else {}
            parser.add_argument(
                flag.name,
                action=Once,
                type=_argparse_type(flag),
                default=None,
                metavar=flag.metavar,
                help=f"{flag.help} [env {flag.env}, default {flag.default}]",
                **extra,
            )

    def handle(self, *args: Any, **options: Any) -> None:
        self._apply_flags(options)
        logging.getLogger().setLevel(settings.LOG_LEVEL)
        # uvicorn's own start and stop lines repeat ours; keep its warnings and errors.
        if settings.LOG_LEVEL != "DEBUG":
            logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
        self._run_checks()

        sock = _bind(settings.HTTP_ADDRESS)
        stop = _StopFlag()
        with stop.installed():
            _migrate()
            http_url = _http_url(sock)
            stop_metrics, observer = _start_metrics(options)
            _start_console()
            try:
                daemons = stop.daemons = _start_daemons(settings.PROVISIONER_DAEMONS, observer)
                try:
                    self._announce(sock, http_url)
                    if not stop.requested:
                        self._serve(sock, stop)
                finally:
                    if settings.PROVISIONER_DAEMONS:
                        logger.info("stopping %d provisioner daemon(s)", settings.PROVISIONER_DAEMONS)
                        stop.waiting_for(daemons.busy())
                    # Graceful: running jobs finish (up to the group's timeout); a second signal
                    # closes them instead (their jobs are recorded as failed).
                    daemons.shutdown(graceful=not stop.forced)
            finally:
                stop_metrics()
        logger.info("stopped")

    def _apply_flags(self, options: dict[str, Any]) -> None:
        for flag in FLAGS:
            value = options.get(flag.name[2:].replace("-", "_"))
            if value is not None:
                setattr(settings, flag.setting, value)
        settings.SESSION_COOKIE_AGE = int(settings.SESSION_DURATION)  # the admin's session too
        if settings.SESSION_DURATION > settings.MAX_TOKEN_LIFETIME:
            # settings.py refuses this for the variables; a flag may have made it so. Login would
            # ask for a key longer than any key may live, and fail every time.
            session, longest = (
                flag if options.get(flag[2:].replace("-", "_")) is not None else env
                for flag, env in (
                    ("--session-duration", "CODER_SESSION_DURATION"),
                    ("--max-token-lifetime", "CODER_MAX_TOKEN_LIFETIME"),
                )
            )
            raise EnvError(
                f"{session} ({format_duration(settings.SESSION_DURATION)}) is longer than "
                f"{longest} ({format_duration(settings.MAX_TOKEN_LIFETIME)})"
            )
        if settings.ACCESS_URL:
            try:
                host = urlsplit(settings.ACCESS_URL).hostname
            except ValueError:  # not a URL at all: the check coderd.E001 stops start-up next
                host = None
            if host and host not in settings.ALLOWED_HOSTS:
                settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, host]

    def _run_checks(self) -> None:
        """System checks as log lines: warnings are printed, errors stop start-up with exit 2."""
        from django.core import checks

        problems = [p for p in checks.run_checks() if not p.is_silenced()]
        for p in problems:
            hint = f" Hint: {p.hint}" if p.hint else ""
            level = logging.ERROR if p.is_serious() else logging.WARNING
            logger.log(level, "%s: %s%s", p.id, p.msg, hint)
        if any(p.is_serious() for p in problems):
            sys.exit(2)

    def _announce(self, sock: socket.socket, http_url: str) -> None:
        from coderd.users.models import User

        logger.info("data folder %s", settings.DATA_DIR)
        logger.info("serving HTTP on %s", http_url)
        if settings.ACCESS_URL:
            logger.info("access URL %s", settings.ACCESS_URL)
        if settings.PROMETHEUS_ENABLE:
            host, port = settings.PROMETHEUS_ADDRESS
            logger.info("serving metrics on http://%s/metrics", _host_port(host, port))
        if not User.objects.exists():
            base = settings.ACCESS_URL or http_url
            logger.info(
                "no user yet: create the first one (an owner) with: curl -X POST %s/api/v2/users/first "
                "-H 'Content-Type: application/json' -d "
                '\'{"email": "admin@example.com", "username": "admin", "password": "<password>"}\'',
                base,
            )

    def _serve(self, sock: socket.socket, stop: _StopFlag) -> None:
        import uvicorn

        from coderd.asgi import application

        config = uvicorn.Config(
            application,
            lifespan="off",
            log_config=None,  # Django's LOGGING already formats every line
            access_log=False,
            timeout_graceful_shutdown=GRACEFUL_HTTP_SECONDS,
            backlog=BACKLOG,
        )
        server = _Server(config)
        stop.server = server
        if stop.requested:  # a signal came while uvicorn was being imported: serve nothing
            server.stop()
        # uvloop, as uvicorn's own runner and gunicorn's UvicornWorker choose when it is installed
        # (uvicorn[standard]): its loop, callbacks from threads included, is the cheaper one.
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(server.server.serve(sockets=[sock]))


def _loop_factory() -> Any:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


class _StopFlag(StopSignals):
    """The server's stop: SIGTERM or Ctrl-C stops uvicorn's loop and lets the in-process daemons
    finish their jobs; a second one also cuts open connections and stops those jobs (StopSignals'
    rule, the same as provisionerd's)."""

    def __init__(self) -> None:
        super().__init__(logger, graceful=self._stop_serving, now=self._stop_now, busy=self._busy)
        self.server: _Server | None = None
        self.daemons: Any = None

    def _busy(self) -> int:
        return self.daemons.busy() if self.daemons is not None else 0

    def _stop_serving(self) -> None:
        if self.server is not None:
            self.server.stop()

    def _stop_now(self) -> None:
        if self.server is not None:
            self.server.stop(force=True)
        if self.daemons is not None:
            self.daemons.close()  # sets flags only: the shutdown waiting in handle() returns soon


def _migrate() -> None:
    """Bring the database up to date, and make sure Redis answers if one is configured; an
    unreachable database or Redis is one line, not a traceback."""
    from django.db import OperationalError

    from coderd.dbmigrate import migrate

    try:
        migrate()  # under an advisory lock on PostgreSQL: replicas may start together
    except OperationalError as exc:
        where = (
            "CODER_PG_CONNECTION_URL" if settings.PG_CONNECTION_URL else f"CODER_DATA_DIR={settings.DATA_DIR}"
        )
        reason = " ".join(str(exc).split())
        sys.stderr.write(f"{invoked_as()}: cannot use the database ({where}): {reason}\n")
        sys.exit(1)
    from coderd.deploy_checks import redis_problem

    problem = redis_problem()
    if problem:
        sys.stderr.write(f"{invoked_as()}: {problem}\n")
        sys.exit(1)


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _http_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    if host in {"0.0.0.0", "::"}:
        host = "127.0.0.1" if host == "0.0.0.0" else "::1"
    return f"http://{_host_port(host, port)}"


def _bind(address: tuple[str, int]) -> socket.socket:
    """Bind the HTTP socket here, so a port in use is one clear line (and port 0 can be reported)."""
    host, port = address
    try:
        family, kind, proto, _, sockaddr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        # Listening now, not when uvicorn starts: a client that read the start-up line is queued
        # in the backlog instead of refused.
        sock.listen(BACKLOG)
    except OSError as exc:
        reason = "address already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
        sys.stderr.write(
            f"{invoked_as()}: cannot listen on {_host_port(host, port)} "
            f"(--http-address / CODER_HTTP_ADDRESS): {reason}\n"
        )
        sys.exit(1)
    sock.set_inheritable(True)
    return sock


# --- Integration points: the metrics and provisioner apps plug in here, and only here. ---


def _start_metrics(options: dict[str, Any]) -> tuple[Callable[[], None], Any]:
    """Start the metrics listener and refresher when enabled; returns (stop, job observer or None)."""
    if not settings.PROMETHEUS_ENABLE:
        return (lambda: None), None
    try:
        from metrics.serving import start_metrics
    except ImportError:
        sys.stderr.write(f"{invoked_as()}: metrics are enabled but metrics.serving is not available\n")
        sys.exit(1)
    return start_metrics()


def _start_console() -> None:
    """The admin console's traffic history: sampled from the metrics from start-up on."""
    from coderd.console import start_sampler

    start_sampler()


def _start_daemons(count: int, observer: Any) -> Any:
    """In-process provisioner daemons (threads) and the hung-job reaper, which runs even with 0."""
    from provisioner.daemon import start_in_process

    return start_in_process(count, observer=observer)
