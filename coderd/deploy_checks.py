"""System checks for deployments past one process: several workers or replicas need Redis.

Channels' in-memory layer carries websocket messages (job logs, workspace watches) only inside one
process: a log line written by a daemon in worker A would never reach a follower held by worker B.
gunicorn.conf.py records its worker count in CODER_WORKERS (WEB_CONCURRENCY is read too); an operator
running several replicas says so with CODER_REPLICAS (how many share the database). Ids 1xx keep clear
of coderd/checks.py's.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from django.conf import settings
from django.core.checks import Error, Warning, register

IN_MEMORY_LAYER = "channels.layers.InMemoryChannelLayer"
REDIS_HINT = (
    "Set CODER_REDIS_URL=redis://host:6379/0 (one Redis shared by every worker and replica), "
    "or run a single process."
)


def _count(environ: Mapping[str, str], *names: str) -> tuple[str, int] | None:
    # settings.py has refused a CODER_* count that is not a whole number of at least 1; an unusable
    # WEB_CONCURRENCY (set by a platform, not by the operator) is passed over, as gunicorn.conf.py does.
    for name in names:
        try:
            return name, int(environ.get(name, "").strip())
        except ValueError:
            continue
    return None


def deployment_problems(
    environ: Mapping[str, str], channel_backend: str, on_postgres: bool
) -> list[Error | Warning]:
    """The problems of one configuration (pure: tests call it with any environment)."""
    problems: list[Error | Warning] = []
    in_memory = channel_backend == IN_MEMORY_LAYER
    workers = _count(environ, "CODER_WORKERS", "WEB_CONCURRENCY")
    if in_memory and workers and workers[1] > 1:
        problems.append(
            Error(
                f"{workers[0]}={workers[1]}: several worker processes but no Redis; websocket messages "
                "(job logs, workspace updates) would not reach clients held by another worker.",
                hint=REDIS_HINT,
                id="coderd.E101",
            )
        )
    replicas = _count(environ, "CODER_REPLICAS")
    if in_memory and replicas and replicas[1] > 1:
        problems.append(
            Error(
                f"CODER_REPLICAS={replicas[1]}: several replicas but no Redis; a job's logs would not "
                "reach followers connected to another replica.",
                hint=REDIS_HINT,
                id="coderd.E102",
            )
        )
    if not on_postgres and replicas and replicas[1] > 1:
        problems.append(
            Error(
                f"CODER_REPLICAS={replicas[1]} on SQLite: replicas must share one database.",
                hint="Set CODER_PG_CONNECTION_URL=postgres://user:password@host:5432/coderd on every replica.",
                id="coderd.E103",
            )
        )
    if in_memory and on_postgres and not replicas and not (workers and workers[1] > 1):
        problems.append(
            Warning(
                "CODER_PG_CONNECTION_URL is set but CODER_REDIS_URL is not: fine for one process, but "
                "replicas sharing this database would not see each other's websocket messages.",
                hint=REDIS_HINT + " Set CODER_REPLICAS=1 to say this is the only one.",
                id="coderd.W101",
            )
        )
    return problems


@register("coderd")
def check_deployment(app_configs: Sequence[Any] | None = None, **kwargs: Any) -> list:
    backend = settings.CHANNEL_LAYERS.get("default", {}).get("BACKEND", "")
    on_postgres = settings.DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"
    return deployment_problems(os.environ, backend, on_postgres)


def redis_problem(timeout: float = 5.0) -> str | None:
    """Why CODER_REDIS_URL cannot be used right now (one line), or None: checked at start-up, so that
    a wrong URL stops the server instead of failing every websocket later."""
    if not settings.REDIS_URL:
        return None
    import redis

    client = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        client.ping()
    except redis.RedisError as exc:
        return f"cannot reach Redis (CODER_REDIS_URL): {' '.join(str(exc).split())}"
    finally:
        client.close()
    return None
