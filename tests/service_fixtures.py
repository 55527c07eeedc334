"""The fixtures of the services in tests/services.py, a pytest plugin registered by tests/conftest.py."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator

import pytest

from tests.services import PG_BIN, Postgres, Redis, missing


def _worker_id(config: pytest.Config) -> str:
    return getattr(config, "workerinput", {}).get("workerid", "main")


def pytest_configure(config: pytest.Config) -> None:
    """Keep the suite's PostgreSQL/Redis to this process.

    When the whole suite runs on PostgreSQL and Redis (`.ci/run`'s second pass), the settings have
    already read CODER_PG_CONNECTION_URL and CODER_REDIS_URL; servers that tests start as subprocesses
    must not inherit them (they would share one database across tests), so they get the embedded
    defaults unless a test passes those variables itself. Channel-layer names get a per-xdist-worker
    prefix so that workers sharing one Redis never see each other's groups.
    """
    try:
        from django.conf import settings

        settings.DATABASES  # noqa: B018 (make sure the settings have read the environment)
    except Exception:
        return
    if not hasattr(config, "workerinput") and config.getoption("numprocesses", None):
        return  # the xdist controller: its workers, started later, must still inherit the variables
    os.environ.pop("CODER_PG_CONNECTION_URL", None)
    os.environ.pop("CODER_REDIS_URL", None)
    layer = settings.CHANNEL_LAYERS.get("default", {})
    if layer.get("BACKEND", "").startswith("channels_redis"):
        prefix = f"asgi-{_worker_id(config)}-{os.getpid()}"
        layer.setdefault("CONFIG", {})["prefix"] = prefix


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Postgres]:
    """The PostgreSQL server of this test session (the one named by CODER_TEST_PG_URL, or our own)."""
    given = os.environ.get("CODER_TEST_PG_URL")
    if given:
        yield Postgres(given)
        return
    if not Postgres.available():
        missing(f"PostgreSQL ({PG_BIN}/initdb)")
    server = Postgres.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pg_url(pg_server: Postgres) -> Iterator[str]:
    """A fresh, empty database for this session (each xdist worker has its own)."""
    url = pg_server.create_database("coderd_session")
    yield url
    pg_server.drop_database(url)


@pytest.fixture
def pg_database(pg_server: Postgres) -> Iterator[Callable[[], str]]:
    """A factory of fresh, empty databases, each dropped after the test."""
    made: list[str] = []

    def make() -> str:
        made.append(pg_server.create_database())
        return made[-1]

    yield make
    for url in made:
        pg_server.drop_database(url)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The Redis of this test session (CODER_TEST_REDIS_URL, or our own redis-server)."""
    given = os.environ.get("CODER_TEST_REDIS_URL")
    if given:
        yield given
        return
    if shutil.which("redis-server") is None:
        missing("redis-server")
    server = Redis.start()
    try:
        yield server.url
    finally:
        server.stop()


def _binary(name: str) -> str:
    binary = shutil.which(name)
    if binary is None:
        missing(name)
    return binary


@pytest.fixture(scope="session")
def prometheus_bin() -> str:
    return _binary("prometheus")


@pytest.fixture(scope="session")
def chromium_bin() -> str:
    """Debian's chromium (installed by .ci/run): headless, for pages as a browser renders them."""
    return _binary("chromium")


@pytest.fixture(scope="session")
def promtool_bin() -> str:
    return _binary("promtool")
