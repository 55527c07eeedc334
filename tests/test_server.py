"""`manage.py server` as a process: it answers, logs where it serves, refuses bad flags in one line,
and stops cleanly on SIGTERM. Every process is started on a port chosen now and stopped by its PID."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from coderd.management.commands.server import FLAGS
from tests.services import REPO, ServerProcess, clean_env, free_port, http_get, manage, wait_for

# Start-up (imports, migrations on a fresh SQLite file) on a busy 2-core machine can take a while.
START_TIMEOUT = 90
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) \S+: ")


def start_server(data_dir: Path, *flags: str, **env: str) -> ServerProcess:
    return ServerProcess(
        [sys.executable, "manage.py", "server", *flags],
        env={"CODER_DATA_DIR": str(data_dir), **env},
        name="server",
    )


def stop_by_sigterm(server: ServerProcess, timeout: float = 30) -> int:
    os.kill(server.pid, signal.SIGTERM)
    try:
        return server.popen.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"still running {timeout}s after SIGTERM:\n{server.log()[-4000:]}") from None


def served_url(server: ServerProcess) -> str:
    """The address the server logged (so port 0 works), once it has logged it."""

    def logged() -> str | None:
        found = re.search(r"serving HTTP on (http://\S+)", server.log())
        if found:
            return found.group(1)
        return "exited" if server.popen.poll() is not None else None

    url = wait_for(logged, START_TIMEOUT, "the server's start-up line")
    if url == "exited":
        raise AssertionError(f"the server exited with {server.popen.returncode}:\n{server.log()[-4000:]}")
    return url


def test_it_serves_the_api_and_the_admin_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    with socket.socket() as taken:
        # The variable names a port in use; the flag overrides it.
        taken.bind(("127.0.0.1", 0))
        env_address = f"127.0.0.1:{taken.getsockname()[1]}"
        server = start_server(
            tmp_path, "--http-address", f"127.0.0.1:{port}", "--provisioner-daemons", "0",
            CODER_HTTP_ADDRESS=env_address,
        )  # fmt: skip
        try:
            base = f"http://127.0.0.1:{port}"
            server.wait_http(f"{base}/admin/login/", timeout=START_TIMEOUT)
            assert served_url(server) == base

            status, headers, _ = http_get(f"{base}/admin/login/")
            assert status == 200
            # The admin keeps its styles with DEBUG off: static files come from the ASGI app.
            status, headers, body = http_get(f"{base}/static/admin/css/base.css")
            assert status == 200 and headers["content-type"].startswith("text/css") and body
            status, _, _ = http_get(f"{base}/healthz")
            assert status == 200

            assert stop_by_sigterm(server) == 0
        finally:
            server.stop()

    log = server.log()
    assert "Traceback" not in log
    lines = [line for line in log.splitlines() if line]
    assert all(LOG_LINE.match(line) for line in lines), log
    info = [line for line in lines if " INFO " in line]
    assert any(f"data folder {tmp_path}" in line for line in info)
    assert any(f"serving HTTP on {base}" in line for line in info)
    # No user yet: the way to create the first one, with the address to send it to.
    assert any(f"curl -X POST {base}/api/v2/users/first" in line for line in info)
    assert any("received SIGTERM" in line for line in info)
    assert info[-1].endswith("stopped")
    # Nothing else at INFO on start-up (uvicorn's own lines are kept to warnings).
    assert len(info) == 5, info
    assert (tmp_path / "coderd.sqlite3").exists()  # migrated into the data folder


def test_it_runs_in_process_daemons_and_stops_them(tmp_path: Path) -> None:
    # Port 0: the kernel picks, and the start-up line says which. The flag overrides the variable.
    server = start_server(
        tmp_path, "--http-address", "127.0.0.1:0", "--provisioner-daemons", "2",
        CODER_PROVISIONER_DAEMONS="0",
    )  # fmt: skip
    try:
        base = served_url(server)
        assert not base.endswith(":0")
        server.wait_http(f"{base}/healthz", timeout=START_TIMEOUT)
        assert stop_by_sigterm(server) == 0
    finally:
        server.stop()
    log = server.log()
    assert "Traceback" not in log
    assert "stopping 2 provisioner daemon(s)" in log
    assert "coderd.W003" not in log  # there are daemons to run builds


def test_it_says_how_to_reach_it_at_its_access_url(tmp_path: Path) -> None:
    server = start_server(
        tmp_path, "--http-address", "127.0.0.1:0", "--provisioner-daemons", "0",
        "--access-url", "http://coder.example.test:8080",
    )  # fmt: skip
    try:
        base = served_url(server)
        # The access URL's host is allowed, whatever the Host header the proxy in front sends.
        status, _, _ = http_get(f"{base}/admin/login/", headers={"Host": "coder.example.test"})
        assert status == 200
        assert stop_by_sigterm(server) == 0
    finally:
        server.stop()
    log = server.log()
    assert "access URL http://coder.example.test:8080" in log
    assert "curl -X POST http://coder.example.test:8080/api/v2/users/first" in log


def test_it_explains_every_flag_with_its_variable_and_default(tmp_path: Path) -> None:
    done = manage("server", "--help", env=clean_env(tmp_path))
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())  # argparse wraps lines anywhere
    for flag in FLAGS:
        assert flag.name in text
        assert f"[env {flag.env}, default {flag.default}]" in text
    # Every variable the settings read is there, with a flag or in the "set only by variable" list.
    settings_source = (REPO / "coderd" / "settings.py").read_text()
    read = set(re.findall(r'env_[a-z]+\(\s*"(CODER_[A-Z_]+)"', settings_source))
    assert len(read) > 15
    assert sorted(v for v in read if v not in text) == []
    assert "--verbosity" not in text  # Django's own flags are accepted but not advertised


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--http-address", "nope"], "--http-address='nope' is not an address"),
        (["--provisioner-daemons", "-1"], "--provisioner-daemons='-1' must be at least 0"),
        (["--prometheus-enable=ture"], "--prometheus-enable='ture' is not a boolean"),
        (["--prometheus-refresh-interval", "soon"], "--prometheus-refresh-interval='soon' is not a duration"),
        (["--access-url", "coder.example.com"], "--access-url='coder.example.com' is not an http(s) URL"),
        (["--log-level", "loud"], "--log-level='loud' is not one of"),
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["--http", "127.0.0.1:1"], "unrecognized arguments: --http"),
        (["--log-level", "info", "--log-level", "debug"], "--log-level given twice"),
    ],
)
def test_it_refuses_a_bad_flag_in_one_line(tmp_path: Path, argv: list[str], expected: str) -> None:
    done = manage("server", *argv, env=clean_env(tmp_path))
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("manage.py server: ")
    assert expected in lines[0]
    assert not (tmp_path / "coderd.sqlite3").exists()  # refused before touching the database


def test_it_says_in_one_line_that_the_port_is_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = manage("server", "--http-address", f"127.0.0.1:{port}", env=clean_env(tmp_path))
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if "coderd.W" not in line]
    assert lines == [
        f"manage.py server: cannot listen on 127.0.0.1:{port} (--http-address / CODER_HTTP_ADDRESS): "
        "address already in use"
    ]


def test_it_stops_start_up_on_a_configuration_error(tmp_path: Path) -> None:
    done = manage(
        "server", "--prometheus-enable", "--prometheus-address", "127.0.0.1:4000",
        "--http-address", "127.0.0.1:4000", env=clean_env(tmp_path),
    )  # fmt: skip
    assert done.returncode == 2
    assert len(done.stderr.splitlines()) == 1
    assert "ERROR coderd.server: coderd.E002:" in done.stderr


def test_it_serves_under_runserver_too(tmp_path: Path) -> None:
    port = free_port()
    server = ServerProcess(
        [sys.executable, "manage.py", "runserver", "--noreload", f"127.0.0.1:{port}"],
        env={"CODER_DATA_DIR": str(tmp_path)},
        name="runserver",
    )
    try:
        server.wait_http(f"http://127.0.0.1:{port}/admin/login/", timeout=START_TIMEOUT)
        status, _, _ = http_get(f"http://127.0.0.1:{port}/admin/login/")
        assert status == 200
        # daphne is first in INSTALLED_APPS: runserver is the ASGI server, websockets included.
        assert "ASGI/Daphne" in server.log() or "daphne" in server.log().lower()
        # A fresh data folder: Django's runserver does not migrate, so no daemon starts to fail on
        # missing tables; one line says so.
        assert "the database is not migrated: provisioner daemons and metrics are not started" in server.log()
        assert "Traceback" not in server.log()
    finally:
        server.stop()


# --- stopping with a build running ----------------------------------------------------------------


def api(base: str, method: str, path: str, body: dict | None = None, token: str = "") -> Any:
    request = urllib.request.Request(
        f"{base}/api/v2/{path}",
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json", **({"Coder-Session-Token": token} if token else {})},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def start_a_build(base: str, start_ms: int) -> tuple[str, str]:
    """First user, an echo template whose start takes `start_ms`, a workspace: (token, build id),
    once the build is running."""
    api(
        base,
        "POST",
        "users/first",
        {"email": "a@example.com", "username": "a", "password": "a-long-passphrase"},
    )
    token = api(base, "POST", "users/login", {"email": "a@example.com", "password": "a-long-passphrase"})[
        "session_token"
    ]
    source = {"start": {"duration_ms": start_ms, "logs": ["working"]}}
    version = api(
        base,
        "POST",
        "organizations/default/templateversions",
        {"provisioner": "echo", "source": source},
        token,
    )["id"]
    wait_for(
        lambda: api(base, "GET", f"templateversions/{version}", token=token)["job"]["status"] == "succeeded",
        30,
        "the template import",
    )
    template = api(
        base, "POST", "organizations/default/templates", {"name": "t", "template_version_id": version}, token
    )["id"]
    workspace = api(
        base,
        "POST",
        "organizations/default/members/me/workspaces",
        {"name": "w", "template_id": template},
        token,
    )
    build = workspace["latest_build"]["id"]
    wait_for(
        lambda: api(base, "GET", f"workspacebuilds/{build}", token=token)["job"]["status"] == "running",
        30,
        "the build to start running",
    )
    return token, build


def job_outcome(data_dir: Path, build: str) -> tuple[bool, str]:
    """(completed, error) of a build's job, read from the stopped server's SQLite file."""
    with sqlite3.connect(data_dir / "coderd.sqlite3") as db:
        row = db.execute(
            "SELECT j.completed_at, j.error FROM provisioner_provisionerjob j "
            "JOIN workspaces_workspacebuild b ON b.job_id = j.id WHERE b.id = ?",
            (uuid.UUID(build).hex,),
        ).fetchone()
    return row[0] is not None, row[1]


def test_it_lets_the_running_build_finish_on_sigterm(tmp_path: Path) -> None:
    server = start_server(tmp_path, "--http-address", "127.0.0.1:0", "--provisioner-daemons", "1")
    try:
        base = served_url(server)
        _, build = start_a_build(base, start_ms=1500)
        assert stop_by_sigterm(server, timeout=30) == 0
    finally:
        server.stop()
    assert job_outcome(tmp_path, build) == (True, "")  # finished, not failed
    assert "stopping 1 provisioner daemon(s)" in server.log()
    assert "waiting for 1 running job(s) to finish: send SIGTERM again to stop now" in server.log()


@pytest.mark.parametrize(
    ("sig", "notice"),
    [(signal.SIGTERM, "send SIGTERM again to stop now"), (signal.SIGINT, "press Ctrl-C again to stop now")],
)
def test_it_stops_at_once_on_a_second_signal(tmp_path: Path, sig: signal.Signals, notice: str) -> None:
    server = start_server(tmp_path, "--http-address", "127.0.0.1:0", "--provisioner-daemons", "1")
    try:
        base = served_url(server)
        _, build = start_a_build(base, start_ms=120_000)
        os.kill(server.pid, sig)
        wait_for(lambda: notice in server.log(), 15, "the notice of the graceful stop")
        assert server.popen.poll() is None  # waiting for the job
        os.kill(server.pid, sig)
        # Far sooner than the two-minute build or the 30 s graceful wait.
        assert server.popen.wait(timeout=15) == 0
    finally:
        server.stop()
    completed, error = job_outcome(tmp_path, build)
    assert completed and error  # the interrupted job is recorded as failed
    assert "Traceback" not in server.log()


def test_it_says_in_one_line_that_the_metrics_port_is_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = manage(
            "server", "--http-address", "127.0.0.1:0", "--prometheus-enable",
            "--prometheus-address", f"127.0.0.1:{port}", env=clean_env(tmp_path),
        )  # fmt: skip
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert len(done.stderr.splitlines()) == 1, done.stderr  # an environment problem: one line, exit 1
    assert done.stderr.startswith("manage.py server: cannot listen for metrics on ")
    assert done.stderr.splitlines()[-1].endswith(
        f"127.0.0.1:{port} (--prometheus-address / CODER_PROMETHEUS_ADDRESS): address already in use"
    )


def test_it_says_in_one_line_that_redis_cannot_be_reached(tmp_path: Path) -> None:
    done = manage(
        "server",
        "--http-address",
        "127.0.0.1:0",
        env=clean_env(tmp_path, CODER_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0"),
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("manage.py server:")]
    assert len(errors) == 1
    assert "cannot reach Redis (CODER_REDIS_URL)" in errors[0]


def test_it_says_in_one_line_that_the_database_cannot_be_reached(tmp_path: Path) -> None:
    url = f"postgres://coder:secret@127.0.0.1:{free_port()}/coderd"
    done = manage(
        "server",
        "--http-address",
        "127.0.0.1:0",
        env=clean_env(tmp_path, CODER_PG_CONNECTION_URL=url, CODER_REDIS_URL="redis://127.0.0.1:1/0"),
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("manage.py server:")]
    assert len(errors) == 1
    # Besides that line, only the start-up check warnings (W101: PostgreSQL without Redis).
    assert [
        line for line in done.stderr.splitlines() if " WARNING coderd.server: coderd.W" not in line
    ] == errors
    assert "cannot use the database (CODER_PG_CONNECTION_URL)" in errors[0]
    assert "secret" not in done.stderr  # the password stays out of the logs


def test_it_serves_metrics_as_its_flags_say(tmp_path: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    metrics_port = free_port()
    server = start_server(
        tmp_path, "--http-address", "127.0.0.1:0", "--provisioner-daemons", "0", "--prometheus-enable",
        "--prometheus-address", f"127.0.0.1:{metrics_port}", "--prometheus-legacy-metrics=false",
        CODER_PROMETHEUS_LEGACY_METRICS="true",
    )  # fmt: skip
    try:
        served_url(server)
        status, _, body = http_get(f"http://127.0.0.1:{metrics_port}/metrics")
        assert stop_by_sigterm(server) == 0
    finally:
        server.stop()
    assert status == 200
    names = {family.name for family in text_string_to_metric_families(body.decode())}
    assert "coderd_api_request_latencies_seconds" in names
    assert "coderd_api_request_latencies_ms" not in names  # the flag won over the variable
    assert f"serving metrics on http://127.0.0.1:{metrics_port}/metrics" in server.log()


def test_it_stops_on_a_sigterm_that_comes_as_it_starts_serving(tmp_path: Path) -> None:
    server = start_server(tmp_path, "--http-address", "127.0.0.1:0", "--provisioner-daemons", "0")
    try:
        served_url(server)  # the signal lands while uvicorn is still being set up
        assert stop_by_sigterm(server) == 0
    finally:
        server.stop()
    assert "Traceback" not in server.log()
