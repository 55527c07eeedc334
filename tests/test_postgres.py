"""coderd on PostgreSQL: the project's migrations and queries on a real server, and the suite's own
database being the one CI asked for (so a PostgreSQL pass cannot silently run on SQLite)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from django.conf import settings
from django.db import connection

from tests.services import REPO, Redis


def manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.django_db
def test_it_runs_the_suite_on_the_database_ci_asked_for() -> None:
    expected = os.environ.get("CODER_TEST_EXPECT_DATABASE") or (
        "postgresql" if settings.PG_CONNECTION_URL else "sqlite"
    )
    assert connection.vendor == expected
    layer = settings.CHANNEL_LAYERS["default"]["BACKEND"]
    if expected == "postgresql":
        # .ci/run's PostgreSQL pass also puts the channel layer on Redis.
        assert layer == "channels_redis.core.RedisChannelLayer"
        assert Redis.ping(settings.REDIS_URL)
        assert connection.settings_dict["NAME"].startswith("test_")


@pytest.mark.postgres
def test_it_migrates_a_fresh_postgresql_database(pg_database, tmp_path) -> None:
    url = pg_database()
    env = {"CODER_PG_CONNECTION_URL": url, "CODER_DATA_DIR": str(tmp_path)}
    first = manage("migrate", "--noinput", env=env)
    assert first.returncode == 0, first.stderr
    assert "Applying users.0001_initial... OK" in first.stdout

    import psycopg

    with psycopg.connect(url) as conn:
        tables = {
            row[0] for row in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        }
    assert {"provisioner_provisionerjob", "workspaces_workspace", "users_user"} <= tables

    again = manage("migrate", "--noinput", "--check", env=env)  # nothing left to apply
    assert again.returncode == 0, again.stdout + again.stderr


def test_it_refuses_a_malformed_connection_url_in_one_line(tmp_path) -> None:
    env = {"CODER_PG_CONNECTION_URL": "mysql://nobody@127.0.0.1/x", "CODER_DATA_DIR": str(tmp_path)}
    result = manage("check", env=env)
    assert result.returncode == 2
    assert "CODER_PG_CONNECTION_URL" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("ci", "outcome"), [("true", "Failed"), ("", "Skipped")])
def test_it_fails_instead_of_skipping_a_missing_service_in_ci(monkeypatch, ci, outcome) -> None:
    from tests.services import missing

    monkeypatch.setenv("CI", ci)
    with pytest.raises(BaseException) as raised:
        missing("redis-server")
    assert type(raised.value).__name__ == outcome
    assert "redis-server" in str(raised.value)
