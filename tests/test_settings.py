"""Settings from CODER_* variables: the typed readers, and what a fresh process makes of its environment."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from coderd.env import (
    EnvError,
    env_address,
    env_bool,
    env_duration,
    env_int,
    env_str,
    format_duration,
    parse_address,
    parse_bool,
    parse_duration,
    parse_http_url,
    parse_int,
    parse_postgres_url,
    psk_problem,
)
from tests.services import clean_env, manage

# --- the readers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("true", True), ("TRUE", True), (" yes ", True), ("1", True), ("on", True)]
    + [("false", False), ("0", False), ("off", False), ("no", False), ("", False)],
)
def test_it_reads_booleans(text: str, expected: bool) -> None:
    assert parse_bool(text) is expected


@pytest.mark.parametrize("text", ["ture", "2", "enabled", "y"])
def test_it_refuses_a_bad_boolean_naming_the_variable(text: str) -> None:
    with pytest.raises(EnvError, match=r"^CODER_X=.* is not a boolean"):
        parse_bool(text, "CODER_X")


def test_it_reads_integers_with_a_minimum() -> None:
    assert parse_int(" 7 ", "N") == 7
    assert parse_int("0", "N", minimum=0) == 0
    with pytest.raises(EnvError, match=r"^N='-1' must be at least 0$"):
        parse_int("-1", "N", minimum=0)
    with pytest.raises(EnvError, match=r"^N='3.5' is not an integer$"):
        parse_int("3.5", "N")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1s", 1.0), ("30s", 30.0), ("5m", 300.0), ("1h30m", 5400.0), ("250ms", 0.25), ("1.5h", 5400.0)],
)
def test_it_reads_go_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5", "abc", "1 h", "1h-", "0s", "s"])
def test_it_refuses_a_bad_duration(text: str) -> None:
    with pytest.raises(EnvError, match=r"^D="):
        parse_duration(text, "D")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:3000", ("127.0.0.1", 3000)),
        (":3000", ("0.0.0.0", 3000)),
        ("[::1]:2112", ("::1", 2112)),
        ("localhost:0", ("localhost", 0)),
    ],
)
def test_it_reads_addresses(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize(
    "text",
    ["nope", "127.0.0.1", "127.0.0.1:http", "1.2.3.4:70000", "a b:80", ""]
    + ["256.1.1.1:3000", "1.2.3:80", "[::1", "[::1]", "[]:80", "[localhost]:80", "-host:80", "h:\u0663"],
)
def test_it_refuses_a_bad_address(text: str) -> None:
    with pytest.raises(EnvError, match=r"^A="):
        parse_address(text, "A")


def test_it_reads_integers_with_a_maximum() -> None:
    assert parse_int("100", "N", minimum=0, maximum=100) == 100
    with pytest.raises(EnvError, match=r"^N='101' must be at most 100$"):
        parse_int("101", "N", minimum=0, maximum=100)


def test_it_bounds_durations() -> None:
    assert parse_duration("2562047h") == 2562047 * 3600.0  # Go's longest, in whole hours
    assert parse_duration("1s", "D", minimum=1.0) == 1.0
    with pytest.raises(EnvError, match=r"^D='2562048h' is too long \(at most 2562047h\)$"):
        parse_duration("2562048h", "D")
    with pytest.raises(EnvError, match=r"is too long"):
        parse_duration("9" * 400 + "h", "D")  # an infinite float, once
    with pytest.raises(EnvError, match=r"^D='500ms' must be at least 1s$"):
        parse_duration("500ms", "D", minimum=1.0)
    with pytest.raises(EnvError, match=r"^D='2h' is too long \(at most 1h\)$"):
        parse_duration("2h", "D", maximum=3600.0)
    assert [format_duration(s) for s in (86400.0, 5400.0, 3661.0, 1.5, 0.25)] == [
        "24h", "1h30m", "1h1m1s", "1.5s", "0.25s"
    ]  # fmt: skip


def test_it_reads_http_urls() -> None:
    assert parse_http_url(" https://coder.example.com/ ") == "https://coder.example.com"
    assert parse_http_url("http://[::1]:3000/prefix/") == "http://[::1]:3000/prefix"


@pytest.mark.parametrize(
    "url",
    ["coder.example", "ftp://h", "http://", "http://[bad", "http://h:99999", "http://h:abc", "http://h:0"]
    + ["http://h\n.example", "http://h x", "http://h\x7f"],
)
def test_it_refuses_a_bad_http_url(url: str) -> None:
    with pytest.raises(EnvError, match=r"^U="):
        parse_http_url(url, "U")


def test_it_says_why_a_key_cannot_be_a_header() -> None:
    assert psk_problem("a" * 24) is None
    assert psk_problem("with inner space") is None
    for bad in ("a\nb", "ab\r", " ab", "ab ", "clé", "a\x00b"):
        assert psk_problem(bad), bad


def test_it_reads_a_postgres_url_into_a_database_entry() -> None:
    db = parse_postgres_url("postgres://coder:p%40ss@db.example:5433/coderd?sslmode=require")
    assert db["ENGINE"] == "django.db.backends.postgresql"
    assert (db["NAME"], db["USER"], db["PASSWORD"]) == ("coderd", "coder", "p@ss")
    assert (db["HOST"], db["PORT"]) == ("db.example", "5433")
    assert db["OPTIONS"] == {"sslmode": "require"}
    # A Unix socket folder given as ?host=, as libpq accepts.
    sock = parse_postgres_url("postgresql://postgres@/coderd?host=/run/postgresql")
    assert (sock["HOST"], sock["PORT"], sock["OPTIONS"]) == ("/run/postgresql", "", {})


@pytest.mark.parametrize(
    "url", ["mysql://x", "postgres://host:5432", "postgres://host:99999999/db", "not a url"]
)
def test_it_refuses_a_bad_postgres_url(url: str) -> None:
    with pytest.raises(EnvError, match=r"^CODER_PG_CONNECTION_URL "):
        parse_postgres_url(url)


def test_it_uses_the_default_only_when_the_variable_is_unset() -> None:
    env = {"CODER_B": "false", "CODER_I": "4", "CODER_D": "2m", "CODER_A": ":80", "CODER_S": ""}
    assert env_bool("CODER_B", True, env) is False
    assert env_bool("CODER_MISSING", True, env) is True
    assert env_int("CODER_I", 3, env) == 4
    assert env_int("CODER_MISSING", 3, env) == 3
    assert env_duration("CODER_D", "60s", env) == 120.0
    assert env_duration("CODER_MISSING", "60s", env) == 60.0
    assert env_address("CODER_A", "127.0.0.1:3000", env) == ("0.0.0.0", 80)
    assert env_str("CODER_S", "x", env) == ""  # set but empty is a value, not "unset"
    with pytest.raises(EnvError, match="CODER_I"):
        env_int("CODER_I", 3, {"CODER_I": "four"})


# --- a fresh process ---------------------------------------------------------------------------


SHOW_SETTINGS = """
import json
from django.conf import settings
db = settings.DATABASES["default"]
print(json.dumps({
    "SECRET_KEY": str(settings.SECRET_KEY), "DEBUG": settings.DEBUG, "TIME_ZONE": settings.TIME_ZONE,
    "USE_TZ": settings.USE_TZ, "ENGINE": db["ENGINE"], "NAME": str(db["NAME"]),
    "HOST": db.get("HOST", ""), "PORT": db.get("PORT", ""), "USER": db.get("USER", ""),
    "HTTP_ADDRESS": settings.HTTP_ADDRESS, "PROVISIONER_DAEMONS": settings.PROVISIONER_DAEMONS,
    "PROMETHEUS_ENABLE": settings.PROMETHEUS_ENABLE, "PROMETHEUS_ADDRESS": settings.PROMETHEUS_ADDRESS,
    "PROMETHEUS_REFRESH_INTERVAL": settings.PROMETHEUS_REFRESH_INTERVAL,
    "ALLOWED_HOSTS": settings.ALLOWED_HOSTS, "CHANNEL_LAYER": settings.CHANNEL_LAYERS["default"]["BACKEND"],
}))
"""


def show_settings(env: dict[str, str]) -> dict:
    # `shell -c` loads the settings without touching the database, so no server is needed.
    done = manage("shell", "-c", SHOW_SETTINGS, env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])  # after "N objects imported"


def test_it_runs_with_embedded_defaults(tmp_path: Path) -> None:
    shown = show_settings(clean_env(tmp_path))
    assert shown["DEBUG"] is False
    assert shown["TIME_ZONE"] == "UTC" and shown["USE_TZ"] is True
    assert shown["ENGINE"] == "django.db.backends.sqlite3"
    assert Path(shown["NAME"]).parent == tmp_path
    assert shown["HTTP_ADDRESS"] == ["127.0.0.1", 3000]
    assert shown["PROVISIONER_DAEMONS"] == 3
    assert shown["PROMETHEUS_ENABLE"] is False
    assert shown["PROMETHEUS_ADDRESS"] == ["127.0.0.1", 2112]
    assert shown["PROMETHEUS_REFRESH_INTERVAL"] == 60.0
    assert shown["CHANNEL_LAYER"] == "channels.layers.InMemoryChannelLayer"


def test_it_generates_the_secret_key_once_and_keeps_it_in_the_data_folder(tmp_path: Path) -> None:
    first = show_settings(clean_env(tmp_path))["SECRET_KEY"]
    second = show_settings(clean_env(tmp_path))["SECRET_KEY"]
    assert len(first) >= 50
    assert first == second
    key_file = tmp_path / "secret_key"
    assert key_file.read_text().strip() == first
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600  # only its owner may read it
    other = show_settings(clean_env(tmp_path / "other"))["SECRET_KEY"]
    assert other != first


def test_it_uses_a_given_secret_key_without_writing_one(tmp_path: Path) -> None:
    given = "k" * 60
    assert show_settings(clean_env(tmp_path, CODER_SECRET_KEY=given))["SECRET_KEY"] == given
    assert not (tmp_path / "secret_key").exists()


def test_it_turns_debug_on_only_when_asked(tmp_path: Path) -> None:
    assert show_settings(clean_env(tmp_path, CODER_DEBUG="true"))["DEBUG"] is True


def test_it_uses_postgresql_when_a_connection_url_is_given(tmp_path: Path) -> None:
    url = "postgres://coder:secret@127.0.0.1:5999/coderd_db"
    shown = show_settings(clean_env(tmp_path, CODER_PG_CONNECTION_URL=url))
    assert shown["ENGINE"] == "django.db.backends.postgresql"
    assert (shown["NAME"], shown["HOST"], shown["PORT"], shown["USER"]) == (
        "coderd_db",
        "127.0.0.1",
        "5999",
        "coder",
    )


def test_it_reads_every_variable_it_is_given(tmp_path: Path) -> None:
    shown = show_settings(
        clean_env(
            tmp_path,
            CODER_HTTP_ADDRESS="0.0.0.0:8080",
            CODER_PROVISIONER_DAEMONS="0",
            CODER_PROMETHEUS_ENABLE="true",
            CODER_PROMETHEUS_ADDRESS="127.0.0.1:9999",
            CODER_PROMETHEUS_REFRESH_INTERVAL="5s",
            CODER_ACCESS_URL="https://coder.example.com",
            CODER_ALLOWED_HOSTS="a.example, b.example",
        )
    )
    assert shown["HTTP_ADDRESS"] == ["0.0.0.0", 8080]
    assert shown["PROVISIONER_DAEMONS"] == 0
    assert shown["PROMETHEUS_ENABLE"] is True
    assert shown["PROMETHEUS_ADDRESS"] == ["127.0.0.1", 9999]
    assert shown["PROMETHEUS_REFRESH_INTERVAL"] == 5.0
    assert {"coder.example.com", "a.example", "b.example"} <= set(shown["ALLOWED_HOSTS"])


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CODER_PROMETHEUS_ENABLE", "ture"),
        ("CODER_HTTP_ADDRESS", "nope"),
        ("CODER_PROVISIONER_DAEMONS", "-1"),
        ("CODER_PG_CONNECTION_URL", "mysql://coder:secret@db/coderd"),
        ("CODER_PROMETHEUS_ADDRESS", "127.0.0.1:99999"),
        ("CODER_PROMETHEUS_REFRESH_INTERVAL", "soon"),
        ("CODER_SESSION_DURATION", "0s"),
        ("CODER_LOG_LEVEL", "loud"),
        ("CODER_DEBUG", "maybe"),
        ("CODER_PROVISIONER_HUNG_JOB_TIMEOUT", "5s"),
        ("CODER_PROVISIONER_SHELL_SANDBOX", "no way"),
    ],
)
def test_it_stops_on_a_bad_variable_with_one_line_naming_it(
    tmp_path: Path, variable: str, value: str
) -> None:
    done = manage("check", env=clean_env(tmp_path, **{variable: value}))
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert variable in lines[0]
    if variable == "CODER_PG_CONNECTION_URL":
        assert "secret" not in lines[0]  # a connection URL may hold a password: never echoed
    else:
        assert repr(value) in lines[0]  # the value as given, to find it in the environment
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("command", [["migrate"], ["server", "--http-address", "127.0.0.1:0"]])
def test_it_stops_with_one_line_when_the_data_folder_cannot_be_made(
    tmp_path: Path, command: list[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    done = manage(*command, env=clean_env(blocker / "data"))
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(
        f"manage.py {command[0]}: CODER_DATA_DIR={str(blocker / 'data')!r} cannot be created: "
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["help"],
        ["server", "--help"],
        ["provisionerd", "--help"],
        ["runserver", "--help"],
        ["help", "migrate"],
    ],
)
def test_it_makes_no_data_folder_nor_secret_key_for_help(tmp_path: Path, argv: list[str]) -> None:
    data_dir = tmp_path / "data"
    done = manage(*argv, env=clean_env(data_dir))
    assert done.returncode == 0, done.stderr
    assert "usage" in done.stdout.lower() or "subcommands" in done.stdout.lower()
    assert not data_dir.exists()


def test_it_makes_the_data_folder_when_the_database_is_first_used(tmp_path: Path) -> None:
    data_dir = tmp_path / "deep" / "data"
    done = manage("migrate", "-v0", env=clean_env(data_dir))
    assert done.returncode == 0, done.stderr
    assert (data_dir / "coderd.sqlite3").is_file()


def test_it_passes_the_system_checks_with_defaults(tmp_path: Path) -> None:
    done = manage("check", env=clean_env(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "no issues" in done.stdout


@pytest.mark.parametrize(
    ("extra", "check_id"),
    [
        ({"CODER_ACCESS_URL": "ftp://coder.example"}, "coderd.E001"),
        (
            {
                "CODER_PROMETHEUS_ENABLE": "true",
                "CODER_HTTP_ADDRESS": "127.0.0.1:4000",
                "CODER_PROMETHEUS_ADDRESS": "0.0.0.0:4000",
            },
            "coderd.E002",
        ),
    ],
)
def test_it_reports_configuration_errors_as_checks_with_hints(
    tmp_path: Path, extra: dict[str, str], check_id: str
) -> None:
    done = manage("check", env=clean_env(tmp_path, **extra))
    assert done.returncode == 1
    assert f"({check_id})" in done.stderr
    assert "HINT:" in done.stderr


def test_it_warns_about_risky_but_working_configuration(tmp_path: Path) -> None:
    done = manage(
        "check",
        env=clean_env(
            tmp_path,
            CODER_DEBUG="true",
            CODER_HTTP_ADDRESS="0.0.0.0:3000",
            CODER_PROVISIONER_DAEMONS="0",
            CODER_PROMETHEUS_ENABLE="true",
            CODER_PROMETHEUS_ADDRESS="0.0.0.0:2112",
            CODER_SECRET_KEY="short",
        ),
    )
    assert done.returncode == 0, done.stderr
    for check_id in ("coderd.W001", "coderd.W002", "coderd.W003", "coderd.W005", "coderd.W006"):
        assert f"({check_id})" in done.stderr
    short_psk = manage("check", env=clean_env(tmp_path, CODER_PROVISIONER_DAEMON_PSK="abc"))
    assert "(coderd.W004)" in short_psk.stderr


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["seed_metrics_data", "--users", "x"], "argument --users: 'x' is not a whole number"),
        (["seed_metrics_data", "--workspaces", "0"], "argument --workspaces: '0' must be at least 1"),
        (
            ["runserver", "--provisioner-daemons=-1"],
            "argument --provisioner-daemons: '-1' must be at least 0",
        ),
    ],
)
def test_the_other_commands_refuse_a_bad_count_in_one_line(
    tmp_path: Path, argv: list[str], expected: str
) -> None:
    done = manage(*argv, env=clean_env(tmp_path))
    assert done.returncode == 2
    assert done.stderr == f"manage.py {argv[0]}: {expected}\n"
