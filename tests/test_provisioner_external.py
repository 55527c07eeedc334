"""An external daemon (`manage.py provisionerd start` as a process) against a real server process
(daphne on a file SQLite database, loopback, free port): builds started through the API, logs followed
over a websocket to the end, reconnect with backoff, graceful SIGTERM, and SIGKILL mid-job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.services import REPO, ServerProcess, free_port, stop_pid, wait_for

PSK = "external-e2e-psk"
LINES = [f"remote line {i}" for i in range(6)]


class Coderd:
    """A daphne server process and a little JSON client for it."""

    def __init__(self, tmp_path: Path) -> None:
        self.data = tmp_path / "server"
        self.data.mkdir()
        self.env = {"CODER_DATA_DIR": str(self.data), "CODER_PROVISIONER_DAEMON_PSK": PSK}
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "-v0"],
            cwd=REPO,
            env={**os.environ, **self.env},
            check=True,
        )
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.server: ServerProcess | None = None
        self.token = ""

    def start(self, argv: list[str] | None = None) -> None:
        daphne = ["-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port), "coderd.asgi:application"]
        self.server = ServerProcess([sys.executable, *(argv or daphne)], env=self.env, name="coderd")
        self.server.wait_http(self.base + "/api/v2/buildinfo")

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()

    def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        request = urllib.request.Request(
            self.base + "/api/v2/" + path,
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Content-Type": "application/json", "Coder-Session-Token": self.token},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, data = self.api(method, path, body)
        assert status in (200, 201), (status, data)
        return data

    def first_user(self) -> None:
        self.ok(
            "POST", "users/first", {"email": "o@example.com", "username": "owner", "password": "pw123456"}
        )
        self.token = self.ok("POST", "users/login", {"email": "o@example.com", "password": "pw123456"})[
            "session_token"
        ]

    def template(self, name: str, provisioner: str, source: dict[str, Any]) -> str:
        version = self.ok(
            "POST",
            "organizations/default/templateversions",
            {"name": name, "provisioner": provisioner, "source": source},
        )
        wait_for(
            lambda: self.ok("GET", f"templateversions/{version['id']}")["job"]["status"] == "succeeded",
            timeout=30,
            what="the template import",
        )
        return self.ok(
            "POST", "organizations/default/templates", {"name": name, "template_version_id": version["id"]}
        )["id"]

    def workspace(self, template_id: str, name: str) -> dict[str, Any]:
        return self.ok(
            "POST", "organizations/default/members/me/workspaces", {"template_id": template_id, "name": name}
        )

    def build_status(self, build_id: str) -> dict[str, Any]:
        return self.ok("GET", f"workspacebuilds/{build_id}")["job"]

    def follow(self, build_id: str) -> tuple[list[dict[str, Any]], int | None]:
        messages = []
        with connect(
            f"ws://127.0.0.1:{self.port}/api/v2/workspacebuilds/{build_id}/logs?follow",
            origin=self.base,  # type: ignore[arg-type]
            additional_headers={"Coder-Session-Token": self.token},
            proxy=None,
        ) as ws:
            try:
                while True:
                    messages.append(json.loads(ws.recv(timeout=30)))
            except ConnectionClosed as closed:
                return messages, closed.rcvd.code if closed.rcvd else None


def provisionerd(coderd: Coderd, tmp_path: Path, name: str) -> ServerProcess:
    data = tmp_path / name
    data.mkdir()
    argv = [sys.executable, "manage.py", "provisionerd", "start", "--url", coderd.base, "--psk", PSK]
    argv += ["--name", name, "--provisioner-types", "echo,shell", "--poll-interval", "100ms"]
    # The daemon holds no database: CODER_DATA_DIR only says where shell workspaces live.
    return ServerProcess(argv, env={"CODER_DATA_DIR": str(data)}, name=name)


@pytest.fixture
def coderd(tmp_path):
    server = Coderd(tmp_path)
    try:
        yield server
    finally:
        server.stop()


def test_it_runs_a_build_on_an_external_daemon_and_streams_its_logs_to_the_end(coderd, tmp_path):
    # The daemon starts first: it retries with backoff until coderd is up.
    daemon = provisionerd(coderd, tmp_path, "remote-1")
    try:
        wait_for(lambda: "cannot reach coderd" in daemon.log(), timeout=20, what="a failed first attempt")
        coderd.start()
        coderd.first_user()
        template_id = coderd.template(
            "e2e", "echo", {"start": {"duration_ms": 600, "logs": LINES}, "stop": {"duration_ms": 1500}}
        )
        workspace = coderd.workspace(template_id, "ws1")
        build_id = workspace["latest_build"]["id"]

        messages, code = coderd.follow(build_id)
        assert [m["output"] for m in messages] == LINES
        assert code == 1000
        job = coderd.build_status(build_id)
        assert job["status"] == "succeeded"

        daemons = coderd.ok("GET", "organizations/default/provisionerdaemons")
        remote = [d for d in daemons if d["name"] == "remote-1"]
        assert remote and remote[0]["external"] and remote[0]["last_seen_at"]
        assert job["worker_id"] == remote[0]["id"]

        # Ctrl-C while a build runs: the build finishes, then the daemon exits 0 (as under SIGTERM,
        # and as `manage.py server` does), saying how to stop at once while it waits.
        slow = coderd.ok("POST", f"workspaces/{workspace['id']}/builds", {"transition": "stop"})
        wait_for(lambda: coderd.build_status(slow["id"])["status"] == "running", 20, "the stop build to run")
        daemon.popen.send_signal(signal.SIGINT)
        assert daemon.popen.wait(timeout=20) == 0
        assert coderd.build_status(slow["id"])["status"] == "succeeded"
        assert "waiting for 1 running job(s) to finish: press Ctrl-C again to stop now" in daemon.log()
    finally:
        daemon.stop()


def test_it_fails_the_build_of_an_external_daemon_killed_mid_job(coderd, tmp_path):
    coderd.start()
    coderd.first_user()
    daemon = provisionerd(coderd, tmp_path, "remote-doomed")
    try:
        template_id = coderd.template("sh", "shell", {"start": "echo started\nsleep 30\n"})
        workspace = coderd.workspace(template_id, "ws-sh")
        build_id = workspace["latest_build"]["id"]
        wait_for(lambda: coderd.build_status(build_id)["status"] == "running", 20, "the build to run")
        stop_pid(daemon.pid, sig=signal.SIGKILL)
        wait_for(lambda: coderd.build_status(build_id)["status"] == "failed", 20, "the build to fail")
        assert "disconnected" in coderd.build_status(build_id)["error"]
        # The workspace can build again.
        coderd.ok("POST", f"workspaces/{workspace['id']}/builds", {"transition": "stop"})
    finally:
        daemon.stop()


def test_it_stops_the_running_job_on_a_second_ctrl_c_or_sigterm(coderd, tmp_path):
    coderd.start()
    coderd.first_user()
    setup = provisionerd(coderd, tmp_path, "importer")
    try:
        template_id = coderd.template("sh", "shell", {"start": "echo started\nsleep 30\n"})
    finally:
        setup.stop()
    for name, signals, notice in [
        ("twice-termed", [signal.SIGTERM, signal.SIGTERM], "send SIGTERM again to stop now"),
        ("twice-interrupted", [signal.SIGINT, signal.SIGINT], "press Ctrl-C again to stop now"),
    ]:
        daemon = provisionerd(coderd, tmp_path, name)
        try:
            build_id = coderd.workspace(template_id, f"ws-{name}")["latest_build"]["id"]
            wait_for(lambda b=build_id: coderd.build_status(b)["status"] == "running", 20, "the build to run")
            for i, sig in enumerate(signals):
                daemon.popen.send_signal(sig)
                if i == 0:
                    # The first signal waits for the job, and says how not to: the daemon is still there.
                    wait_for(lambda d=daemon, n=notice: n in d.log(), 10, "the graceful notice")
                    assert daemon.popen.poll() is None
            assert daemon.popen.wait(timeout=10) == 0
            job = coderd.build_status(build_id)
            assert job["status"] == "failed"
            assert "closed" in job["error"]
        finally:
            daemon.stop()


def test_it_runs_builds_under_runserver_with_daemons_in_the_serving_process_only(coderd):
    # With the autoreloader: the parent watches files, the child serves; only the child runs daemons.
    coderd.start(["manage.py", "runserver", f"127.0.0.1:{coderd.port}", "--provisioner-daemons", "2"])
    coderd.first_user()
    template_id = coderd.template("rs", "echo", {"start": {"duration_ms": 50, "logs": ["from runserver"]}})
    build_id = coderd.workspace(template_id, "ws-rs")["latest_build"]["id"]
    messages, code = coderd.follow(build_id)
    assert ([m["output"] for m in messages], code) == (["from runserver"], 1000)
    daemons = coderd.ok("GET", "organizations/default/provisionerdaemons")
    assert len(daemons) == 2
    assert not any(d["external"] for d in daemons)
