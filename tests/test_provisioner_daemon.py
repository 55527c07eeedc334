"""In-process daemons: claim, run, record; one step at a time with the clock passed in, and as threads."""

from __future__ import annotations

import time

import pytest

from coderd.workspaces.models import Workspace
from coderd.workspaces.services import cancel_build, create_build
from provisioner import queue
from provisioner.daemon import Daemon, DaemonGroup, start_in_process
from provisioner.models import ProvisionerDaemon, ProvisionerJob
from tests.fixtures import make_workspace
from tests.provisioner_support import T0, FixedClock, RecordingObserver, build_job, in_thread, ready_template
from tests.services import wait_for

ECHO = {"start": {"duration_ms": 0, "logs": ["a", "b"]}, "stop": {"duration_ms": 0}}


def outputs(job) -> list[str]:
    return list(job.logs.order_by("id").values_list("output", flat=True))


def test_it_runs_jobs_one_step_at_a_time_with_the_clock_passed_in(owner, echo_template, tmp_path):
    template = echo_template(source=ECHO)  # its import job is still pending
    workspace = make_workspace(owner, template)
    observer = RecordingObserver()
    clock = FixedClock(T0)
    daemon = Daemon("d1", observer=observer, clock=clock, data_dir=tmp_path)

    assert daemon.run_once(T0) is True  # the oldest job first: the template import
    import_job = template.active_version.job
    import_job.refresh_from_db()
    assert import_job.get_status(T0) == "succeeded"
    assert outputs(import_job) == ["echo: template version imported"]

    assert daemon.run_once(T0) is True
    job = build_job(workspace)
    assert (job.started_at, job.completed_at, job.error) == (T0, T0, "")
    assert job.get_status(T0) == "succeeded"
    assert outputs(job) == ["a", "b"]
    assert job.worker.name == "d1"

    assert daemon.run_once(T0) is False
    row = ProvisionerDaemon.objects.get(id=daemon.daemon_id)
    assert row.current_job_id is None and row.last_seen_at == T0 and not row.external
    assert [(p, ok, b.transition if b else None) for p, ok, _, b in observer.finished] == [
        ("echo", True, None),
        ("echo", True, "start"),
    ]


def test_it_records_an_echo_failure_with_its_error(owner, tmp_path):
    template = ready_template(owner, "failing", {"start": {"logs": ["trying"], "fail": True}})
    workspace = make_workspace(owner, template)
    observer = RecordingObserver()
    daemon = Daemon("d1", observer=observer, clock=FixedClock(), data_dir=tmp_path)

    assert daemon.run_once(T0)
    job = build_job(workspace)
    assert job.get_status(T0) == "failed"
    assert "fail" in job.error
    assert outputs(job)[0] == "trying"
    (provisioner, succeeded, _, build) = observer.finished[0]
    assert (provisioner, succeeded) == ("echo", False)
    assert (build.workspace_name, build.workspace_owner, build.template_name) == ("ws", "owner", "failing")


def test_it_soft_deletes_the_workspace_after_a_successful_delete(owner, tmp_path):
    template = ready_template(owner, "echo", ECHO)
    workspace = make_workspace(owner, template)
    daemon = Daemon("d1", clock=FixedClock(), data_dir=tmp_path)
    daemon.run_once(T0)
    create_build(owner, workspace, "delete")
    assert daemon.run_once(T0)
    assert Workspace.objects.get(id=workspace.id).deleted


def test_it_only_takes_jobs_its_provisioners_can_run(owner, tmp_path):
    template = ready_template(owner, "echo", ECHO)
    workspace = make_workspace(owner, template)
    shell_only = Daemon("shell-only", provisioners=["shell"], clock=FixedClock(), data_dir=tmp_path)
    assert shell_only.run_once(T0) is False
    assert build_job(workspace).get_status(T0) == "pending"


def test_it_never_takes_a_canceled_job(owner, tmp_path):
    template = ready_template(owner, "echo", ECHO)
    workspace = make_workspace(owner, template)
    cancel_build(owner, workspace.latest_build)
    assert Daemon("d1", clock=FixedClock(), data_dir=tmp_path).run_once(T0) is False
    assert build_job(workspace).get_status() == "canceled"


def test_it_takes_a_job_once_when_two_claims_race(owner, tmp_path):
    template = ready_template(owner, "echo", ECHO)
    make_workspace(owner, template)
    a = queue.register_daemon("a", ["echo"], T0)
    b = queue.register_daemon("b", ["echo"], T0)
    first = queue.claim(a.id, ["echo"], T0)
    assert first is not None
    assert queue.claim(b.id, ["echo"], T0) is None
    # The loser of a race sees its conditional update change no row, and looks again.
    assert ProvisionerJob.objects.filter(id=first.id, started_at__isnull=True).update(started_at=T0) == 0


def test_it_takes_over_a_dead_daemons_row_but_not_a_live_ones(db):
    first = queue.register_daemon("host-0", ["echo"], T0)
    live_twin = queue.register_daemon("host-0", ["echo"], T0)
    assert live_twin.id != first.id
    from datetime import timedelta

    restarted = queue.register_daemon("host-0", ["echo"], T0 + timedelta(minutes=5))
    assert restarted.id in {first.id, live_twin.id}


@pytest.mark.django_db(transaction=True)
def test_it_runs_each_job_exactly_once_with_several_daemon_threads(owner, tmp_path):
    template = ready_template(owner, "echo", {"start": {"duration_ms": 20, "logs": ["only line"]}})
    workspaces = [make_workspace(owner, template, name=f"ws-{i}") for i in range(24)]
    observer = RecordingObserver()
    daemons = [Daemon(f"d{i}", observer=observer, data_dir=tmp_path, poll_interval=0.05) for i in range(4)]
    group = DaemonGroup(daemons, None).start()
    try:
        wait_for(
            lambda: ProvisionerJob.objects.filter(completed_at__isnull=True).count() == 0,
            timeout=60,
            what="every job to finish",
        )
    finally:
        assert group.shutdown(graceful=True, timeout=10)
    jobs = [build_job(w) for w in workspaces]
    assert all(j.get_status() == "succeeded" for j in jobs)
    # Run twice would mean two "only line" logs, or two outcomes observed.
    assert all(outputs(j) == ["only line"] for j in jobs)
    assert len(observer.finished) == len(jobs)
    assert len({j.worker_id for j in jobs}) > 1
    assert observer.started == observer.stopped == 4


@pytest.mark.django_db(transaction=True)
def test_it_stops_a_canceled_echo_job_within_a_second(owner, tmp_path):
    template = ready_template(owner, "slow", {"start": {"duration_ms": 20000, "logs": ["begin"]}})
    workspace = make_workspace(owner, template)
    observer = RecordingObserver()
    daemon = Daemon("d1", observer=observer, data_dir=tmp_path)
    thread = in_thread(daemon.run_once, T0)
    try:
        wait_for(lambda: build_job(workspace).started_at, timeout=10, what="the job to start")
        canceled_at = time.monotonic()
        cancel_build(owner, workspace.latest_build)
        assert build_job(workspace).get_status() == "canceling"
        thread.join(5)
        assert time.monotonic() - canceled_at < 1.5
    finally:
        daemon.close()
        thread.join(5)
    assert build_job(workspace).get_status() == "canceled"
    assert [ok for _, ok, _, _ in observer.finished] == [False]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("graceful", [True, False])
def test_it_finishes_the_running_job_on_shutdown_but_fails_it_on_close(owner, tmp_path, graceful):
    template = ready_template(owner, "slowish", {"start": {"duration_ms": 600, "logs": ["x"]}})
    workspace = make_workspace(owner, template)
    group = DaemonGroup([Daemon("d1", data_dir=tmp_path, poll_interval=0.05)], None).start()
    wait_for(lambda: build_job(workspace).started_at, timeout=10, what="the job to start")
    assert group.shutdown(graceful=graceful, timeout=10)
    job = build_job(workspace)
    if graceful:
        assert job.get_status() == "succeeded"
    else:
        assert job.get_status() == "failed"
        assert "closed" in job.error
    assert group.alive() == 0


@pytest.mark.django_db(transaction=True)
def test_it_starts_in_process_daemons_that_register_and_pick_up_new_jobs_at_once(owner, tmp_path, settings):
    settings.DATA_DIR = tmp_path
    template = ready_template(owner, "echo", ECHO)
    observer = RecordingObserver()
    group = start_in_process(2, observer=observer)
    try:
        wait_for(
            lambda: ProvisionerDaemon.objects.filter(last_seen_at__isnull=False).count() == 2, 10, "rows"
        )
        workspace = make_workspace(owner, template)  # wakes the idle daemons (job_created)
        wait_for(lambda: build_job(workspace).completed_at, timeout=10, what="the build")
    finally:
        assert group.shutdown(timeout=10)
    assert build_job(workspace).get_status() == "succeeded"
    assert observer.started == observer.stopped == 2
