"""Websockets: build and template version logs followed to the end, watch-ws, and the serve socket."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from channels.db import database_sync_to_async as sync_to_async
from channels.testing import WebsocketCommunicator

from coderd.asgi import application
from provisioner.daemon import Daemon
from provisioner.models import ProvisionerDaemon
from tests.fixtures import make_echo_template, make_workspace, token_for
from tests.provisioner_support import T0, build_job, ready_template

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]
LINES = [f"line {i}" for i in range(8)]
PSK = "test-psk-123"


def communicator(path: str, token: str | None = None, extra: list | None = None) -> WebsocketCommunicator:
    headers = [(b"origin", b"http://localhost"), (b"host", b"localhost")]
    if token:
        headers.append((b"coder-session-token", token.encode()))
    return WebsocketCommunicator(application, path, headers=headers + (extra or []))


async def refused(comm: WebsocketCommunicator) -> bool:
    connected, _ = await comm.connect(timeout=5)
    await comm.disconnect()  # let the consumer finish here, not in a later test
    return not connected


async def read_until_close(comm: WebsocketCommunicator, timeout: float = 10) -> tuple[list[Any], int]:
    messages = []
    while True:
        out = await comm.receive_output(timeout=timeout)
        if out["type"] == "websocket.close":
            await comm.disconnect()
            return messages, out.get("code", 1000)
        import json

        messages.append(json.loads(out["text"]))


def start_daemon(tmp_path) -> tuple[Daemon, threading.Thread]:
    daemon = Daemon("d1", data_dir=tmp_path, poll_interval=0.05)
    thread = threading.Thread(target=daemon.serve, daemon=True)
    thread.start()
    return daemon, thread


@pytest.fixture
def streaming(owner):
    template = ready_template(owner, "stream", {"start": {"duration_ms": 400, "logs": LINES}})
    return make_workspace(owner, template)


async def test_it_streams_build_logs_backlog_then_live_and_closes_at_the_end(owner, streaming, tmp_path):
    token = await sync_to_async(token_for)(owner)
    build_id = await sync_to_async(lambda: streaming.latest_build.id)()
    comm = communicator(f"/api/v2/workspacebuilds/{build_id}/logs?follow", token)
    connected, _ = await comm.connect(timeout=5)
    assert connected
    daemon, thread = start_daemon(tmp_path)
    try:
        messages, code = await read_until_close(comm)
    finally:
        daemon.shutdown()
        thread.join(10)
    assert code == 1000
    assert [m["output"] for m in messages] == LINES
    ids = [m["id"] for m in messages]
    assert ids == sorted(set(ids))
    # The same shape as the JSON list: Coder's ProvisionerJobLog.
    assert set(messages[0]) == {"id", "created_at", "log_source", "log_level", "stage", "output"}

    # A follower arriving after the end gets the backlog (or what is after `after`) and a close.
    late = communicator(f"/api/v2/workspacebuilds/{build_id}/logs?follow&after={ids[2]}", token)
    assert (await late.connect(timeout=5))[0]
    messages, code = await read_until_close(late)
    assert ([m["id"] for m in messages], code) == (ids[3:], 1000)


async def test_it_refuses_a_follower_without_a_token_or_access(owner, member, streaming):
    build_id = await sync_to_async(lambda: streaming.latest_build.id)()
    path = f"/api/v2/workspacebuilds/{build_id}/logs?follow"
    assert await refused(communicator(path))
    assert await refused(communicator(path, "bad-token"))
    member_token = await sync_to_async(token_for)(member)
    assert await refused(communicator(path, member_token))


async def test_it_accepts_the_token_as_a_cookie_or_bearer(owner, streaming, tmp_path):
    token = await sync_to_async(token_for)(owner)
    build_id = await sync_to_async(lambda: streaming.latest_build.id)()
    path = f"/api/v2/workspacebuilds/{build_id}/logs?follow"
    for header in [
        (b"cookie", f"coder_session_token={token}".encode()),
        (b"authorization", f"Bearer {token}".encode()),
    ]:
        comm = communicator(path, extra=[header])
        assert (await comm.connect(timeout=5))[0]
        await comm.disconnect()


async def test_it_streams_a_template_version_import_log(owner, tmp_path):
    template = await sync_to_async(make_echo_template)(owner, name="imp")
    version_id = await sync_to_async(lambda: template.active_version_id)()
    token = await sync_to_async(token_for)(owner)
    comm = communicator(f"/api/v2/templateversions/{version_id}/logs?follow", token)
    assert (await comm.connect(timeout=5))[0]
    daemon, thread = start_daemon(tmp_path)
    try:
        messages, code = await read_until_close(comm)
    finally:
        daemon.shutdown()
        thread.join(10)
    assert ([m["output"] for m in messages], code) == (["echo: template version imported"], 1000)


async def test_it_pushes_the_workspace_on_watch_ws_each_time_it_changes(owner, streaming, tmp_path):
    token = await sync_to_async(token_for)(owner)
    comm = communicator(f"/api/v2/workspaces/{streaming.id}/watch-ws", token)
    assert (await comm.connect(timeout=5))[0]
    first = await comm.receive_json_from(timeout=5)
    assert first["id"] == str(streaming.id)
    assert first["latest_build"]["job"]["status"] == "pending"
    daemon, thread = start_daemon(tmp_path)
    try:
        seen = []
        while not seen or seen[-1] != "succeeded":
            seen.append((await comm.receive_json_from(timeout=10))["latest_build"]["job"]["status"])
    finally:
        daemon.shutdown()
        thread.join(10)
        await comm.disconnect()
    assert seen[0] == "running"
    assert seen[-1] == "succeeded"


def serve_communicator(psk: str | None) -> WebsocketCommunicator:
    extra = [(b"coder-provisioner-daemon-psk", psk.encode())] if psk else []
    return communicator("/api/v2/organizations/default/provisionerdaemons/serve", extra=extra)


async def test_it_refuses_an_external_daemon_without_the_right_key(owner, settings):
    settings.PROVISIONER_DAEMON_PSK = PSK
    assert await refused(serve_communicator(None))
    assert await refused(serve_communicator("wrong"))
    settings.PROVISIONER_DAEMON_PSK = ""  # no key configured: external daemons are off
    assert await refused(serve_communicator(""))


async def test_it_serves_a_job_to_an_external_daemon_over_the_socket(owner, streaming, settings):
    settings.PROVISIONER_DAEMON_PSK = PSK
    comm = serve_communicator(PSK)
    assert (await comm.connect(timeout=5))[0]
    await comm.send_json_to({"type": "hello", "name": "remote-1", "provisioners": ["echo"]})
    welcome = await comm.receive_json_from(timeout=5)
    assert welcome["type"] == "welcome"
    await comm.send_json_to({"type": "acquire"})
    job = (await comm.receive_json_from(timeout=5))["job"]
    assert (job["workspace_name"], job["transition"], job["source"]["start"]["logs"]) == (
        "ws",
        "start",
        LINES,
    )
    await comm.send_json_to({"type": "heartbeat", "job_id": job["job_id"]})
    assert (await comm.receive_json_from(timeout=5))["state"] == "running"
    await comm.send_json_to({"type": "logs", "job_id": job["job_id"], "logs": [{"output": "remote says hi"}]})
    await comm.send_json_to({"type": "complete", "job_id": job["job_id"], "error": ""})
    assert (await comm.receive_json_from(timeout=5))["status"] == "succeeded"
    row = await sync_to_async(ProvisionerDaemon.objects.get)(id=welcome["daemon_id"])
    assert (row.external, row.name, row.current_job_id) == (True, "remote-1", None)
    await comm.send_json_to({"type": "acquire"})
    assert (await comm.receive_json_from(timeout=5))["type"] == "no_job"
    await comm.send_json_to({"type": "nonsense"})
    assert (await comm.receive_json_from(timeout=5))["type"] == "error"
    await comm.disconnect()

    job_row = await sync_to_async(build_job)(streaming)
    assert job_row.get_status() == "succeeded"
    assert await sync_to_async(lambda: list(job_row.logs.values_list("output", flat=True)))() == [
        "remote says hi"
    ]


async def daemon_with_a_job(settings, name: str) -> tuple[WebsocketCommunicator, dict[str, Any]]:
    """An external daemon connected over the serve socket, said hello and took the waiting job."""
    settings.PROVISIONER_DAEMON_PSK = PSK
    comm = serve_communicator(PSK)
    assert (await comm.connect(timeout=5))[0]
    await comm.send_json_to({"type": "hello", "name": name})
    await comm.receive_json_from(timeout=5)
    await comm.send_json_to({"type": "acquire"})
    reply = await comm.receive_json_from(timeout=5)
    assert reply["type"] == "job", reply
    return comm, reply["job"]


async def test_it_fails_the_job_of_an_external_daemon_that_disconnects(owner, streaming, settings):
    comm, _ = await daemon_with_a_job(settings, "flaky")
    await comm.disconnect()
    job = await sync_to_async(build_job)(streaming)
    assert job.get_status() == "failed"
    assert "disconnected" in job.error


async def test_it_stores_malformed_log_fields_from_an_external_daemon_as_best_it_can(
    owner, streaming, settings
):
    comm, job = await daemon_with_a_job(settings, "sloppy")
    job_id = job["job_id"]
    lines = [
        {"output": "feb 30", "created_at": "2026-02-30T00:00:00Z"},  # parses, but no such day
        {"output": "year 0", "created_at": "0000-01-01T00:00:00Z"},
        {"output": "naive", "created_at": "2026-01-02T03:04:05"},
        {"output": "odd level", "level": "x" * 50},
    ]
    await comm.send_json_to({"type": "logs", "job_id": job_id, "logs": lines})
    await comm.send_json_to({"type": "heartbeat", "job_id": job_id})
    assert (await comm.receive_json_from(timeout=5))["state"] == "running"  # still connected
    await comm.send_json_to({"type": "complete", "job_id": job_id, "error": ""})
    assert (await comm.receive_json_from(timeout=5))["status"] == "succeeded"
    await comm.disconnect()
    job = await sync_to_async(build_job)(streaming)
    stored = await sync_to_async(
        lambda: list(job.logs.order_by("id").values_list("output", "level", "created_at"))
    )()
    assert [(o, lvl) for o, lvl, _ in stored] == [
        ("feb 30", "info"),
        ("year 0", "info"),
        ("naive", "info"),
        ("odd level", "info"),
    ]
    assert stored[2][2].year == 2026 and all(c.tzinfo is not None for _, _, c in stored)


async def test_it_fails_the_job_when_a_message_from_its_daemon_breaks_the_server(
    owner, streaming, settings, monkeypatch
):
    # Whatever goes wrong while handling a message, the job in flight must not stay "running".
    from provisioner import queue

    comm, job = await daemon_with_a_job(settings, "unlucky")
    job_id = job["job_id"]

    def broken(*args, **kwargs):
        raise RuntimeError("the database went away")

    monkeypatch.setattr(queue, "append_logs", broken)
    await comm.send_json_to({"type": "logs", "job_id": job_id, "logs": [{"output": "x"}]})
    closed = await comm.receive_output(timeout=5)
    assert closed == {"type": "websocket.close", "code": 1011}
    await comm.disconnect()
    job = await sync_to_async(build_job)(streaming)
    assert job.get_status() == "failed"
    assert "disconnected" in job.error


async def test_it_refuses_a_bad_after_as_the_http_endpoint_does(owner, streaming):
    token = await sync_to_async(token_for)(owner)
    build_id = await sync_to_async(lambda: streaming.latest_build_id)()
    for bad in ["-1", "abc", "1e3", "%00", "99999999999999999999", "%D9%A3"]:  # the last: an Arabic 3
        assert await refused(
            communicator(f"/api/v2/workspacebuilds/{build_id}/logs?follow&after={bad}", token)
        ), bad
    comm = communicator(f"/api/v2/workspacebuilds/{build_id}/logs?follow&after=0", token)
    assert (await comm.connect(timeout=5))[0]
    await comm.disconnect()


async def test_it_refuses_a_malformed_id_without_an_error(owner):
    token = await sync_to_async(token_for)(owner)
    for path in [
        "/api/v2/workspacebuilds/not-a-uuid/logs",
        "/api/v2/templateversions/not-a-uuid/logs",
        "/api/v2/workspaces/not-a-uuid/watch-ws",
    ]:
        assert await refused(communicator(path, token))


async def test_it_sends_a_long_backlog_in_pages_without_gaps(owner, streaming, tmp_path, monkeypatch):
    from provisioner import consumers

    monkeypatch.setattr(consumers, "LOG_PAGE", 3)
    await sync_to_async(Daemon("d1", data_dir=tmp_path).run_once)(T0)
    token = await sync_to_async(token_for)(owner)
    build_id = await sync_to_async(lambda: streaming.latest_build.id)()
    comm = communicator(f"/api/v2/workspacebuilds/{build_id}/logs?follow", token)
    assert (await comm.connect(timeout=5))[0]
    messages, code = await read_until_close(comm)
    assert ([m["output"] for m in messages], code) == (LINES, 1000)
