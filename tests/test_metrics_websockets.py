"""Websockets through the metrics wrapper: gauge K while K are open, exactly 0 however they end."""

from __future__ import annotations

import asyncio

import pytest
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import InMemoryChannelLayer, channel_layers
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.test import override_settings
from django.urls import path

from coderd import websockets
from coderd.websockets import Consumer
from metrics.asgi import MetricsWebsocketMiddleware
from tests.fixtures import metrics_installed


class Echo(AsyncWebsocketConsumer):
    async def connect(self):
        await self.accept()

    async def receive(self, text_data=None, bytes_data=None):
        if text_data == "raise":
            raise RuntimeError("the consumer raises")
        if text_data == "close":
            await self.close()
            return
        await self.send(text_data=text_data)


class Refuse(AsyncWebsocketConsumer):
    async def connect(self):
        await self.close()


class Follower(Consumer):
    """coderd's consumer base, listening on the channel layer; closed by the server when told."""

    async def connect(self):
        await self.join("followers")
        await self.accept()

    async def receive_json(self, content, **kwargs):
        await self.close(1000)


class CancelDeafLayer(InMemoryChannelLayer):
    """The in-memory layer, whose receive goes on waiting when it is cancelled: what a channels_redis
    receive did under load in a gunicorn worker (seen "cancelling" for as long as the server ran)."""

    release: asyncio.Event | None = None

    async def receive(self, channel):
        try:
            return await super().receive(channel)
        except asyncio.CancelledError:
            await CancelDeafLayer.release.wait()
            return {"type": "never.delivered"}


patterns = [
    path("api/v2/workspaces/<uuid:workspace>/watch-ws", Echo.as_asgi()),
    path("api/v2/refused", Refuse.as_asgi()),
    path("api/v2/follow", Follower.as_asgi()),
]
WATCH = "/api/v2/workspaces/{workspace}/watch-ws"
WS_ID = "4f9a9c4e-8f3a-4d0e-9f59-3c1c8d6a2b11"


@pytest.fixture
def state():
    with metrics_installed(with_database=False) as fresh:
        yield fresh


def app():
    return MetricsWebsocketMiddleware(URLRouter(patterns), patterns=patterns)


def value(state, name: str, **labels) -> float:
    return state.registry.get_sample_value(name, labels) or 0.0


async def _open(application, path: str) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(application, path)
    connected, _ = await communicator.connect()
    assert connected
    return communicator


@pytest.mark.asyncio
async def test_it_counts_open_sockets_and_returns_to_zero_however_they_end(state):
    application = app()
    k = 6
    sockets = [await _open(application, f"/api/v2/workspaces/{WS_ID}/watch-ws") for _ in range(k)]
    assert value(state, "coderd_api_concurrent_websockets") == k
    assert value(state, "coderd_api_concurrent_requests") == 0

    # Two closed cleanly by the client, two by the server, one dropped abruptly, one whose
    # consumer raises.
    for s in sockets[:2]:
        await s.disconnect(code=1000)
    for s in sockets[2:4]:
        await s.send_to(text_data="close")
        assert (await s.receive_output())["type"] == "websocket.close"
        await s.disconnect()
    await sockets[4].disconnect(code=1006)
    await sockets[5].send_to(text_data="raise")
    with pytest.raises(RuntimeError):
        await sockets[5].wait()

    assert value(state, "coderd_api_concurrent_websockets") == 0
    total = value(state, "coderd_api_requests_processed_total", code="101", method="GET", path=WATCH)
    assert total == k
    assert value(state, "coderd_api_websocket_durations_seconds_count", path=WATCH) == k
    assert value(state, "coderd_api_websocket_durations_ms_count", path=WATCH) == k
    # Websockets are not HTTP requests in flight, nor in the request latency histogram.
    assert value(state, "coderd_api_request_latencies_seconds_count", method="GET", path=WATCH) == 0


@pytest.mark.asyncio
# The wrapper's finally is under test, not the channel layer: channels_redis's blocking read does not
# end promptly when its task is cancelled under pytest-asyncio (see the lead's note on issue 5).
@override_settings(CHANNEL_LAYERS={"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}})
async def test_it_lowers_the_gauge_when_the_server_stops_the_socket(state):
    communicator = await _open(app(), f"/api/v2/workspaces/{WS_ID}/watch-ws")
    assert value(state, "coderd_api_concurrent_websockets") == 1
    communicator.future.cancel()  # what an ASGI server does to its tasks at shutdown
    with pytest.raises(asyncio.CancelledError):
        await communicator.future
    assert value(state, "coderd_api_concurrent_websockets") == 0
    assert value(state, "coderd_api_websocket_durations_seconds_count", path=WATCH) == 1


@pytest.mark.asyncio
async def test_it_counts_a_refused_socket_as_403_without_a_duration(state):
    communicator = WebsocketCommunicator(app(), "/api/v2/refused")
    connected, _ = await communicator.connect()
    assert not connected
    await communicator.disconnect()
    assert (
        value(state, "coderd_api_requests_processed_total", code="403", method="GET", path="/api/v2/refused")
        == 1
    )
    assert value(state, "coderd_api_websocket_durations_seconds_count", path="/api/v2/refused") == 0
    assert value(state, "coderd_api_concurrent_websockets") == 0


@pytest.mark.asyncio
async def test_it_labels_an_unknown_websocket_path_empty(state):
    communicator = WebsocketCommunicator(app(), "/nowhere/at/all")
    with pytest.raises(ValueError):  # Channels' URLRouter: no route found
        await communicator.connect()
    assert value(state, "coderd_api_requests_processed_total", code="500", method="GET", path="") == 1


@pytest.mark.asyncio
async def test_it_counts_sockets_through_the_real_application(state):
    from coderd.asgi import application

    communicator = WebsocketCommunicator(
        application,
        "/api/v2/no-such-socket",
        headers=[(b"origin", b"http://127.0.0.1"), (b"host", b"127.0.0.1")],
    )
    # No route: a refusal (403 here: the test communicator offers no denial-response extension),
    # never Channels' "No route found" exception.
    connected, _ = await communicator.connect()
    assert not connected
    await communicator.disconnect()
    assert value(state, "coderd_api_requests_processed_total", code="403", method="GET", path="") == 1
    assert value(state, "coderd_api_requests_processed_total", code="500", method="GET", path="") == 0
    assert value(state, "coderd_api_concurrent_websockets") == 0


@pytest.mark.asyncio
async def test_it_answers_404_to_an_unknown_websocket_path_when_the_server_can(state):
    from coderd.asgi import application

    sent: list[dict] = []
    scope = {
        "type": "websocket",
        "path": "/api/v2/no-such-socket",
        "raw_path": b"/api/v2/no-such-socket",
        "query_string": b"",
        "headers": [(b"origin", b"http://127.0.0.1"), (b"host", b"127.0.0.1")],
        "subprotocols": [],
        "extensions": {"websocket.http.response": {}},
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 3000),
    }
    messages = [{"type": "websocket.connect"}]

    async def receive():
        if messages:
            return messages.pop()
        return {"type": "websocket.disconnect", "code": 1006}

    async def send(message):
        sent.append(message)

    await application(scope, receive, send)
    assert sent[0]["type"] == "websocket.http.response.start" and sent[0]["status"] == 404
    assert b"Route not found" in sent[1]["body"]
    assert value(state, "coderd_api_requests_processed_total", code="404", method="GET", path="") == 1
    assert value(state, "coderd_api_concurrent_websockets") == 0


@pytest.mark.asyncio
@override_settings(CHANNEL_LAYERS={"default": {"BACKEND": "tests.test_metrics_websockets.CancelDeafLayer"}})
async def test_it_counts_a_socket_closed_by_the_server_though_its_layer_receive_ignores_the_cancel(
    state, monkeypatch, caplog
):
    monkeypatch.setattr(websockets, "LAYER_TIMEOUT_SECONDS", 0.2)
    channel_layers.backends.pop("default", None)  # built again from the overridden settings
    CancelDeafLayer.release = asyncio.Event()
    try:
        communicator = await _open(app(), "/api/v2/follow")
        assert value(state, "coderd_api_concurrent_websockets") == 1
        await communicator.send_json_to({"close": True})
        assert (await communicator.receive_output())["type"] == "websocket.close"
        # The handler returns (its layer receive left behind) instead of waiting on it for ever.
        # (Not communicator.wait(): it cancels the handler at its timeout, which also ends it.)
        done, _ = await asyncio.wait([communicator.future], timeout=10)
        assert done, "the handler did not return after the server closed the socket"
        assert value(state, "coderd_api_concurrent_websockets") == 0
        total = value(
            state, "coderd_api_requests_processed_total", code="101", method="GET", path="/api/v2/follow"
        )
        assert total == 1
        # The task left behind is named, down to where it waits.
        assert "Consumer._layer_receive" in caplog.text and "CancelDeafLayer.receive" in caplog.text
    finally:
        CancelDeafLayer.release.set()  # the receive left behind ends with the test
        await asyncio.sleep(0)
        channel_layers.backends.pop("default", None)
