"""Bad input at the HTTP edge: static paths that climb out, wrong methods, bad Host headers, refused
websockets. Each gets a clean status (JSON in API.md's shape where a client reads JSON), never a 500."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from urllib.parse import unquote

import pytest
from asgiref.sync import async_to_sync
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from django.test import override_settings

# Imported at collection: its django.setup() re-applies LOGGING, which would drop the handler of
# `caplog` in whichever test imported it first.
from coderd.asgi import application
from tests.fixtures import metrics_installed

SHAPE = {"message", "detail", "validations"}


async def _http(method: str, raw_path: str, headers: list | None = None) -> tuple[int, dict, bytes]:
    """One request through the real ASGI application (static files handler included)."""
    sent: list[dict] = []
    calls = 0

    async def receive():
        nonlocal calls
        calls += 1
        if calls == 1:
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": unquote(raw_path),
        "raw_path": raw_path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers if headers is not None else [(b"host", b"127.0.0.1")],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 3000),
    }
    # As Django's test client does: the test's own connection, in its transaction, must stay open.
    for signal in (request_started, request_finished):
        signal.disconnect(close_old_connections)
    try:
        await application(scope, receive, send)
    finally:
        for signal in (request_started, request_finished):
            signal.connect(close_old_connections)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], {k.decode().lower(): v.decode() for k, v in start["headers"]}, body


def http(method: str, raw_path: str, headers: list | None = None) -> tuple[int, dict, bytes]:
    return async_to_sync(_http)(method, raw_path, headers)


def assert_json_error(status: int, headers: dict, body: bytes, expected: int) -> dict:
    assert status == expected, body
    assert headers["content-type"].startswith("application/json")
    data = json.loads(body)
    assert set(data) == SHAPE
    assert isinstance(data["message"], str) and data["message"]
    assert data["validations"] == []
    return data


# --- static files -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw_path",
    [
        "/static/../settings.py",
        "/static/..%2f..%2fetc%2fpasswd",
        "/static/admin/../../x",
        "/static/admin/css/../../../../../coderd/settings.py",
    ],
)
def test_it_answers_404_to_a_static_path_that_climbs_out(db, raw_path, caplog):
    with caplog.at_level(logging.WARNING):
        status, _, body = http("GET", raw_path)
    assert status == 404
    assert b"SECRET" not in body and b"DJANGO" not in body
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_it_still_serves_the_admin_static_files(db):
    status, headers, body = http("GET", "/static/admin/css/base.css")
    assert status == 200
    assert headers["content-type"] == "text/css"
    assert b"DJANGO Admin styles" in body


# --- wrong methods ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/metrics"),
        ("PUT", "/metrics"),
        ("PATCH", "/metrics"),
        ("DELETE", "/metrics"),
        ("OPTIONS", "/metrics"),
        ("POST", "/healthz"),
        ("DELETE", "/healthz"),
        ("POST", "/api/v2/openapi.json"),
        ("PUT", "/api/v2/openapi.json"),
    ],
)
def test_it_answers_405_as_json_to_a_wrong_method(db, method, path):
    status, headers, body = http(method, path)
    data = assert_json_error(status, headers, body, 405)
    assert headers["allow"] == "GET, HEAD"
    assert "GET" in data["detail"]


@pytest.fixture
def metrics_state():
    with metrics_installed(with_database=False) as fresh:
        yield fresh


@override_settings(PROMETHEUS_ENABLE=True, PROMETHEUS_PUBLIC=True)
def test_it_still_answers_the_safe_methods(db, metrics_state):
    assert http("GET", "/healthz")[:1] == (200,)
    assert http("HEAD", "/healthz")[0] == 200
    status, headers, _ = http("GET", "/api/v2/openapi.json")
    assert status == 200 and headers["content-type"].startswith("application/json")
    status, headers, body = http("GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain") and body
    assert http("HEAD", "/metrics")[0] == 200  # the ASGI server drops a HEAD's body


# --- bad Host header --------------------------------------------------------------------------------


@pytest.mark.parametrize("host", [b"evil.example", b"bad host!", b"127.0.0.1:notaport"])
def test_it_answers_a_bad_host_on_the_api_with_json_400(db, host):
    status, headers, body = http("GET", "/api/v2/buildinfo", [(b"host", host)])
    data = assert_json_error(status, headers, body, 400)
    assert "Host" in data["message"]


def test_it_does_not_log_a_traceback_for_each_bad_host(db, caplog):
    with caplog.at_level(logging.INFO):
        status, _, _ = http("GET", "/api/v2/buildinfo", [(b"host", b"evil.example")])
    assert status == 400
    assert not [r for r in caplog.records if r.name.startswith("django.security")]


def test_it_keeps_the_html_400_for_a_bad_host_outside_the_api(db):
    status, headers, body = http("GET", "/admin/", [(b"host", b"evil.example")])
    assert status == 400
    assert headers["content-type"].startswith("text/html")
    assert b"Bad Request" in body


@override_settings(PROMETHEUS_ENABLE=True, PROMETHEUS_PUBLIC=True)
def test_it_negotiates_the_main_ports_metrics_like_the_listener(db, metrics_state):
    status, headers, body = http(
        "GET",
        "/metrics",
        [
            (b"host", b"127.0.0.1"),
            (b"accept", b"application/openmetrics-text; version=9"),
            (b"accept-encoding", b"gzip;q=0"),
        ],
    )
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    assert "content-encoding" not in headers
    assert b"# HELP" in body


# --- websocket refusals -----------------------------------------------------------------------------

ORIGIN_OK = [(b"origin", b"http://127.0.0.1"), (b"host", b"127.0.0.1")]


async def _ws(path: str, headers: list, deny: bool = True, app=None) -> list[dict]:
    """One websocket handshake through the application, as a server with (or without) the denial
    response extension would drive it."""
    sent: list[dict] = []
    messages = [{"type": "websocket.connect"}]

    async def receive():
        if messages:
            return messages.pop()
        return {"type": "websocket.disconnect", "code": 1006}

    async def send(message):
        sent.append(message)

    path, _, query = path.partition("?")
    scope = {
        "type": "websocket",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "headers": headers,
        "subprotocols": [],
        "extensions": {"websocket.http.response": {}} if deny else {},
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 3000),
    }
    await (app or application)(scope, receive, send)
    return sent


def assert_denied(sent: list[dict], status: int) -> dict:
    assert [m["type"] for m in sent] == ["websocket.http.response.start", "websocket.http.response.body"]
    assert sent[0]["status"] == status
    assert (b"content-type", b"application/json") in sent[0]["headers"]
    assert not sent[1].get("more_body", False)
    data = json.loads(sent[1]["body"])
    assert set(data) == SHAPE and data["message"] and data["validations"] == []
    return data


def test_it_answers_404_json_to_an_unknown_websocket_path(db):
    data = assert_denied(async_to_sync(_ws)("/api/v2/no-such-socket", ORIGIN_OK), 404)
    assert data["message"] == "Route not found."
    assert "/api/v2/no-such-socket" in data["detail"]


@pytest.mark.parametrize("origin", [b"http://evil.example", b"null", b"http://[", None])
def test_it_answers_403_json_to_a_bad_origin(db, origin):
    headers = [(b"host", b"127.0.0.1")] + ([(b"origin", origin)] if origin else [])
    data = assert_denied(async_to_sync(_ws)("/api/v2/no-such-socket", headers), 403)
    assert "Origin" in data["message"]


@pytest.mark.django_db(transaction=True)  # the consumers read the database from other threads
# The refusal is under test, not the channel layer: channels_redis's blocking read does not end
# when its task is cancelled under a test's event loop (see test_metrics_websockets.py).
@override_settings(CHANNEL_LAYERS={"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}})
def test_it_answers_json_when_a_consumer_refuses(owner, workspace_for):
    from tests.fixtures import token_for

    build = workspace_for(owner).latest_build
    auth = [*ORIGIN_OK, (b"coder-session-token", token_for(owner).encode())]
    cases = [
        (f"/api/v2/workspacebuilds/{build.id}/logs", ORIGIN_OK, 401, None),  # no token
        (f"/api/v2/workspacebuilds/{uuid.uuid4()}/logs", auth, 404, "Workspace build not found."),
        (f"/api/v2/templateversions/{uuid.uuid4()}/logs", auth, 404, "Template version not found."),
        (f"/api/v2/workspacebuilds/{build.id}/logs?after=abc", auth, 400, None),
        (f"/api/v2/workspaces/{uuid.uuid4()}/watch-ws", auth, 404, "Workspace not found."),
        ("/api/v2/organizations/default/provisionerdaemons/serve", ORIGIN_OK, 401, None),  # no key
    ]
    for path, headers, status, message in cases:
        data = assert_denied(async_to_sync(_ws)(path, headers), status)
        if message:
            assert data["message"] == message, path


@pytest.mark.parametrize(
    ("code", "reason", "status", "message"),
    [
        (4401, "", 401, "You must be authenticated to use this endpoint."),
        (4404, "No such build.", 404, "No such build."),
        (4400, "", 400, "Invalid request."),
        (None, "", 403, "You are not allowed to do this."),
        (1000, "", 403, "You are not allowed to do this."),
    ],
)
def test_it_turns_a_close_code_into_the_status(code, reason, status, message):
    from coderd.ws_notfound import RefusalMiddleware

    async def consumer(scope, receive, send):
        await receive()
        close = {"type": "websocket.close"}
        if code is not None:
            close["code"] = code
        if reason:
            close["reason"] = reason
        await send(close)
        await send({"type": "websocket.close"})  # a second close is dropped, never a server error

    data = assert_denied(async_to_sync(_ws)("/x", ORIGIN_OK, app=RefusalMiddleware(consumer)), status)
    assert data["message"] == message


def test_it_closes_before_accepting_when_the_server_cannot_deny(db):
    for headers in (ORIGIN_OK, [(b"origin", b"http://evil.example"), (b"host", b"127.0.0.1")]):
        sent = async_to_sync(_ws)("/api/v2/no-such-socket", headers, deny=False)
        assert [m["type"] for m in sent] == ["websocket.close"]


def test_it_quiets_uvicorns_false_handshake_error_only_after_a_denial(caplog):
    from coderd import ws_notfound

    ws_notfound.quiet_uvicorn_denials()
    logger = logging.getLogger("uvicorn.error")

    async def denied():
        async def send(message):
            pass

        await ws_notfound.RefusalMiddleware(ws_notfound.not_found)(
            {"type": "websocket", "path": "/x", "extensions": {"websocket.http.response": {}}},
            _connect_once(),
            send,
        )
        logger.error(ws_notfound.UVICORN_INCOMPLETE_HANDSHAKE)  # as uvicorn does, in the same task

    async def plain():
        logger.error(ws_notfound.UVICORN_INCOMPLETE_HANDSHAKE)

    def uvicorn_lines() -> list[str]:
        # Only uvicorn's: anything else may log at ERROR meanwhile (asyncio, about a task another
        # test left behind and the garbage collector just found).
        return [r.getMessage() for r in caplog.records if r.name == "uvicorn.error"]

    with caplog.at_level(logging.ERROR, logger="uvicorn.error"):
        asyncio.run(denied())
        assert uvicorn_lines() == []
        asyncio.run(plain())
        assert uvicorn_lines() == [ws_notfound.UVICORN_INCOMPLETE_HANDSHAKE]


def _connect_once():
    messages = [{"type": "websocket.connect"}]

    async def receive():
        return messages.pop() if messages else {"type": "websocket.disconnect", "code": 1006}

    return receive


def test_it_denies_through_uvicorn_without_an_error_log(caplog):
    import socket
    import threading

    import uvicorn

    ready = threading.Event()

    class Server(uvicorn.Server):
        async def startup(self, sockets=None):
            await super().startup(sockets)
            ready.set()

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    # ws="auto" (websockets-sansio) as `manage.py server` and gunicorn's uvicorn worker run it.
    server = Server(uvicorn.Config(application, lifespan="off", log_config=None, ws="auto"))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    with caplog.at_level(logging.INFO):
        thread.start()
        try:
            assert ready.wait(30)
            with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
                client.sendall(
                    b"GET /api/v2/no-such-socket HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    b"Origin: http://127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
                )
                raw = b""
                while chunk := client.recv(65536):
                    raw += chunk
        finally:
            server.should_exit = True
            thread.join(30)
            sock.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 404"), head
    assert set(json.loads(body)) == SHAPE
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
