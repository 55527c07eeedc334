"""Daemons as separate processes on one database (SQLite file, PostgreSQL): each job runs once; a
daemon killed with SIGKILL mid-job leaves a job the reaper fails."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.services import REPO, ServerProcess, stop_pid, wait_for


class Store:
    """A database that subprocesses share, driven through `python -m tests.provisioner_support`."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.dir = Path(env["CODER_DATA_DIR"])
        self.run("migrate")

    def run(self, *args: str) -> Any:
        if args[0] == "migrate":
            argv = [sys.executable, "manage.py", "migrate", "-v0"]
        else:
            argv = [sys.executable, "-m", "tests.provisioner_support", *args]
        done = subprocess.run(argv, cwd=REPO, env={**os.environ, **self.env}, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout) if done.stdout.strip() else None

    def jobs(self) -> list[dict[str, Any]]:
        return [j for j in self.run("jobs") if j["type"] == "workspace_build"]

    def daemon(self, name: str, *flags: str) -> ServerProcess:
        argv = [sys.executable, "-m", "tests.provisioner_support", "daemon", name, *flags]
        return ServerProcess(argv, env=self.env, name=name)


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Store:
    return Store({"CODER_DATA_DIR": str(tmp_path)})


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request, tmp_path: Path) -> Store:
    if request.param == "sqlite":
        return Store({"CODER_DATA_DIR": str(tmp_path)})
    url = request.getfixturevalue("pg_database")()
    return Store({"CODER_DATA_DIR": str(tmp_path), "CODER_PG_CONNECTION_URL": url})


def test_it_runs_each_job_exactly_once_with_several_daemon_processes(store: Store):
    ids = store.run("seed", "24", "50")
    go = store.dir / "go"
    names = [f"p{i}" for i in range(3)]
    daemons = [store.daemon(name, "--until-idle", "--start-file", str(go)) for name in names]
    try:
        wait_for(lambda: all(Path(f"{go}.{n}").exists() for n in names), 60, "the daemons to be ready")
        go.touch()
        for d in daemons:
            assert d.popen.wait(timeout=120) == 0, d.log()[-3000:]
    finally:
        for d in daemons:
            d.stop()
    jobs = store.jobs()
    assert sorted(j["id"] for j in jobs) == sorted(ids)
    assert all(j["status"] == "succeeded" for j in jobs)
    # A job run twice would have its two lines twice.
    assert all(j["logs"] == ["one", "two"] for j in jobs)
    assert len({j["worker"] for j in jobs}) >= 2


def test_it_reaps_the_job_of_a_daemon_process_killed_mid_job(sqlite_store: Store):
    [job_id] = sqlite_store.run("seed", "1", "60000")
    daemon = sqlite_store.daemon("doomed")
    try:
        # "running start of workspace owner/ws-0 (build #1, template echo echo-v1, job <id>)"
        wait_for(lambda: f"job {job_id})" in daemon.log(), 60, "the job to run")
    finally:
        stop_pid(daemon.pid, sig=signal.SIGKILL)
    daemon.popen.wait(timeout=10)  # psutil has reaped it already: this only tidies the Popen
    assert sqlite_store.run("reap", "0") == []  # its heartbeat is still fresh
    assert sqlite_store.run("reap", "31") == [job_id]
    [job] = sqlite_store.jobs()
    assert job["status"] == "failed"
    assert "stopped sending heartbeats" in job["error"]
    assert job["error"] in job["logs"]
