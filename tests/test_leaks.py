"""The small leaks of issue 10, closed: tokens out of the server's logs, a private data folder, the
websocket Origin compared with its port, sockets closed when their session ends, the admin session
as long as an API session, and a client leaving mid-send without a traceback."""

from __future__ import annotations

import asyncio
import gc
import logging
import stat
import uuid
from pathlib import Path

import pytest
from channels.db import database_sync_to_async as sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.test import override_settings
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from coderd.asgi import application
from tests.fixtures import PASSWORD, make_echo_template, make_workspace, token_for
from tests.services import Coderd, clean_env, manage

# --- no token in the server's logs -----------------------------------------------------------------


def test_it_keeps_query_tokens_out_of_the_gunicorn_log(tmp_path: Path) -> None:
    secret = f"{'a' * 10}-{uuid.uuid4().hex}"
    server = Coderd(tmp_path / "data", workers=1, metrics=False)
    try:
        url = f"ws://127.0.0.1:{server.http_port}/api/v2/workspacebuilds/{uuid.uuid4()}/logs"
        with pytest.raises(InvalidStatus) as refused:  # the key does not exist: 401
            connect(
                f"{url}?follow&coder_session_token={secret}",
                origin=server.base,
                open_timeout=10,
            )
        assert refused.value.response.status_code == 401
    finally:
        server.stop()
    log = server.process.log()
    # uvicorn writes the handshake's path and query string on its error log at INFO.
    assert "logs?follow&coder_session_token=[REDACTED]" in log
    assert secret not in log and secret[11:] not in log


# --- the data folder -------------------------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_it_creates_a_private_data_folder_and_warns_about_an_open_one(tmp_path: Path) -> None:
    data = tmp_path / "new" / "data"
    # The first use makes the folder and its files (the database, the secret key), not --help.
    assert manage("migrate", "-v0", env=clean_env(data)).returncode == 0
    checked = manage("check", env=clean_env(data))
    assert checked.returncode == 0, checked.stderr
    assert "coderd.W007" not in checked.stdout + checked.stderr
    assert mode(data) == 0o700
    assert mode(data / "coderd.sqlite3") == 0o600
    assert mode(data / "secret_key") == 0o600

    # One left readable by others (made by an older version, or by hand): kept, but reported.
    data.chmod(0o755)
    (data / "coderd.sqlite3").chmod(0o644)
    checked = manage("check", env=clean_env(data))
    assert checked.returncode == 0
    output = checked.stdout + checked.stderr
    assert "coderd.W007" in output
    assert f"{data} (755)" in output and f"{data / 'coderd.sqlite3'} (644)" in output
    assert mode(data) == 0o755


# --- the websocket Origin ----------------------------------------------------------------------------


async def refusal_code(origin: bytes, host: bytes = b"127.0.0.1:3000") -> int | None:
    """The close code of a websocket refused before accept (None if it was accepted)."""
    communicator = WebsocketCommunicator(
        application,
        f"/api/v2/workspaces/{uuid.uuid4()}/watch-ws",
        headers=[(b"origin", origin), (b"host", host)],
    )
    connected, code = await communicator.connect(timeout=5)
    await communicator.disconnect()
    return None if connected else code


@pytest.mark.asyncio
@pytest.mark.django_db
async def test_it_compares_the_origin_s_port_too() -> None:
    # Same origin: past the Origin check, refused for want of a token (4401).
    assert await refusal_code(b"http://127.0.0.1:3000") == 4401
    # Another port of the same host is another site.
    assert await refusal_code(b"http://127.0.0.1:3001") == 4403
    assert await refusal_code(b"http://127.0.0.1") == 4403
    assert await refusal_code(b"http://127.0.0.1:80", host=b"127.0.0.1") == 4401
    assert await refusal_code(b"http://127.0.0.1:443", host=b"127.0.0.1:80") == 4403
    # A host not in ALLOWED_HOSTS never passes, even as its own origin.
    assert await refusal_code(b"http://evil.example:3000", host=b"evil.example:3000") == 4403
    with override_settings(ACCESS_URL="https://coder.example.com"):
        from coderd.ws_notfound import allowed_hosts_origin_check

        check = allowed_hosts_origin_check(None)
    # A page over plain HTTP never opens a socket served over TLS.
    tls = {"scheme": "wss", "headers": [(b"host", b"127.0.0.1"), (b"origin", b"http://127.0.0.1:443")]}
    assert not check.allowed(tls)
    assert check.allowed({**tls, "headers": [(b"host", b"127.0.0.1"), (b"origin", b"https://127.0.0.1")]})
    scope = {"headers": [(b"host", b"127.0.0.1:3000")]}
    assert check.allowed({**scope, "headers": [*scope["headers"], (b"origin", b"https://coder.example.com")]})
    assert not check.allowed(
        {**scope, "headers": [*scope["headers"], (b"origin", b"http://coder.example.com")]}
    )
    assert not check.allowed(
        {**scope, "headers": [*scope["headers"], (b"origin", b"https://coder.example.com:8443")]}
    )


# --- sessions that end close their sockets -----------------------------------------------------------


def watch(workspace_id, token: str) -> WebsocketCommunicator:
    headers = [
        (b"origin", b"http://localhost"),
        (b"host", b"localhost"),
        (b"coder-session-token", token.encode()),
    ]
    return WebsocketCommunicator(application, f"/api/v2/workspaces/{workspace_id}/watch-ws", headers=headers)


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_it_closes_the_sockets_of_a_suspended_user_or_a_revoked_key(owner, member) -> None:
    from coderd.users.models import APIKey
    from coderd.users.services import logout, suspend_user

    template = await sync_to_async(make_echo_template)(owner)
    workspace = await sync_to_async(make_workspace)(member, template)
    kept, revoked = await sync_to_async(token_for)(member), await sync_to_async(token_for)(member)
    sockets = {}
    for name, token in (("kept", kept), ("revoked", revoked)):
        sockets[name] = watch(workspace.id, token)
        assert (await sockets[name].connect(timeout=5))[0]
        assert (await sockets[name].receive_json_from(timeout=5))["id"] == str(workspace.id)

    # Logging out deletes the key: the sockets opened with it close, the others stay.
    key = await sync_to_async(APIKey.objects.get)(pk=revoked.split("-")[0])
    await sync_to_async(logout)(key)
    closed = await sockets["revoked"].receive_output(timeout=5)
    assert (closed["type"], closed["code"]) == ("websocket.close", 4401)
    assert await sockets["kept"].receive_nothing(timeout=0.5)

    # Suspending the user closes every socket of theirs.
    await sync_to_async(suspend_user)(owner, member)
    closed = await sockets["kept"].receive_output(timeout=5)
    assert (closed["type"], closed["code"]) == ("websocket.close", 4401)
    for communicator in sockets.values():
        await communicator.wait(timeout=5)  # the consumers have ended, not only sent a close


# --- the admin session -------------------------------------------------------------------------------


@pytest.mark.django_db
def test_it_keeps_an_admin_session_as_long_as_an_api_session(client, owner) -> None:
    response = client.post(
        "/admin/login/", {"username": owner.email, "password": PASSWORD, "next": "/admin/"}
    )
    assert response.status_code == 302, response.content[:500]
    cookie = response.cookies[settings.SESSION_COOKIE_NAME]
    assert int(cookie["max-age"]) == int(settings.SESSION_DURATION) == 24 * 3600

    # `manage.py server --session-duration` moves it too.
    from coderd.management.commands.server import FLAGS, Command

    options = {flag.name[2:].replace("-", "_"): None for flag in FLAGS}
    with override_settings():
        Command()._apply_flags({**options, "session_duration": 3600.0})
        assert settings.SESSION_COOKIE_AGE == 3600


# --- a client leaving mid-send -------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_it_notes_a_client_leaving_mid_send_without_a_traceback(owner, caplog) -> None:
    from uvicorn.protocols.utils import ClientDisconnected

    from provisioner import queue
    from provisioner.execution import LogLine

    template = await sync_to_async(make_echo_template)(owner)
    workspace = await sync_to_async(make_workspace)(owner, template)  # its build waits: no daemon
    job_id = await sync_to_async(lambda: workspace.latest_build.job_id)()
    token = await sync_to_async(token_for)(owner)
    inbox: asyncio.Queue = asyncio.Queue()
    accepted = asyncio.Event()
    gone = False

    async def send(message: dict) -> None:
        # What uvicorn does once the client's connection is lost.
        if gone and message["type"] == "websocket.send":
            raise ClientDisconnected()
        if message["type"] == "websocket.accept":
            accepted.set()

    scope = {
        "type": "websocket",
        "path": f"/api/v2/workspacebuilds/{workspace.latest_build_id}/logs",
        "query_string": b"follow",
        "headers": [
            (b"origin", b"http://localhost"),
            (b"host", b"localhost"),
            (b"coder-session-token", token.encode()),
        ],
        "subprotocols": [],
    }
    caplog.set_level(logging.DEBUG)
    loop = asyncio.get_running_loop()
    unhandled: list[dict] = []  # "Task exception was never retrieved", and the like
    loop.set_exception_handler(lambda _, context: unhandled.append(context))
    try:
        await inbox.put({"type": "websocket.connect"})
        served = asyncio.ensure_future(application(scope, inbox.get, send))
        await asyncio.wait_for(accepted.wait(), 5)
        gone = True
        # Lines arrive: the notice and the follower's poll (every second) both send them to a
        # client that has left.
        await sync_to_async(queue.append_logs)(job_id, [LogLine(output="after the client left")])
        await asyncio.sleep(2.5)
        await inbox.put({"type": "websocket.disconnect", "code": 1006})
        await asyncio.wait_for(served, 5)  # ended, not raised
        del served
        gc.collect()  # an unretrieved task exception is reported when its task is collected
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(None)

    assert not unhandled, unhandled
    assert any("the client left while being sent to" in r.getMessage() for r in caplog.records)
    noisy = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not noisy, [f"{r.name}: {r.getMessage()}" for r in noisy]
