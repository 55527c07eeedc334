"""Configuration checks: `manage.py check` (and `manage.py server`) tell an operator what is wrong.

A value that cannot be parsed at all stops settings loading (coderd.env.EnvError, one line, exit 2);
these checks catch values that parse but do not fit together. Ids are stable: `coderd.E00N` stops
the server, `coderd.W00N` is printed and the server starts anyway.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.checks import Error, Warning, register

from coderd.datadir import exposed
from coderd.env import EnvError, parse_http_url

# Shorter pre-shared keys and secret keys are guessable; Django asks 50 for SECRET_KEY.
MIN_PSK_LENGTH = 16
MIN_SECRET_KEY_LENGTH = 32


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _same_listener(a: tuple[str, int], b: tuple[str, int]) -> bool:
    wildcard = {"0.0.0.0", "::", ""}
    return a[1] == b[1] and a[1] != 0 and (a[0] == b[0] or a[0] in wildcard or b[0] in wildcard)


@register("coderd")
def check_configuration(app_configs: Sequence[Any] | None = None, **kwargs: Any) -> list:
    problems: list = []

    access_url = getattr(settings, "ACCESS_URL", "")
    if access_url:
        try:
            parse_http_url(access_url, "CODER_ACCESS_URL")
        except EnvError as exc:
            problems.append(
                Error(
                    f"{exc}.",
                    hint="Set it to the URL people and daemons use to reach coderd, "
                    "e.g. https://coder.example.com.",
                    id="coderd.E001",
                )
            )

    if settings.PROMETHEUS_ENABLE and _same_listener(settings.HTTP_ADDRESS, settings.PROMETHEUS_ADDRESS):
        problems.append(
            Error(
                "CODER_PROMETHEUS_ADDRESS is the same listener as CODER_HTTP_ADDRESS.",
                hint="Give the metrics listener its own port (default 127.0.0.1:2112).",
                id="coderd.E002",
            )
        )

    # coderd.E003 (CODER_REDIS_URL not a Redis URL) is now refused when settings load
    # (coderd.env.parse_redis_url): one line, exit 2, the URL and its password never echoed.

    if settings.DEBUG:
        problems.append(
            Warning(
                "CODER_DEBUG is on: error pages show settings and source code.",
                hint="Unset CODER_DEBUG outside development.",
                id="coderd.W001",
            )
        )

    host = settings.HTTP_ADDRESS[0]
    if not access_url and not _is_loopback(host):
        problems.append(
            Warning(
                f"coderd listens on {host} but CODER_ACCESS_URL is not set.",
                hint="Set CODER_ACCESS_URL to the address others reach coderd at, so that links "
                "and external daemons use it.",
                id="coderd.W002",
            )
        )

    if settings.PROVISIONER_DAEMONS == 0 and not settings.PROVISIONER_DAEMON_PSK:
        problems.append(
            Warning(
                "No provisioner daemon can run builds: CODER_PROVISIONER_DAEMONS is 0 and "
                "CODER_PROVISIONER_DAEMON_PSK is empty.",
                hint="Run in-process daemons (CODER_PROVISIONER_DAEMONS=3) or set a pre-shared key "
                "for external ones (`manage.py provisionerd`).",
                id="coderd.W003",
            )
        )

    psk = settings.PROVISIONER_DAEMON_PSK
    if psk and len(psk) < MIN_PSK_LENGTH:
        problems.append(
            Warning(
                f"CODER_PROVISIONER_DAEMON_PSK is shorter than {MIN_PSK_LENGTH} characters.",
                hint="Use a long random key, e.g. `openssl rand -hex 24`.",
                id="coderd.W004",
            )
        )

    if settings.PROMETHEUS_ENABLE and not _is_loopback(settings.PROMETHEUS_ADDRESS[0]):
        problems.append(
            Warning(
                f"The metrics listener is open on {settings.PROMETHEUS_ADDRESS[0]} without authentication.",
                hint="Keep CODER_PROMETHEUS_ADDRESS on a loopback or private address that only "
                "Prometheus reaches.",
                id="coderd.W005",
            )
        )

    if len(settings.SECRET_KEY) < MIN_SECRET_KEY_LENGTH:
        problems.append(
            Warning(
                f"CODER_SECRET_KEY is shorter than {MIN_SECRET_KEY_LENGTH} characters.",
                hint="Unset it to let coderd generate one in the data folder, or use a long random key.",
                id="coderd.W006",
            )
        )
    problems.extend(_data_dir_problems())
    return problems


def _data_dir_problems() -> list:
    """coderd.W007: the data folder, database or secret key readable by others (made so before
    coderd created them private, or changed since)."""
    data_dir = Path(settings.DATA_DIR)
    paths = [data_dir, data_dir / "secret_key"]
    database = settings.DATABASES["default"]
    if database["ENGINE"].endswith("sqlite3"):
        paths.append(Path(database["NAME"]))
    found = exposed(paths)
    if not found:
        return []
    listed = ", ".join(f"{path} ({mode:o})" for path, mode in found)
    return [
        Warning(
            f"Others can read coderd's data: {listed}. It holds the database (admin sessions, "
            "token hashes) and the secret key.",
            hint=f"chmod 700 {data_dir} (and 600 the files in it), as coderd makes a data folder it creates.",
            id="coderd.W007",
        )
    ]
