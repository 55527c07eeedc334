"""Today's Coder's provisioner families: build timings by START/STOP/DESTROY, the queue wait observed
when a job is claimed, coderd's own daemons only in num_daemons, and workspaces created."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from channels.testing import WebsocketCommunicator

from coderd.asgi import application
from metrics.observer import MetricsJobObserver
from provisioner.daemon import Daemon
from tests.fixtures import make_echo_template, make_workspace, metrics_installed
from tests.provisioner_support import T0, FixedClock, ready_template
from tests.services import wait_for

PSK = "metrics-families-psk"
QUEUE_WAIT = "coderd_provisioner_job_queue_wait_seconds"


@pytest.fixture
def state(db):
    with metrics_installed(refresh_interval=60.0) as fresh:
        yield fresh


def value(state, name: str, **labels) -> float | None:
    return state.registry.get_sample_value(name, labels)


def test_it_labels_build_timings_start_stop_destroy_as_the_builds_counter(state, owner, tmp_path):
    from coderd.workspaces.services import create_build

    template = ready_template(owner, "tpl", {})
    workspace = make_workspace(owner, template, name="w1")
    daemon = Daemon("d", observer=MetricsJobObserver(on_change=None), data_dir=tmp_path)
    for transition in ("stop", "delete"):
        assert daemon.run_once(T0)  # the previous build
        create_build(owner, workspace, transition)
    assert daemon.run_once(T0)

    timings = "coderd_provisionerd_workspace_build_timings_seconds_count"
    builds = "coderd_workspace_builds_total"
    version = template.active_version.name
    for transition in ("START", "STOP", "DESTROY"):
        labels = dict(template_name="tpl", template_version=version, workspace_transition=transition)
        assert value(state, timings, status="success", **labels) == 1, transition
        assert value(state, builds, workspace_owner="owner", workspace_name="w1", status="success",
                     **labels) == 1, transition  # fmt: skip
    for lower in ("start", "stop", "delete"):
        labels = dict(template_name="tpl", template_version=version, workspace_transition=lower)
        assert value(state, timings, status="success", **labels) is None


def test_it_observes_the_queue_wait_when_a_daemon_claims_a_job(state, owner, tmp_path):
    from provisioner.models import ProvisionerJob

    template = make_echo_template(owner, name="waits")  # its import job waits first
    workspace = make_workspace(owner, template, name="w")
    ProvisionerJob.objects.filter(type="template_version_import").update(created_at=T0)
    ProvisionerJob.objects.filter(type="workspace_build").update(created_at=T0 + timedelta(seconds=1))
    clock = FixedClock(T0 + timedelta(seconds=42))
    daemon = Daemon("d", observer=MetricsJobObserver(on_change=None), clock=clock, data_dir=tmp_path)
    assert daemon.run_once(clock())  # the template import
    import_labels = dict(
        provisioner_type="echo", job_type="template_version_import", transition="", build_reason=""
    )
    assert value(state, QUEUE_WAIT + "_count", **import_labels) == 1
    assert value(state, QUEUE_WAIT + "_sum", **import_labels) == 42.0
    # 42 s is in Coder's 60 s bucket, not in its 30 s one.
    assert value(state, QUEUE_WAIT + "_bucket", le="30.0", **import_labels) == 0
    assert value(state, QUEUE_WAIT + "_bucket", le="60.0", **import_labels) == 1

    clock.advance(100)
    assert daemon.run_once(clock())  # the build, created 1 s after the import: waited 141 s
    build_labels = dict(provisioner_type="echo", job_type="workspace_build", transition="start",
                        build_reason="initiator")  # fmt: skip
    assert value(state, QUEUE_WAIT + "_sum", **build_labels) == 141.0
    assert workspace.builds.count() == 1
    assert not daemon.run_once(clock())  # nothing waits: nothing observed
    assert value(state, QUEUE_WAIT + "_count", **build_labels) == 1


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_it_counts_only_coderds_own_daemons_and_observes_external_claims(owner, settings, tmp_path):
    """An in-process daemon is coderd's; an external one connected over the serve socket is not
    (it exports its own num_daemons), so a sum over coderd and the daemon counts each once. The
    queue wait of the job coderd hands the external daemon is observed in coderd, as Coder's."""
    from asgiref.sync import sync_to_async

    from provisioner import daemon as daemon_module

    settings.PROVISIONER_DAEMON_PSK = PSK
    with metrics_installed(with_database=False) as state:
        observer = MetricsJobObserver(on_change=None)
        previous, daemon_module._process_observer = daemon_module._process_observer, observer
        local = Daemon(
            "local", provisioners=["shell"], observer=observer, data_dir=tmp_path, poll_interval=0.05
        )
        thread = threading.Thread(target=local.serve, daemon=True)
        thread.start()
        try:
            await sync_to_async(wait_for)(
                lambda: value(state, "coderd_provisionerd_num_daemons") == 1, 10, "the local daemon to start"
            )
            await sync_to_async(ready_template)(owner, "ext", {})
            workspace = await sync_to_async(make_workspace)(owner, await _template(owner, "ext"), "w")
            comm = WebsocketCommunicator(
                application,
                "/api/v2/organizations/default/provisionerdaemons/serve",
                headers=[
                    (b"origin", b"http://localhost"),
                    (b"host", b"localhost"),
                    (b"coder-provisioner-daemon-psk", PSK.encode()),
                ],
            )
            assert (await comm.connect(timeout=5))[0]
            await comm.send_json_to({"type": "hello", "name": "remote", "provisioners": ["echo"]})
            assert (await comm.receive_json_from(timeout=5))["type"] == "welcome"
            await comm.send_json_to({"type": "acquire"})
            job = (await comm.receive_json_from(timeout=5))["job"]
            assert job["workspace_id"] == str(workspace.id)
            # coderd's own daemon only: the external one says hello and still counts nowhere here.
            assert value(state, "coderd_provisionerd_num_daemons") == 1
            labels = dict(provisioner_type="echo", job_type="workspace_build", transition="start",
                          build_reason="initiator")  # fmt: skip
            assert value(state, QUEUE_WAIT + "_count", **labels) == 1
            await comm.disconnect()
            assert value(state, "coderd_provisionerd_num_daemons") == 1
        finally:
            local.shutdown()
            await sync_to_async(thread.join)(10)
            daemon_module._process_observer = previous
        assert value(state, "coderd_provisionerd_num_daemons") == 0


async def _template(owner, name):
    from asgiref.sync import sync_to_async

    from coderd.workspaces.models import Template

    return await sync_to_async(Template.objects.get)(name=name)


def test_it_counts_workspaces_created_by_organization_and_template(state, owner):
    from coderd.workspaces.models import Workspace

    created = "coderd_workspace_creation_total"
    a, b = make_echo_template(owner, name="a"), make_echo_template(owner, name="b")
    for name in ("w1", "w2", "w3"):
        make_workspace(owner, a, name=name)
    make_workspace(owner, b, name="w4")
    assert value(state, created, organization_name="coder", template_name="a", preset_name="") == 3
    assert value(state, created, organization_name="coder", template_name="b", preset_name="") == 1
    # A counter: a deleted workspace was still created, so the count does not go down.
    Workspace.objects.filter(name="w1").update(deleted=True)
    state.database.mark_stale()
    assert value(state, created, organization_name="coder", template_name="a", preset_name="") == 3
