"""What coderd's log says about jobs and daemons: a job by its workspace, owner and transition (not
only its UUID); a failure at WARNING with its error; a refused external daemon and one that drops
mid-job each leave a line."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from channels.db import database_sync_to_async as sync_to_async

from provisioner import queue, reaper
from provisioner.daemon import Daemon
from tests.fixtures import make_echo_template, make_workspace
from tests.provisioner_support import T0, FixedClock, build_job, ready_template
from tests.test_provisioner_consumers import PSK, daemon_with_a_job, refused, serve_communicator, streaming

__all__ = ["streaming"]  # the fixture, used by the tests below


def lines(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == level and r.name.startswith("provisioner")]


def test_it_logs_a_failed_build_at_warning_with_workspace_owner_transition_and_error(owner, tmp_path, caplog):
    template = ready_template(owner, "failing", {"start": {"logs": ["trying"], "fail": True}})
    workspace = make_workspace(owner, template, name="dev")
    job = build_job(workspace)
    with caplog.at_level(logging.INFO):
        assert Daemon("d1", clock=FixedClock(), data_dir=tmp_path).run_once(T0)
    warnings = lines(caplog, logging.WARNING)
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(
        "daemon d1: failed: start of workspace owner/dev (build #1, template failing "
    )
    assert f"job {job.id})" in warnings[0]
    assert warnings[0].endswith(": echo: the template asked start to fail")
    assert "daemon d1: running start of workspace owner/dev (build #1" in lines(caplog, logging.INFO)[0]


def test_it_logs_a_successful_job_at_info_by_what_it_did(owner, tmp_path, caplog):
    template = make_echo_template(owner, name="python", source={"start": {"logs": ["ok"]}})
    make_workspace(owner, template, name="dev")
    daemon = Daemon("d1", clock=FixedClock(), data_dir=tmp_path)
    with caplog.at_level(logging.INFO):
        assert daemon.run_once(T0)  # the template's import
        assert daemon.run_once(T0)  # the workspace's first build
    assert lines(caplog, logging.WARNING) == []
    info = lines(caplog, logging.INFO)
    assert any(line.startswith("daemon d1: succeeded: import of template version ") for line in info), info
    assert any(
        line.startswith("daemon d1: succeeded: start of workspace owner/dev (build #1") for line in info
    )


def test_it_logs_a_job_the_reaper_fails_by_what_it_was(owner, caplog):
    template = ready_template(owner, "python", {"start": {"duration_ms": 60_000}})
    make_workspace(owner, template, name="dev")
    daemon = queue.register_daemon("doomed", ["echo"], T0)
    job = queue.claim(daemon.id, ["echo"], T0)
    with caplog.at_level(logging.INFO):
        assert reaper.run_once(T0 + timedelta(minutes=5)) == [job.id]
    warnings = lines(caplog, logging.WARNING)
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("reaper: failed start of workspace owner/dev (build #1, template python ")
    assert f"job {job.id}): no heartbeat since " in warnings[0]


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_it_logs_a_refused_external_daemon_without_its_key(owner, settings, caplog):
    settings.PROVISIONER_DAEMON_PSK = PSK
    with caplog.at_level(logging.INFO):
        assert await refused(serve_communicator("not-the-key"))
        assert await refused(serve_communicator(None))
    warnings = lines(caplog, logging.WARNING)
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith("refused an external provisioner daemon from ")
    assert warnings[0].endswith(": wrong key")
    assert warnings[1].endswith(": no key")
    assert "not-the-key" not in caplog.text and PSK not in caplog.text


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_it_logs_an_external_daemon_that_drops_mid_job(owner, streaming, settings, caplog):
    with caplog.at_level(logging.INFO):
        comm, job = await daemon_with_a_job(settings, "flaky")
        await comm.disconnect()
    info, warnings = lines(caplog, logging.INFO), lines(caplog, logging.WARNING)
    assert any(line.startswith("external daemon flaky connected from ") for line in info), info
    assert any(
        line.startswith("external daemon flaky: running start of workspace owner/ws ") for line in info
    )
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(
        "external daemon flaky disconnected while running start of workspace owner/ws "
    )
    assert f"job {job['job_id']})" in warnings[0] and warnings[0].endswith("the job is failed")
    assert (await sync_to_async(build_job)(streaming)).error


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_it_logs_a_failure_an_external_daemon_reports_at_warning(owner, streaming, settings, caplog):
    with caplog.at_level(logging.INFO):
        comm, job = await daemon_with_a_job(settings, "remote")
        await comm.send_json_to({"type": "complete", "job_id": job["job_id"], "error": "terraform: boom"})
        assert (await comm.receive_json_from(timeout=5))["status"] == "failed"
        await comm.disconnect()
    warnings = lines(caplog, logging.WARNING)
    assert warnings == [
        f"external daemon remote: failed: start of workspace owner/ws (build #1, template stream stream-v1, "
        f"job {job['job_id']}): terraform: boom"
    ]
    assert "external daemon remote disconnected" in caplog.text
