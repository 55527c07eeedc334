"""The reaper, one pass at a time with the clock passed in."""

from __future__ import annotations

from datetime import timedelta

from coderd.workspaces.services import create_build
from provisioner import queue, reaper
from provisioner.execution import GONE
from provisioner.models import ProvisionerDaemon
from tests.fixtures import make_workspace
from tests.provisioner_support import T0, RecordingObserver, build_job, ready_template

ECHO = {"start": {"duration_ms": 0}, "stop": {"duration_ms": 0}}


def claimed_build(owner):
    template = ready_template(owner, "echo", ECHO)
    workspace = make_workspace(owner, template)
    daemon = queue.register_daemon("doomed", ["echo"], T0)
    job = queue.claim(daemon.id, ["echo"], T0)
    assert job is not None and job.id == build_job(workspace).id
    return workspace, daemon, job


def test_it_fails_a_running_job_whose_heartbeat_is_older_than_the_threshold(owner):
    workspace, daemon, job = claimed_build(owner)
    threshold = reaper.HUNG_JOB_TIMEOUT
    observer = RecordingObserver()
    assert reaper.run_once(T0 + threshold - timedelta(seconds=1), observer=observer) == []
    assert reaper.run_once(T0 + threshold + timedelta(seconds=1), observer=observer) == [job.id]

    job = build_job(workspace)
    assert job.get_status() == "failed"
    assert "stopped sending heartbeats for 30 seconds" in job.error
    assert job.error in list(job.logs.values_list("output", flat=True))
    assert ProvisionerDaemon.objects.get(id=daemon.id).current_job_id is None
    assert [(p, ok, b.transition) for p, ok, _, b in observer.finished] == [("echo", False, "start")]
    # Nothing left to reap, and the workspace can build again.
    assert reaper.run_once(T0 + timedelta(hours=1)) == []
    assert create_build(owner, workspace, "stop").build_number == 2


def test_it_keeps_a_job_that_heart_beat_in_time(owner):
    workspace, daemon, job = claimed_build(owner)
    assert queue.heartbeat(job.id, daemon.id, T0 + timedelta(seconds=20)) == "running"
    assert reaper.run_once(T0 + timedelta(seconds=31)) == []
    assert build_job(workspace).completed_at is None


def test_it_leaves_nothing_for_a_late_daemon_to_overwrite(owner):
    workspace, daemon, job = claimed_build(owner)
    reaper.run_once(T0 + timedelta(minutes=5))
    assert queue.heartbeat(job.id, daemon.id, T0 + timedelta(minutes=5)) == GONE
    assert queue.complete(job.id, T0 + timedelta(minutes=5), daemon_id=daemon.id) is None
    assert build_job(workspace).get_status() == "failed"


def test_it_re_checks_the_heartbeat_under_lock_before_failing(owner):
    workspace, daemon, job = claimed_build(owner)
    # The job was found hung, but beat again before the reaper took the lock.
    queue.heartbeat(job.id, daemon.id, T0 + timedelta(seconds=50))
    assert reaper._reap(job.id, T0 + timedelta(seconds=60), reaper.HUNG_JOB_TIMEOUT) is None
    assert build_job(workspace).completed_at is None


def test_it_takes_its_threshold_from_the_setting(owner, settings):
    settings.PROVISIONER_HUNG_JOB_TIMEOUT = 5.0
    _, _, job = claimed_build(owner)
    assert reaper.run_once(T0 + timedelta(seconds=6)) == [job.id]
