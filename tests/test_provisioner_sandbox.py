"""Shell scripts run in bubblewrap: a template admin's script cannot reach the database, the secret
key, the daemon's environment or processes, nor another workspace; nothing it starts outlives its
daemon (however it ends) or its build; without a sandbox, shell builds fail with the fix named, unless
the operator opted out; a rebuild waits for every process of an earlier script of its workspace."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from django.conf import settings

from coderd.workspaces.services import create_build
from provisioner.daemon import Daemon
from provisioner.runners import sandbox
from provisioner.runners.echo import EchoProvisioner
from provisioner.runners.shell import ShellProvisioner
from tests.fixtures import make_workspace
from tests.provisioner_support import T0, FixedClock, build_job, in_thread, ready_template
from tests.services import Coderd, ServerProcess, stop_pid, wait_for

PSK = "sandbox-test-psk-0123456789"


def outputs(job: Any) -> list[str]:
    return list(job.logs.order_by("id").values_list("output", flat=True))


def job_processes(workspace_id: str) -> list[int]:
    """Live processes whose environment names this workspace: the script, its children, bwrap."""
    needle = f"CODER_WORKSPACE_ID={workspace_id}".encode()
    found = []
    for pid in psutil.pids():
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            if needle in environ.split(b"\0") and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                found.append(pid)
        except (OSError, psutil.NoSuchProcess):
            pass
    return found


def kill_job_processes(workspace_id: str) -> None:
    """So that a failing test leaves nothing behind (each found by its PID)."""
    for pid in job_processes(workspace_id):
        stop_pid(pid, sig=signal.SIGKILL)


def run_once(tmp_path: Path, shell: ShellProvisioner) -> bool:
    runners = {"echo": EchoProvisioner(), "shell": shell}
    return Daemon("d1", clock=FixedClock(), data_dir=tmp_path, runners=runners).run_once(T0)


def shell_workspace(owner: Any, source: dict[str, Any], name: str = "sb") -> Any:
    template = ready_template(owner, name, source, provisioner="shell")
    return make_workspace(owner, template, name=f"{name}-ws")


# --- against a real server: the attacks of the issue -----------------------------------------------


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Outside /tmp, which the sandbox replaces anyway: the data folder must be hidden by its own tmpfs.
    base = Path(tempfile.mkdtemp(prefix="coderd-sandbox-", dir="/var/tmp"))
    try:
        yield base / "data"
    finally:
        shutil.rmtree(base, ignore_errors=True)


class Api:
    def __init__(self, server: Coderd, token: str) -> None:
        self.server, self.token = server, token

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, data = self.server.request(method, "/api/v2/" + path, body, token=self.token)
        assert status in (200, 201), (method, path, status, data)
        return data

    def template(self, name: str, source: dict[str, Any]) -> str:
        version = self.ok(
            "POST",
            "organizations/default/templateversions",
            {"name": name, "provisioner": "shell", "source": source},
        )
        wait_for(
            lambda: self.ok("GET", f"templateversions/{version['id']}")["job"]["status"] == "succeeded",
            timeout=30,
            what="the template import",
        )
        body = {"name": name, "template_version_id": version["id"]}
        return self.ok("POST", "organizations/default/templates", body)["id"]

    def workspace(self, template_id: str, name: str) -> dict[str, Any]:
        body = {"template_id": template_id, "name": name}
        return self.ok("POST", "organizations/default/members/me/workspaces", body)

    def finished(self, build_id: str) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            job = self.ok("GET", f"workspacebuilds/{build_id}")["job"]
            return job if job["status"] in ("succeeded", "failed", "canceled") else None

        return wait_for(done, timeout=60, what="the build to end")

    def logs(self, build_id: str) -> list[str]:
        return [line["output"] for line in self.ok("GET", f"workspacebuilds/{build_id}/logs")]


def escape_script(server_pid: int) -> str:
    # What a template admin tried (issue 10), one attempt per line, each saying how it went.
    attack = (
        "import sqlite3; c=sqlite3.connect('../../coderd.sqlite3'); "
        "c.execute('update users_user set roles=? where username=?', ('[\"owner\"]','tadmin')); c.commit()"
    )
    return f"""
python3 -c "{attack}" && echo DB-WRITTEN || echo db-refused
cat ../../secret_key && echo KEY-READ || echo key-refused
cat /proc/$PPID/environ | tr '\\0' '\\n'
for e in /proc/[0-9]*/environ; do tr '\\0' '\\n' < "$e"; done 2>/dev/null | grep PSK || echo psk-not-found
kill -0 {server_pid} 2>/dev/null && echo SERVER-SEEN || echo server-not-seen
kill -9 {server_pid} 2>/dev/null && echo SERVER-KILLED || echo kill-refused
cat ../*/mine 2>/dev/null && echo OTHER-READ || echo other-refused
echo processes: $(ls -d /proc/[0-9]* | wc -l)
"""


def test_it_keeps_a_template_admins_script_from_the_database_the_key_the_daemon_and_other_workspaces(
    data_dir: Path,
) -> None:
    server = Coderd(
        data_dir, kind="server", workers=1, metrics=False, env={"CODER_PROVISIONER_DAEMON_PSK": PSK}
    )
    try:
        owner = Api(server, server.first_user("owner"))
        owner.ok(
            "POST",
            "users",
            {
                "email": "t@example.com",
                "username": "tadmin",
                "password": "pw123456",
                "roles": ["template-admin"],
            },
        )
        tadmin = Api(server, server.login("t@example.com", "pw123456"))

        # Another workspace, with something of its own in its folder.
        other = tadmin.workspace(tadmin.template("victim", {"start": "echo private-data > mine\n"}), "victim")
        assert tadmin.finished(other["latest_build"]["id"])["status"] == "succeeded"
        assert (data_dir / "workspaces" / other["id"] / "mine").exists()

        template_id = tadmin.template("escape", {"start": escape_script(server.pid)})
        build_id = tadmin.workspace(template_id, "escape")["latest_build"]["id"]
        job = tadmin.finished(build_id)
        logs = tadmin.logs(build_id)
        assert job["status"] == "succeeded", (job, logs)
        for refused in ("db-refused", "key-refused", "psk-not-found", "server-not-seen", "kill-refused"):
            assert refused in logs, logs
        assert "other-refused" in logs, logs
        server.process.check_alive()
        # The role did not change; nothing of the key, the daemon's key or another workspace leaked.
        roles = {role["name"] for role in owner.ok("GET", "users/tadmin")["roles"]}
        assert roles == {"template-admin"}
        secret = (data_dir / "secret_key").read_text().strip()
        text = "\n".join(logs)
        assert secret not in text and PSK not in text and "private-data" not in text
        # Its own PID namespace: the shell, bwrap's init and the few commands of that line.
        assert int(next(x for x in logs if x.startswith("processes:")).split()[1]) < 8
    finally:
        server.stop()


def test_it_starts_without_bubblewrap_and_fails_only_shell_builds_saying_why(data_dir: Path) -> None:
    env = {"CODER_PROVISIONER_SHELL_BWRAP": "/nonexistent/bwrap", "CODER_LOG_LEVEL": "info"}
    server = Coderd(data_dir, kind="server", workers=1, metrics=False, env=env)
    try:
        assert (
            "shell builds will fail: no sandbox can be made: bubblewrap ('/nonexistent/bwrap')"
            in server.process.log()
        )
        owner = Api(server, server.first_user("owner"))
        echo = owner.ok(
            "POST",
            "organizations/default/templateversions",
            {"name": "e", "provisioner": "echo", "source": {"start": {"logs": ["echoed"]}}},
        )
        wait_for(
            lambda: owner.ok("GET", f"templateversions/{echo['id']}")["job"]["status"] == "succeeded",
            30,
            "import",
        )
        template = owner.ok(
            "POST", "organizations/default/templates", {"name": "e", "template_version_id": echo["id"]}
        )
        assert (
            owner.finished(owner.workspace(template["id"], "e")["latest_build"]["id"])["status"]
            == "succeeded"
        )
        # A shell import only parses its scripts; the build is what would run them.
        build = owner.workspace(owner.template("s", {"start": "touch ran\n"}), "s")
        job = owner.finished(build["latest_build"]["id"])
        assert job["status"] == "failed"
        assert (
            "install bubblewrap" in job["error"] and "CODER_PROVISIONER_SHELL_SANDBOX=false" in job["error"]
        )
        assert not list(data_dir.glob("workspaces/*/ran"))
    finally:
        server.stop()


# --- no orphans: a daemon killed mid-script takes the script and its children with it --------------


@pytest.mark.parametrize("daemon_kind", ["server", "provisionerd"])
def test_it_leaves_nothing_of_a_script_when_its_daemon_is_killed(data_dir: Path, daemon_kind: str) -> None:
    in_process = daemon_kind == "server"
    env = {"CODER_PROVISIONER_DAEMON_PSK": PSK, "CODER_PROVISIONER_DAEMONS": "2" if in_process else "0"}
    server = Coderd(data_dir, kind="server", workers=1, metrics=False, env=env)
    daemon: ServerProcess | None = None
    workspace: dict[str, Any] = {}
    try:
        if not in_process:
            daemon_data = data_dir.parent / "daemon"
            daemon_data.mkdir()
            argv = [sys.executable, "manage.py", "provisionerd", "start", "--url", server.base, "--psk", PSK]
            argv += ["--name", "doomed", "--provisioner-types", "shell", "--poll-interval", "100ms"]
            daemon = ServerProcess(argv, env={"CODER_DATA_DIR": str(daemon_data)}, name="provisionerd")
        owner = Api(server, server.first_user("owner"))
        script = "sleep 300 &\necho started\nsleep 3\ntouch late-marker\nsleep 300\n"
        workspace = owner.workspace(owner.template("orphans", {"start": script}), "orphans")
        build_id = workspace["latest_build"]["id"]
        wait_for(lambda: "started" in owner.logs(build_id), timeout=30, what="the script to start")
        # The script and its two sleeps at least (and bwrap's monitor and init around them).
        wait_for(lambda: len(job_processes(workspace["id"])) >= 3, timeout=10, what="the script's processes")
        victim = server.process if in_process else daemon
        assert victim is not None
        victim.popen.send_signal(signal.SIGKILL)
        victim.popen.wait(timeout=10)
        wait_for(
            lambda: not job_processes(workspace["id"]), timeout=2, what="every process of the script to end"
        )
        folders = list((data_dir if in_process else data_dir.parent / "daemon").glob("workspaces/*"))
        assert folders
        threading.Event().wait(4)  # past the moment the script would have written its marker
        assert not any((folder / "late-marker").exists() for folder in folders)
        assert not job_processes(workspace["id"])
    finally:
        if daemon is not None:
            daemon.stop()
        server.stop()
        if workspace:
            kill_job_processes(workspace["id"])


# --- in-process daemons ----------------------------------------------------------------------------


def test_it_ends_a_child_that_outlives_its_script(owner: Any, tmp_path: Path) -> None:
    # The child closes its output, so nothing waits for it: it used to run on after the build.
    script = "sleep 300 >/dev/null 2>&1 &\necho left-a-child\n"
    workspace = shell_workspace(owner, {"start": script})
    try:
        assert run_once(tmp_path, ShellProvisioner())
        job = build_job(workspace)
        assert job.get_status(T0) == "succeeded", job.error
        assert not job_processes(str(workspace.id))
    finally:
        kill_job_processes(str(workspace.id))


def test_it_fails_a_shell_build_naming_the_fix_when_bubblewrap_is_missing(
    owner: Any, tmp_path: Path, settings: Any
) -> None:
    settings.PROVISIONER_SHELL_BWRAP = str(tmp_path / "no-such-bwrap")
    workspace = shell_workspace(owner, {"start": "touch ran\n"})
    assert run_once(tmp_path, ShellProvisioner())
    job = build_job(workspace)
    assert job.get_status(T0) == "failed"
    assert job.error.startswith("shell: cannot sandbox the script: bubblewrap (")
    assert "install bubblewrap" in job.error and "CODER_PROVISIONER_SHELL_SANDBOX=false" in job.error
    assert outputs(job) == [job.error]
    assert not (tmp_path / "workspaces" / str(workspace.id) / "ran").exists()


def test_it_fails_a_shell_build_when_bubblewrap_cannot_make_a_sandbox(owner: Any, tmp_path: Path) -> None:
    # As bwrap answers where user namespaces are not allowed.
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create a new namespace' >&2\nexit 1\n")
    fake.chmod(0o755)
    workspace = shell_workspace(owner, {"start": "touch ran\n"})
    assert run_once(tmp_path, ShellProvisioner(bwrap=str(fake)))
    job = build_job(workspace)
    assert job.get_status(T0) == "failed"
    assert "cannot make a sandbox here (bwrap: No permissions to create a new namespace)" in job.error
    assert "user namespaces" in job.error
    assert not (tmp_path / "workspaces" / str(workspace.id) / "ran").exists()


def test_it_tries_the_sandbox_once_per_daemon_not_per_build(owner: Any, tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    wrapper = tmp_path / "bwrap"
    # One line per call (a script's newlines become spaces).
    wrapper.write_text(
        f"#!/bin/sh\nprintf '%s ' \"$@\" | tr '\\n' ' ' >> {calls}\necho >> {calls}\n"
        f'exec {shutil.which("bwrap")} "$@"\n'
    )
    wrapper.chmod(0o755)
    shell = ShellProvisioner(bwrap=str(wrapper))
    workspace = shell_workspace(owner, {"start": "echo hi\n", "stop": "echo bye\n"})
    run_once(tmp_path, shell)
    create_build(owner, workspace, "stop")
    run_once(tmp_path, shell)
    assert build_job(workspace).get_status(T0) == "succeeded"
    lines = calls.read_text().splitlines()
    assert len(lines) == 3  # one trial, two scripts
    assert lines[0].endswith("/bin/sh -c exit 0 ")
    assert all("--die-with-parent" in line and "--unshare-pid" in line for line in lines)


def test_it_runs_scripts_unconfined_when_the_operator_opts_out(
    owner: Any, tmp_path: Path, settings: Any
) -> None:
    settings.PROVISIONER_SHELL_SANDBOX = False
    settings.PROVISIONER_SHELL_BWRAP = str(tmp_path / "no-such-bwrap")  # not even looked for
    script = f"kill -0 {os.getpid()} && echo sees-the-daemon\n"
    workspace = shell_workspace(owner, {"start": script})
    assert run_once(tmp_path, ShellProvisioner())
    job = build_job(workspace)
    assert job.get_status(T0) == "succeeded", job.error
    assert outputs(job) == ["sees-the-daemon"]


@pytest.mark.django_db(transaction=True)
def test_it_makes_a_build_wait_for_every_process_of_an_earlier_script_of_its_workspace(
    owner: Any, tmp_path: Path
) -> None:
    workspace = shell_workspace(owner, {"start": "touch ran\n"})
    folder = tmp_path / "workspaces" / str(workspace.id)
    folder.mkdir(parents=True)
    # A process left by an earlier build holds the lock its script was given (as a reaped job's
    # script that its daemon has not stopped yet would).
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDONLY); "
            "fcntl.flock(fd, fcntl.LOCK_SH); print('locked', flush=True); time.sleep(300)",
            str(folder),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    daemon = Daemon("d1", data_dir=tmp_path)
    thread: threading.Thread | None = None
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        thread = in_thread(daemon.run_once, T0)
        waiting = "shell: an earlier script of this workspace is still running; waiting for it to end"
        wait_for(lambda: waiting in outputs(build_job(workspace)), timeout=10, what="the build to wait")
        threading.Event().wait(0.5)
        assert thread.is_alive() and not (folder / "ran").exists()
        stop_pid(holder.pid)
        thread.join(10)
        assert not thread.is_alive()
    finally:
        stop_pid(holder.pid)
        holder.wait(5)
        daemon.close()
        if thread is not None:
            thread.join(5)
    job = build_job(workspace)
    assert job.get_status() == "succeeded", job.error
    assert (folder / "ran").exists()


def test_it_hides_the_database_and_socket_folders_wherever_they_are(data_dir: Path) -> None:
    base = data_dir.parent
    for name in ("data/workspaces", "db", "pg", "redis"):
        (base / name).mkdir(parents=True)
    databases = {
        "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(base / "db" / "coderd.sqlite3")},
        "pg": {"ENGINE": "django.db.backends.postgresql", "HOST": str(base / "pg")},
        "tcp": {"ENGINE": "django.db.backends.postgresql", "HOST": "127.0.0.1"},
    }
    hidden = sandbox.hidden_folders(data_dir, databases, f"unix://{base}/redis/redis.sock?db=0")
    for name in ("data", "db", "pg", "redis"):
        assert str(base / name) in hidden
    # The settings' own data folder too; /tmp is the sandbox's own already; never "/".
    assert os.path.realpath(settings.DATA_DIR) in hidden or settings.DATA_DIR.resolve().is_relative_to("/tmp")
    assert "/" not in hidden and not any(h.startswith("/tmp") for h in hidden)
    # A folder under a hidden one is hidden with it.
    inside = {
        "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(data_dir / "workspaces" / "x.db")}
    }
    hidden = sandbox.hidden_folders(data_dir, inside, "")
    assert str(data_dir) in hidden and str(data_dir / "workspaces") not in hidden


def test_it_keeps_the_settings_heartbeat_equal_to_the_daemons(settings: Any) -> None:
    from provisioner.execution import HEARTBEAT_INTERVAL

    assert settings.PROVISIONER_HEARTBEAT_INTERVAL == HEARTBEAT_INTERVAL
    assert settings.PROVISIONER_MIN_HUNG_JOB_TIMEOUT == 3 * HEARTBEAT_INTERVAL
