"""Bad input on the command line or in a CODER_* variable: one line on stderr and exit code 2, never a
traceback nor a server that starts and fails later. An environment problem (a port in use, coderd
refusing a daemon's key) is one line and exit 1. Every process is stopped by its PID, on loopback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.sync.server import serve

from tests.services import REPO, ServerProcess, clean_env, free_port, manage, wait_for

# A process that wrongly starts is killed after this, and the test fails.
TIMEOUT = 60


def one_line(done: subprocess.CompletedProcess[str], code: int = 2) -> str:
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert done.returncode == code, done.stderr
    return lines[0]


# --- CODER_* variables: refused when settings load -------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"CODER_SESSION_DURATION": "800h"}, "CODER_SESSION_DURATION (800h) is longer than CODER_MAX_TOKEN_LIFETIME (720h)"),
        ({"CODER_MAX_TOKEN_LIFETIME": "1h"}, "CODER_SESSION_DURATION (24h) is longer than CODER_MAX_TOKEN_LIFETIME (1h)"),
        ({"CODER_SESSION_DURATION": "500ms"}, "CODER_SESSION_DURATION='500ms' must be at least 1s"),
        ({"CODER_SESSION_DURATION": "1ns"}, "CODER_SESSION_DURATION='1ns' must be at least 1s"),
        ({"CODER_MAX_TOKEN_LIFETIME": "99999999999999999h"}, "CODER_MAX_TOKEN_LIFETIME='99999999999999999h' is too long"),
        ({"CODER_PROVISIONER_HUNG_JOB_TIMEOUT": "9" * 400 + "h"}, "CODER_PROVISIONER_HUNG_JOB_TIMEOUT="),
        # Under three 5 s heartbeats, live jobs would be failed by the reaper.
        ({"CODER_PROVISIONER_HUNG_JOB_TIMEOUT": "3s"}, "CODER_PROVISIONER_HUNG_JOB_TIMEOUT='3s' is too short: at least 15s (three heartbeats of 5s)"),
        ({"CODER_PROVISIONER_HUNG_JOB_TIMEOUT": "14999ms"}, "CODER_PROVISIONER_HUNG_JOB_TIMEOUT='14999ms' is too short"),
        ({"CODER_PROVISIONER_SHELL_SANDBOX": "maybe"}, "CODER_PROVISIONER_SHELL_SANDBOX='maybe' is not a boolean"),
        ({"CODER_PROVISIONER_DAEMONS": "99999999"}, "CODER_PROVISIONER_DAEMONS='99999999' must be at most 100"),
        ({"CODER_HTTP_ADDRESS": "[::1"}, "CODER_HTTP_ADDRESS='[::1' is not a valid address"),
        ({"CODER_PROMETHEUS_ADDRESS": "999.0.0.1:2112"}, "CODER_PROMETHEUS_ADDRESS='999.0.0.1:2112' is not a valid"),
        ({"CODER_DATA_DIR": ""}, "CODER_DATA_DIR='' is empty"),
        ({"CODER_DATA_DIR": "  "}, "CODER_DATA_DIR='' is empty"),
        ({"CODER_WORKERS": "abc"}, "CODER_WORKERS='abc' is not an integer"),
        ({"CODER_WORKERS": "-1"}, "CODER_WORKERS='-1' must be at least 1"),
        ({"CODER_REPLICAS": "abc"}, "CODER_REPLICAS='abc' is not an integer"),
        ({"CODER_REPLICAS": "-3"}, "CODER_REPLICAS='-3' must be at least 1"),
        ({"CODER_PROVISIONER_DAEMON_PSK": "abcdefgh\nijklmnopq"}, "CODER_PROVISIONER_DAEMON_PSK must be printable ASCII"),
        ({"CODER_PROVISIONER_DAEMON_PSK": "abcdefghijklmnopq\r"}, "CODER_PROVISIONER_DAEMON_PSK must not start or end"),
        ({"CODER_REDIS_URL": "redis://:ijklmnopq@127.0.0.1:abc/0"}, "CODER_REDIS_URL has a bad port"),
        ({"CODER_REDIS_URL": "http://ijklmnopq@127.0.0.1"}, "CODER_REDIS_URL must look like redis://"),
        ({"CODER_REDIS_URL": "redis://127.0.0.1:6379/zz"}, "CODER_REDIS_URL names a database that is not a number"),
    ],
)  # fmt: skip
def test_it_refuses_a_bad_variable_in_one_line(tmp_path: Path, extra: dict[str, str], expected: str) -> None:
    env = clean_env(tmp_path, **extra)
    with_empty_dir = extra.get("CODER_DATA_DIR") is not None
    done = subprocess.run(
        [sys.executable, str(REPO / "manage.py"), "check"],
        cwd=tmp_path if with_empty_dir else REPO,  # "" used to mean this folder
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    line = one_line(done)
    assert line.startswith("manage.py check: ")
    assert expected in line
    assert "ijklmnopq" not in line  # a key is never echoed
    if with_empty_dir:
        assert list(tmp_path.iterdir()) == []  # no database, no secret key in the current folder


def test_it_refuses_an_http_address_that_is_no_ip_address_before_binding(tmp_path: Path) -> None:
    done = manage("server", env=clean_env(tmp_path, CODER_HTTP_ADDRESS="256.1.1.1:3000"))
    line = one_line(done)
    assert line == (
        "manage.py server: CODER_HTTP_ADDRESS='256.1.1.1:3000' is not a valid address "
        "(use host:port, e.g. 127.0.0.1:3000 or [::1]:3000)"
    )


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://[bad", "CODER_ACCESS_URL='http://[bad' is not a URL: Invalid IPv6 URL"),
        ("http://coder.example:99999", "Port out of range 0-65535"),
        ("http://coder.example:abc", "Port could not be cast to integer"),
        ("http://coder\x01.example", "it holds a space or a control character"),
        ("ftp://coder.example", "is not an http(s) URL"),
    ],
)
def test_the_server_refuses_a_bad_access_url_at_start_up(tmp_path: Path, url: str, expected: str) -> None:
    env = clean_env(tmp_path, CODER_ACCESS_URL=url)
    done = manage("server", "--http-address", "127.0.0.1:0", env=env)
    line = one_line(done)
    assert "coderd.E001: " in line
    assert expected in line
    assert not (tmp_path / "coderd.sqlite3").exists()


# --- server flags -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--session-duration", "800h"], "manage.py server: --session-duration (800h) is longer than CODER_MAX_TOKEN_LIFETIME (720h)"),
        (["--max-token-lifetime", "1h"], "manage.py server: CODER_SESSION_DURATION (24h) is longer than --max-token-lifetime (1h)"),
        (["--session-duration", "2h", "--max-token-lifetime", "1h"], "manage.py server: --session-duration (2h) is longer than --max-token-lifetime (1h)"),
        (["--session-duration", "500ms"], "manage.py server: --session-duration='500ms' must be at least 1s"),
        (["--max-token-lifetime", "99999999999999999h"], "manage.py server: --max-token-lifetime='99999999999999999h' is too long (at most 2562047h)"),
        (["--provisioner-daemons", "101"], "manage.py server: --provisioner-daemons='101' must be at most 100"),
        (["--http-address", "[::1"], "manage.py server: --http-address='[::1' is not a valid address"),
        (["--http-address", "256.1.1.1:3000"], "manage.py server: --http-address='256.1.1.1:3000' is not a valid"),
        (["--access-url", "http://[bad"], "manage.py server: --access-url='http://[bad' is not a URL: Invalid IPv6 URL"),
        (["--access-url", "http://coder.example:99999"], "manage.py server: --access-url='http://coder.example:99999' is not a URL"),
    ],
)  # fmt: skip
def test_the_server_refuses_a_bad_flag_in_one_line(tmp_path: Path, argv: list[str], expected: str) -> None:
    flags = ["--http-address", "127.0.0.1:0", "--provisioner-daemons", "0"]
    done = manage("server", *flags, *argv, env=clean_env(tmp_path))
    assert one_line(done).startswith(expected)
    assert not (tmp_path / "coderd.sqlite3").exists()


# --- runserver ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1:99999", "manage.py runserver: '127.0.0.1:99999' has a port outside 0-65535"),
        ("127.0.0.1:abc", 'manage.py runserver: "127.0.0.1:abc" is not a valid port number'),
    ],
)
def test_runserver_refuses_a_bad_address_in_one_line(tmp_path: Path, address: str, expected: str) -> None:
    done = manage("runserver", "--noreload", address, env=clean_env(tmp_path))
    assert one_line(done).startswith(expected)


def test_runserver_refuses_too_many_daemons(tmp_path: Path) -> None:
    done = manage("runserver", "--noreload", "--provisioner-daemons", "101", env=clean_env(tmp_path))
    assert one_line(done) == "manage.py runserver: argument --provisioner-daemons: '101' must be at most 100"


def test_runserver_exits_1_in_one_line_when_its_port_is_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = manage(
            "runserver", "--noreload", "--skip-checks", "--provisioner-daemons", "0", f"127.0.0.1:{port}",
            env=clean_env(tmp_path),
        )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert "CRITICAL" not in done.stderr  # Daphne's own log line, which came with exit 0
    assert done.stderr.splitlines()[-1] == (
        f"manage.py runserver: Couldn't listen on 127.0.0.1:{port}: [Errno 98] Address already in use."
    )


# --- provisionerd ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        (["--url", "http://127.0.0.1:99999"], {}, "manage.py provisionerd: --url='http://127.0.0.1:99999' is not a URL: Port out of range 0-65535"),
        (["--url", "http://127.0.0.1:abc"], {}, "manage.py provisionerd: --url='http://127.0.0.1:abc' is not a URL"),
        ([], {"CODER_URL": "http://[bad"}, "manage.py provisionerd: CODER_URL='http://[bad' is not a URL: Invalid IPv6 URL"),
        (["--url", "http://127.0.0.1:1", "--poll-interval", "99999999999h"], {}, "manage.py provisionerd: --poll-interval='99999999999h' is too long (at most 1h)"),
        (["--url", "http://127.0.0.1:1"], {"CODER_PROVISIONER_DAEMON_POLL_INTERVAL": "2h"}, "manage.py provisionerd: CODER_PROVISIONER_DAEMON_POLL_INTERVAL='2h' is too long"),
    ],
)  # fmt: skip
def test_provisionerd_refuses_a_bad_flag_in_one_line(
    tmp_path: Path, argv: list[str], env: dict[str, str], expected: str
) -> None:
    done = manage("provisionerd", "start", "--psk", "k" * 20, *argv, env=clean_env(tmp_path, **env))
    assert one_line(done).startswith(expected)


def test_provisionerd_refuses_a_key_that_cannot_be_a_header(tmp_path: Path) -> None:
    argv = ["provisionerd", "start", "--url", "http://127.0.0.1:1", "--psk", "secret-part\nsecond-part"]
    line = one_line(manage(*argv, env=clean_env(tmp_path)))
    assert (
        line
        == "manage.py provisionerd: --psk must be printable ASCII without newlines (e.g. `openssl rand -hex 24`)"
    )


def test_provisionerd_without_a_subcommand_names_it(tmp_path: Path) -> None:
    line = one_line(
        manage("provisionerd", "--url", "http://127.0.0.1:1", "--psk", "k" * 20, env=clean_env(tmp_path))
    )
    assert line.startswith("manage.py provisionerd: missing subcommand: start (manage.py provisionerd start ")
    line = one_line(manage("provisionerd", "stop", env=clean_env(tmp_path)))
    assert line == "manage.py provisionerd: argument start: invalid choice: 'stop' (choose from 'start')"


def test_provisionerd_help_names_the_subcommand_and_reads_well(tmp_path: Path) -> None:
    done = manage("provisionerd", "--help", env=clean_env(tmp_path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: manage.py provisionerd start --url URL --psk KEY [options]")
    text = " ".join(done.stdout.split())  # argparse wraps lines anywhere
    assert "default default" not in text
    assert "[env CODER_ORGANIZATION, default the default organization]" in text


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["manage.py", "server", "--http-address", "x"], "manage.py server"),
        (["/srv/coderd/manage.py", "provisionerd", "start"], "manage.py provisionerd"),
        (["manage.py", "--help"], "manage.py"),
        (["/srv/coderd/.venv/bin/gunicorn", "-c", "gunicorn.conf.py"], "gunicorn"),
        (
            ["/usr/lib/python3/site-packages/uvicorn/__main__.py", "coderd.asgi:application"],
            "python -m uvicorn",
        ),
        ([], "coderd"),
    ],
)
def test_every_one_line_error_starts_with_the_command_as_invoked(argv: list[str], expected: str) -> None:
    from coderd.env import invoked_as

    assert invoked_as(argv) == expected


@pytest.fixture
def refusing_server(request: pytest.FixtureRequest) -> Iterator[int]:
    """A websocket endpoint answering every handshake with HTTP `request.param`, as coderd does to
    a wrong key or an unknown organization (403)."""
    status = request.param
    server = serve(
        lambda conn: None, "127.0.0.1", 0, process_request=lambda conn, req: conn.respond(status, "no\n")
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.socket.getsockname()[1]
    finally:
        server.shutdown()
        thread.join(timeout=5)


@pytest.mark.parametrize("refusing_server", [403, 404], indirect=True)
def test_provisionerd_stops_in_one_line_when_coderd_refuses_it(tmp_path: Path, refusing_server: int) -> None:
    url = f"http://127.0.0.1:{refusing_server}"
    done = manage("provisionerd", "start", "--url", url, "--psk", "k" * 20, env=clean_env(tmp_path))
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("manage.py provisionerd: ")]
    assert len(errors) == 1, done.stderr
    assert errors[0].startswith("manage.py provisionerd: coderd refused the connection (HTTP ")
    assert "check --psk" in errors[0]
    assert "k" * 20 not in done.stderr


def test_provisionerd_keeps_retrying_while_coderd_is_down(tmp_path: Path) -> None:
    daemon = ServerProcess(
        [sys.executable, "manage.py", "provisionerd", "start", "--url", f"http://127.0.0.1:{free_port()}",
         "--psk", "k" * 20],
        env={"CODER_DATA_DIR": str(tmp_path)},
        name="provisionerd",
    )  # fmt: skip
    try:
        # Two failed attempts, and still running: a server that is down is waited for.
        wait_for(lambda: daemon.log().count("retrying in") >= 2 or None, TIMEOUT, "two retries")
        daemon.check_alive()
        os.kill(daemon.pid, signal.SIGTERM)
        assert daemon.popen.wait(timeout=30) == 0
    finally:
        daemon.stop()
    assert "Traceback" not in daemon.log()
