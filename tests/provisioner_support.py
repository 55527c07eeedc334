"""Helpers for the provisioner tests: a recording observer, clocks, data makers.

Also a small command line (`python -m tests.provisioner_support ...`) that test subprocesses use to
seed jobs, run a daemon, reap and report against the database their environment names.
"""

from __future__ import annotations

import json
import sys
import threading
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

T0 = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)


class RecordingObserver:
    """A JobObserver that remembers every call (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running_now: dict[str, int] = {}
        self.max_running = 0
        self.finished: list[tuple[str, bool, float, Any]] = []
        self.started = 0
        self.stopped = 0

    @contextmanager
    def running(self, provisioner: str):
        with self.lock:
            self.running_now[provisioner] = self.running_now.get(provisioner, 0) + 1
            self.max_running = max(self.max_running, sum(self.running_now.values()))
        try:
            yield
        finally:
            with self.lock:
                self.running_now[provisioner] -= 1

    def job_finished(self, provisioner: str, succeeded: bool, seconds: float, build: Any) -> None:
        with self.lock:
            self.finished.append((provisioner, succeeded, seconds, build))

    def daemon_started(self) -> None:
        with self.lock:
            self.started += 1

    def daemon_stopped(self) -> None:
        with self.lock:
            self.stopped += 1


class FixedClock:
    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


def in_thread(target: Any, *args: Any) -> threading.Thread:
    """Start `target(*args)` in a thread that closes its database connection when done (PostgreSQL
    cannot drop a test database that a finished thread's connection still holds)."""

    def run() -> None:
        from django.db import connection

        try:
            target(*args)
        finally:
            connection.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def ready_template(owner: Any, name: str, source: dict[str, Any], provisioner: str = "echo") -> Any:
    """A template whose version's import job has already succeeded (so only builds are pending)."""
    from tests.fixtures import finish_job, make_echo_template

    template = make_echo_template(owner, name=name, source=source, provisioner=provisioner)
    finish_job(template.active_version.job)
    return template


def build_job(workspace: Any) -> Any:
    workspace.refresh_from_db()
    job = workspace.latest_build.job
    job.refresh_from_db()
    return job


# --- the command line for subprocesses ------------------------------------------------------------


def _setup() -> None:
    import os

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "coderd.settings")
    import django

    django.setup()


def main(argv: list[str]) -> None:
    _setup()
    from django.utils import timezone

    command, args = argv[0], argv[1:]
    if command == "seed":
        # seed N DURATION_MS: a first user, an echo template, N workspaces with pending start builds.
        from coderd.users.services import create_first_user
        from tests.fixtures import PASSWORD, make_workspace

        count, duration = int(args[0]), int(args[1])
        owner = create_first_user("owner@example.com", "owner", PASSWORD)[0]
        source = {"start": {"duration_ms": duration, "logs": ["one", "two"]}}
        template = ready_template(owner, "echo", source)
        ids = [str(build_job(make_workspace(owner, template, name=f"ws-{i}")).id) for i in range(count)]
        print(json.dumps(ids))
    elif command == "daemon":
        # daemon NAME [--until-idle] [--start-file PATH]: an in-process daemon against this database.
        from provisioner.daemon import Daemon

        daemon = Daemon(args[0], poll_interval=0.05)
        if "--start-file" in args:
            # Say "ready", then wait for the test's "go", so that every daemon competes from the start.
            import time
            from pathlib import Path

            go = Path(args[args.index("--start-file") + 1])
            Path(f"{go}.{args[0]}").touch()
            while not go.exists():
                time.sleep(0.02)
        if "--until-idle" in args:
            while daemon.run_once(timezone.now()):
                pass
        else:
            daemon.serve()
    elif command == "reap":
        # reap SECONDS_AHEAD: the reaper, as if that many seconds had passed.
        from provisioner import reaper

        reaped = reaper.run_once(timezone.now() + timedelta(seconds=float(args[0])))
        print(json.dumps([str(x) for x in reaped]))
    elif command == "jobs":
        from provisioner.models import ProvisionerJob

        jobs = ProvisionerJob.objects.order_by("created_at")
        print(
            json.dumps(
                [
                    {
                        "id": str(j.id),
                        "type": j.type,
                        "status": j.get_status(),
                        "error": j.error,
                        "worker": str(j.worker_id),
                        "logs": list(j.logs.order_by("id").values_list("output", flat=True)),
                    }
                    for j in jobs
                ]
            )
        )
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
