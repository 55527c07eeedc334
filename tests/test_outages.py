"""Redis and PostgreSQL stopped and started again under traffic, under gunicorn (two workers).

Each test starts the service it stops (on a free loopback port, so it can stop it), a gunicorn
server on it, traffic in a thread and websockets, then checks what clients got during and after
the outage, the websocket gauge, the request counters and the log. They run in the PostgreSQL +
Redis pass of .ci/run: the SQLite pass would run the same servers again. In both passes, in
process: the API's 503 and the one log line per outage, and a consumer whose channel layer fails.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from channels.layers import InMemoryChannelLayer
from django.conf import settings
from django.test import override_settings
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from tests.services import Coderd, Postgres, Redis, http_get, missing, total, wait_for

# The two gunicorn tests run in the PostgreSQL + Redis pass only: the SQLite pass would start the
# same servers again. The in-process tests at the end run in both.
real_services = pytest.mark.skipif(
    "postgresql" not in settings.DATABASES["default"]["ENGINE"],
    reason="runs in the PostgreSQL + Redis pass of .ci/run",
)

LINES = [f"line {i:02d}" for i in range(30)]
SLOW = {"start": {"duration_ms": 6000, "logs": LINES}, "stop": {}, "delete": {}}
QUICK = {"start": {"duration_ms": 50, "logs": ["up"]}, "stop": {}, "delete": {}}
ME = "/api/v2/users/me"
GAUGE = ("coderd_api_concurrent_websockets", frozenset())


def own_redis() -> Redis:
    import shutil

    if shutil.which("redis-server") is None:
        missing("redis-server")
    return Redis.start()


def own_postgres() -> Postgres:
    if not Postgres.available():
        missing("PostgreSQL")
    return Postgres.start()


class Client:
    """One user's calls to a server: API requests, workspaces, websockets."""

    def __init__(self, server: Coderd) -> None:
        self.server = server
        self.token = server.first_user()

    def call(self, method: str, path: str, body: Any = None, expect: int = 200) -> Any:
        status, payload = self.server.request(method, path, body, token=self.token)
        assert status == expect, (method, path, status, payload)
        return payload

    def workspace(self, name: str, source: dict) -> dict:
        version = self.call(
            "POST",
            "/api/v2/organizations/default/templateversions",
            {"name": f"{name}-v1", "provisioner": "echo", "source": source},
            expect=201,
        )
        wait_for(
            lambda: (
                self.call("GET", f"/api/v2/templateversions/{version['id']}")["job"]["status"] == "succeeded"
            ),
            60,
            "the template import",
        )
        template = self.call(
            "POST",
            "/api/v2/organizations/default/templates",
            {"name": name, "template_version_id": version["id"]},
            expect=201,
        )
        return self.call(
            "POST",
            "/api/v2/organizations/default/members/me/workspaces",
            {"template_id": template["id"], "name": name},
            expect=201,
        )

    def socket(self, path: str):
        return connect(
            f"ws://127.0.0.1:{self.server.http_port}{path}",
            origin=self.server.base,
            additional_headers={"Coder-Session-Token": self.token},
            open_timeout=15,
        )


class Listener(threading.Thread):
    """A websocket read until it closes: its messages and close code."""

    def __init__(self, client: Client, path: str) -> None:
        super().__init__(daemon=True)
        self.ws = client.socket(path).__enter__()  # closed by the server, or by the test
        self.messages: list[dict] = []
        self.code: int | None = None

    def run(self) -> None:
        try:
            while True:
                self.messages.append(json.loads(self.ws.recv(timeout=120)))
        except ConnectionClosed:
            self.code = self.ws.close_code


class Traffic(threading.Thread):
    """Requests one after another until stopped: (time sent, path, status, headers, body)."""

    def __init__(self, client: Client, paths: list[str]) -> None:
        super().__init__(daemon=True)
        self.client, self.paths = client, paths
        self.stop = threading.Event()
        self.seen: list[tuple[float, str, int, dict, bytes]] = []

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            path = self.paths[i % len(self.paths)]
            i += 1
            sent = time.monotonic()
            status, headers, body = http_get(
                self.client.server.base + path, {"Coder-Session-Token": self.client.token}, timeout=30
            )
            self.seen.append((sent, path, status, headers, body))
            time.sleep(0.02)

    def finish(self) -> list[tuple[float, str, int, dict, bytes]]:
        self.stop.set()
        self.join(60)
        return self.seen


def statuses(seen: list) -> Counter:
    return Counter(status for _, _, status, _, _ in seen)


@pytest.mark.redis
@real_services
def test_it_rides_out_a_redis_outage(tmp_path: Path) -> None:
    redis = own_redis()
    server = None
    try:
        server = Coderd(tmp_path / "data", workers=2, env={"CODER_REDIS_URL": redis.url})
        client = Client(server)
        workspace = client.workspace("slow", SLOW)
        follower = Listener(client, f"/api/v2/workspacebuilds/{workspace['latest_build']['id']}/logs?follow")
        watcher = Listener(client, f"/api/v2/workspaces/{workspace['id']}/watch-ws")
        traffic = Traffic(client, [ME])
        for thread in (follower, watcher, traffic):
            thread.start()
        wait_for(lambda: len(follower.messages) >= 3, 30, "the first lines")

        redis.stop_server()
        wait_for(
            lambda: "channel layer (Redis) unreachable" in server.process.log(), 15, "the outage to show"
        )
        # A socket opened during the outage is served (by polling the database), not refused.
        with client.socket(f"/api/v2/workspaces/{workspace['id']}/watch-ws") as ws:
            assert json.loads(ws.recv(timeout=10))["id"] == workspace["id"]
        redis.start_server()

        # After it: every new socket is served (no stale pooled connection answers 500).
        for _ in range(10):
            with client.socket(f"/api/v2/workspaces/{workspace['id']}/watch-ws") as ws:
                assert json.loads(ws.recv(timeout=10))["id"] == workspace["id"]
        follower.join(60)
        seen = traffic.finish()
        # The follower went through the outage to the end: every line, in order, once; a clean close.
        assert follower.code == 1000
        assert [m["output"] for m in follower.messages if m["output"] in LINES] == LINES
        ids = [m["id"] for m in follower.messages]
        assert ids == sorted(set(ids))
        # The watcher too: still open, it saw the build finish.
        wait_for(
            lambda: watcher.messages[-1]["latest_build"]["job"]["status"] == "succeeded", 30, "the watcher"
        )
        assert watcher.is_alive() and watcher.code is None
        watcher.ws.close()
        watcher.join(10)
        assert statuses(seen) == {200: len(seen)}

        # No handler outlives its socket: the gauge is back to exactly 0, and no socket got a 500.
        wait_for(lambda: server.scrape()[GAUGE] == 0, 15, "the websocket gauge back to 0")
        scrape = server.scrape()
        assert total(scrape, "coderd_api_requests_processed_total", code="500") == 0
        assert total(scrape, "coderd_api_requests_processed_total", code="101") == 13

        # SIGTERM with Redis gone and a socket open: the workers stop within their graceful time.
        late = client.socket(f"/api/v2/workspaces/{workspace['id']}/watch-ws").__enter__()
        late.recv(timeout=10)
        redis.stop_server()
        assert server.stop() == 0
        late.close()
        log = server.process.log()
        assert "SIGKILL" not in log and "Traceback" not in log, log[-3000:]
        assert 1 <= log.count("channel layer (Redis) unreachable") <= 4  # once per worker per outage
    finally:
        if server is not None:
            server.stop()
        redis.stop()


@pytest.mark.postgres
@pytest.mark.redis
@real_services
def test_it_answers_503_through_a_postgresql_outage(tmp_path: Path, redis_url: str) -> None:
    postgres = own_postgres()
    server = None
    try:
        database = postgres.create_database()
        env = {"CODER_PG_CONNECTION_URL": database, "CODER_REDIS_URL": redis_url, "CODER_LOG_LEVEL": "info"}
        server = Coderd(tmp_path / "data", workers=2, env=env)
        client = Client(server)
        workspace = client.workspace("quick", QUICK)
        watcher = Listener(client, f"/api/v2/workspaces/{workspace['id']}/watch-ws")
        watcher.start()
        wait_for(lambda: watcher.messages, 10, "the watcher's first message")
        traffic = Traffic(client, [ME, "/healthz"])
        traffic.start()
        wait_for(lambda: len(traffic.seen) >= 10, 30, "traffic")

        postgres.stop_server()
        wait_for(lambda: 503 in statuses(traffic.seen), 30, "a 503")
        status, headers, body = http_get(server.base + ME, {"Coder-Session-Token": client.token})
        assert status == 503, (status, body)
        assert {k.lower(): v for k, v in headers.items()}["retry-after"].isdigit(), (headers, body)
        error = json.loads(body)
        assert set(error) == {"message", "detail", "validations"} and error["message"]
        assert http_get(server.base + "/healthz")[0] == 503
        with pytest.raises(InvalidStatus) as refused:
            client.socket(f"/api/v2/workspaces/{workspace['id']}/watch-ws")
        assert refused.value.response.status_code == 503
        watcher.join(15)  # its next poll finds the database gone: "try again later"
        assert watcher.code == 1013
        assert server.scrape()[GAUGE] == 0  # the listener still answers, from the last counts
        time.sleep(1)
        postgres.start_server()
        back = time.monotonic()

        wait_for(lambda: server.request("GET", ME, token=client.token)[0] == 200, 30, "the API back")
        time.sleep(1)
        seen = traffic.finish()
        assert set(statuses(seen)) == {200, 503}
        first_ok = min(sent for sent, _, status, _, _ in seen if sent > back and status == 200)
        assert all(status == 200 for sent, _, status, _, _ in seen if sent >= first_ok)
        for _, _, status, headers, body in seen:
            if status == 503 and not body.startswith(b"database"):  # /healthz answers text
                assert "retry-after" in {k.lower() for k in headers} and set(json.loads(body)) == {
                    "message",
                    "detail",
                    "validations",
                }

        scrape = server.scrape()
        assert (
            total(scrape, "coderd_api_requests_processed_total", code="503", path="/api/v2/users/{user}") > 0
        )
        assert total(scrape, "coderd_api_requests_processed_total", code="503", path="/healthz") > 0
        assert total(scrape, "coderd_api_requests_processed_total", code="500") == 0
        log = server.process.log()
        assert "Traceback" not in log, log[-3000:]
        # One line when it starts and one when it ends, per process that noticed (the two workers,
        # and the master whose metrics listener counts the database gauges).
        assert 1 <= log.count("database unreachable") <= 3, log[-3000:]
        assert 1 <= log.count("database reachable again") <= 3
    finally:
        if server is not None:
            server.stop()
        postgres.stop()


# --- in process, in both passes ---------------------------------------------------------------------


@pytest.mark.django_db
def test_it_answers_503_and_logs_once_while_the_database_is_unreachable(api_as, owner, monkeypatch, caplog):
    import psycopg
    from django.db import OperationalError, connection
    from django.db.backends.signals import connection_created
    from django.db.backends.utils import CursorWrapper
    from django.test import Client as DjangoClient

    from coderd import outages

    outages.database.recovered()
    api = api_as(owner)
    caplog.set_level(logging.DEBUG)

    def refused(self, *args, **kwargs):
        # What Django raises when psycopg cannot reach the server (no SQLSTATE: no server said it).
        raise OperationalError("connection refused") from psycopg.OperationalError("connection refused")

    browser = DjangoClient(raise_request_exception=False)  # as a server: a 5xx page, not the exception
    browser.force_login(owner)
    monkeypatch.setattr(CursorWrapper, "execute", refused)
    for _ in range(3):
        response = api.get("users/me")
        assert response.status_code == 503
        assert response["Retry-After"] == str(outages.RETRY_AFTER_SECONDS)
        assert set(response.json()) == {"message", "detail", "validations"}
    assert DjangoClient().get("/healthz").status_code == 503
    assert browser.get("/admin/").status_code == 503  # through handler500
    monkeypatch.undo()
    connection_created.send(sender=connection.__class__, connection=connection)  # a new connection
    assert api.get("users/me").status_code == 200

    told = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "coderd.outages"]
    assert [level for level, _ in told if level != "DEBUG"] == ["WARNING", "INFO"], told
    assert "database unreachable: connection refused" in told[0][1]
    assert not [r for r in caplog.records if r.exc_info]  # no traceback anywhere
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 1


class FlakyLayer(InMemoryChannelLayer):
    """The in-memory layer, failing as channels_redis does while Redis is away."""

    down = False

    async def receive(self, channel):
        while FlakyLayer.down:
            raise ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
        return await super().receive(channel)

    async def group_add(self, group, channel):
        if FlakyLayer.down:
            raise ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
        return await super().group_add(group, channel)


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
@override_settings(CHANNEL_LAYERS={"default": {"BACKEND": "tests.test_outages.FlakyLayer"}})
async def test_it_serves_and_rejoins_websockets_while_the_channel_layer_fails(owner) -> None:
    from channels.db import database_sync_to_async
    from channels.layers import channel_layers
    from channels.testing import WebsocketCommunicator

    from coderd import outages
    from coderd.asgi import application
    from coderd.websockets import publish
    from provisioner.notify import workspace_group
    from tests.fixtures import make_echo_template, make_workspace, token_for

    channel_layers.backends.pop("default", None)  # built again from the overridden settings
    template = await database_sync_to_async(make_echo_template)(owner)
    workspace = await database_sync_to_async(make_workspace)(owner, template)
    token = await database_sync_to_async(token_for)(owner)
    headers = [
        (b"origin", b"http://localhost"),
        (b"host", b"localhost"),
        (b"coder-session-token", token.encode()),
    ]
    path = f"/api/v2/workspaces/{workspace.id}/watch-ws"
    FlakyLayer.down = True
    try:
        # Opened while the layer fails: accepted and served (it polls the database), not a 500.
        watcher = WebsocketCommunicator(application, path, headers=headers)
        assert (await watcher.connect(timeout=5))[0]
        assert (await watcher.receive_json_from(timeout=5))["id"] == str(workspace.id)
        assert outages.channel_layer.down
        FlakyLayer.down = False
        # Back: the socket joins its groups again (within a second or two) and notices reach it.
        layer = channel_layers["default"]
        for _ in range(100):
            if layer.groups.get(workspace_group(workspace.id)):
                break
            await asyncio.sleep(0.1)
        assert layer.groups.get(workspace_group(workspace.id))
        await database_sync_to_async(publish)(workspace_group(workspace.id), {"type": "workspace.changed"})
        assert not outages.channel_layer.down
        await watcher.disconnect()
        assert not layer.groups.get(workspace_group(workspace.id))  # left on the way out
    finally:
        FlakyLayer.down = False
        channel_layers.backends.pop("default", None)
