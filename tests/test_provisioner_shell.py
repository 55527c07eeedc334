"""The shell provisioner: logs, environment, folder, exit codes, timeout, cancel (SIGTERM, then SIGKILL)."""

from __future__ import annotations

import time

import pytest

from coderd.workspaces.services import cancel_build, create_build
from provisioner.daemon import Daemon
from tests.fixtures import make_echo_template, make_workspace
from tests.provisioner_support import T0, FixedClock, build_job, in_thread, ready_template
from tests.services import wait_for


def shell_workspace(owner, source, name="sh"):
    template = ready_template(owner, name, source, provisioner="shell")
    return make_workspace(owner, template, name=f"{name}-ws")


def outputs(job) -> list[str]:
    return list(job.logs.order_by("id").values_list("output", flat=True))


def run(tmp_path):
    return Daemon("d1", clock=FixedClock(), data_dir=tmp_path).run_once(T0)


def test_it_logs_each_line_with_the_workspace_variables_in_its_own_folder(owner, tmp_path, monkeypatch):
    monkeypatch.setenv("CODER_PROVISIONER_DAEMON_PSK", "secret-psk")
    script = (
        "#!/bin/sh\n"
        'echo "name=$CODER_WORKSPACE_NAME owner=$CODER_WORKSPACE_OWNER t=$CODER_WORKSPACE_TRANSITION"\n'
        'echo "n=$CODER_WORKSPACE_BUILD_NUMBER template=$CODER_TEMPLATE_NAME id=$CODER_WORKSPACE_ID"\n'
        "pwd\n"
        "echo to-stderr >&2\n"
        'echo "psk=${CODER_PROVISIONER_DAEMON_PSK:-none}"\n'
        "touch made-here\n"
    )
    workspace = shell_workspace(owner, {"start": script})
    assert run(tmp_path)
    job = build_job(workspace)
    assert job.get_status(T0) == "succeeded", job.error
    folder = tmp_path / "workspaces" / str(workspace.id)
    assert outputs(job) == [
        "name=sh-ws owner=owner t=start",
        f"n=1 template=sh id={workspace.id}",
        str(folder),
        "to-stderr",
        "psk=none",  # the daemon's own secrets stay out of the script's environment
    ]
    assert (folder / "made-here").exists()


def test_it_fails_on_a_non_zero_exit(owner, tmp_path):
    workspace = shell_workspace(owner, {"start": "echo before\nexit 3\n"})
    run(tmp_path)
    job = build_job(workspace)
    assert job.get_status(T0) == "failed"
    assert "exited with status 3" in job.error
    assert outputs(job)[0] == "before"


def test_it_fails_a_script_that_runs_past_its_timeout(owner, tmp_path):
    workspace = shell_workspace(owner, {"start": "echo sleeping\nsleep 30\n", "timeout_seconds": 1})
    began = time.monotonic()
    run(tmp_path)
    assert time.monotonic() - began < 5
    job = build_job(workspace)
    assert job.get_status(T0) == "failed"
    assert "timed out after 1 seconds" in job.error
    assert outputs(job)[0] == "sleeping"


def test_it_times_out_a_script_that_never_stops_talking(owner, tmp_path):
    workspace = shell_workspace(
        owner, {"start": "while :; do echo tick; sleep 0.01; done\n", "timeout_seconds": 1}
    )
    began = time.monotonic()
    run(tmp_path)
    assert time.monotonic() - began < 5
    job = build_job(workspace)
    assert "timed out" in job.error
    assert outputs(job).count("tick") > 10


def test_it_removes_the_workspace_folder_after_a_successful_delete(owner, tmp_path):
    workspace = shell_workspace(owner, {"start": "echo hi > file\n", "delete": "cat file\n"})
    run(tmp_path)
    folder = tmp_path / "workspaces" / str(workspace.id)
    assert (folder / "file").exists()
    create_build(owner, workspace, "delete")
    run(tmp_path)
    assert build_job(workspace).get_status(T0) == "succeeded"
    assert outputs(build_job(workspace)) == ["hi"]
    assert not folder.exists()


def test_it_fails_an_import_whose_script_does_not_parse(owner, tmp_path):
    template = make_echo_template(owner, name="broken", source={"start": "if then fi ("}, provisioner="shell")
    run(tmp_path)
    job = template.active_version.job
    job.refresh_from_db()
    assert job.get_status(T0) == "failed"
    assert "start script does not parse" in job.error


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("script", "expected_line"),
    [
        ("trap 'echo got TERM; exit 1' TERM\necho started\nwhile true; do sleep 0.1; done\n", "got TERM"),
        # A script that ignores SIGTERM is killed with SIGKILL after the grace period.
        ("trap '' TERM\necho started\nwhile true; do sleep 0.1; done\n", None),
    ],
)
def test_it_stops_a_canceled_script_within_a_second_or_so(owner, tmp_path, script, expected_line):
    workspace = shell_workspace(owner, {"start": script})
    daemon = Daemon("d1", data_dir=tmp_path)
    thread = in_thread(daemon.run_once, T0)
    try:
        wait_for(lambda: "started" in outputs(build_job(workspace)), timeout=10, what="the script to start")
        began = time.monotonic()
        cancel_build(owner, workspace.latest_build)
        thread.join(10)
        assert not thread.is_alive()
        assert time.monotonic() - began < 2.0
    finally:
        daemon.close()
        thread.join(5)
    job = build_job(workspace)
    assert job.get_status() == "canceled"
    if expected_line:
        assert expected_line in outputs(job)


def test_it_caps_a_runaway_scripts_logs_and_says_what_it_dropped(owner, tmp_path, monkeypatch):
    monkeypatch.setattr("provisioner.execution.LOG_LIMIT_BYTES", 1000)
    monkeypatch.setattr("provisioner.runners.shell.MAX_LINE_BYTES", 300)
    # 100 lines of 9 bytes fit (900 bytes); one line of 700 bytes arrives as 300 + 300 + 100, of
    # which none is stored (the first does not fit; after it nothing but errors); then 5000 more
    # lines and a failing exit: 5003 lines dropped, 700 + 5000 * 4 = 20,700 bytes (20.2 KiB).
    script = (
        "i=0; while [ $i -lt 100 ]; do echo line-$(printf %04d $i); i=$((i+1)); done\n"
        "printf '%0700d\\n' 0\n"
        "i=0; while [ $i -lt 5000 ]; do echo more; i=$((i+1)); done\n"
        "exit 4\n"
    )
    workspace = shell_workspace(owner, {"start": script})
    run(tmp_path)
    job = build_job(workspace)
    assert job.get_status(T0) == "failed"
    logs = outputs(job)
    assert logs[:100] == [f"line-{i:04d}" for i in range(100)]
    assert logs[100] == "The job's logs reached the limit of 1000 bytes: further output is not stored."
    assert "exited with status 4" in logs[101]  # an error line is stored past the cap
    assert logs[102] == "5003 line(s) of output (20.2 KiB) were not stored."
    assert len(logs) == 103
