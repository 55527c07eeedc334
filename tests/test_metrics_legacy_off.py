"""With legacy names off the scrape is today's Coder's: the concurrency gauges carry the route,
and a request no route matches is `UNKNOWN` under /api/ and `STATIC` elsewhere (static files counted)."""

from __future__ import annotations

import uuid

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from django.http import HttpResponse
from django.urls import path, register_converter

from metrics import runtime
from tests.fixtures import metrics_installed
from tests.test_metrics_http import _call, request
from tests.test_metrics_websockets import WATCH, WS_ID, app

seen_in_flight: list[float | None] = []


def thing(request, thing):
    # What a scrape would show while this request runs.
    state = runtime.current()
    seen_in_flight.append(
        state.registry.get_sample_value(
            "coderd_api_concurrent_requests", {"method": "GET", "path": "/api/v2/things/{thing}"}
        )
    )
    return HttpResponse("ok")


class Broken:
    """A path converter with a bug: Django's resolution raises it (a 500), ours must not."""

    regex = "broken"

    def to_python(self, value):
        raise RuntimeError("the converter has a bug")

    def to_url(self, value):
        return value


register_converter(Broken, "broken")
urlpatterns = [path("api/v2/things/<uuid:thing>", thing), path("api/v2/<broken:b>", thing)]


@pytest.fixture
def state(db):
    with metrics_installed(with_database=False, legacy=False) as fresh:
        yield fresh


def value(state, name: str, **labels) -> float | None:
    return state.registry.get_sample_value(name, labels)


@pytest.mark.urls(__name__)
def test_it_labels_a_request_in_flight_with_its_method_and_route(state):
    seen_in_flight.clear()
    assert request("GET", f"/api/v2/things/{uuid.uuid4()}") == 200
    assert seen_in_flight == [1.0]
    assert value(state, "coderd_api_concurrent_requests", method="GET", path="/api/v2/things/{thing}") == 0
    assert value(state, "coderd_api_concurrent_requests") is None  # no bare series beside the labelled
    total = "coderd_api_requests_processed_total"
    assert value(state, total, code="200", method="GET", path="/api/v2/things/{thing}") == 1


@pytest.mark.urls(__name__)
def test_it_labels_unmatched_paths_unknown_under_api_and_static_elsewhere(state):
    assert request("GET", "/api/v2/no-such-thing") == 404
    assert request("POST", "/api/v2/things/not-a-uuid") == 404
    assert request("GET", "/favicon.ico") == 404
    total = "coderd_api_requests_processed_total"
    assert value(state, total, code="404", method="GET", path="UNKNOWN") == 1
    assert value(state, total, code="404", method="POST", path="UNKNOWN") == 1
    assert value(state, total, code="404", method="GET", path="STATIC") == 1
    assert value(state, total, code="404", method="GET", path="") is None
    assert value(state, "coderd_api_request_latencies_seconds_count", method="GET", path="UNKNOWN") == 1
    assert value(state, "coderd_api_concurrent_requests", method="GET", path="STATIC") == 0


@pytest.mark.urls(__name__)
def test_it_counts_a_request_whose_route_resolution_raises(state):
    assert request("GET", "/api/v2/broken") == 500
    assert value(state, "coderd_api_requests_processed_total", code="500", method="GET", path="UNKNOWN") == 1
    assert value(state, "coderd_api_concurrent_requests", method="GET", path="UNKNOWN") == 0


def _static_file() -> str:
    return "/static/admin/css/base.css"


def test_it_counts_static_files_as_static_with_legacy_off_only(db):
    total = "coderd_api_requests_processed_total"
    with metrics_installed(with_database=False, legacy=False) as off:
        sent = async_to_sync(_call)("GET", _static_file())
        assert sent[0]["status"] == 200
        assert value(off, total, code="200", method="GET", path="STATIC") == 1
        assert value(off, "coderd_api_request_latencies_seconds_count", method="GET", path="STATIC") == 1
        assert value(off, "coderd_api_concurrent_requests", method="GET", path="STATIC") == 0
    with metrics_installed(with_database=False, legacy=True) as on:
        # The 2022 scrape never counted them: with legacy names on, nothing changes.
        assert async_to_sync(_call)("GET", _static_file())[0]["status"] == 200
        assert not [
            s for f in on.registry.collect() for s in f.samples if s.name.startswith("coderd_api_requests")
        ]


@pytest.mark.asyncio
async def test_it_labels_open_websockets_with_their_route():
    with metrics_installed(with_database=False, legacy=False) as state:
        communicator = WebsocketCommunicator(app(), f"/api/v2/workspaces/{WS_ID}/watch-ws")
        assert (await communicator.connect())[0]
        assert value(state, "coderd_api_concurrent_websockets", path=WATCH) == 1
        await communicator.disconnect()
        assert value(state, "coderd_api_concurrent_websockets", path=WATCH) == 0
        assert value(state, "coderd_api_concurrent_websockets") is None
        for where, label in (("/api/v2/nowhere", "UNKNOWN"), ("/nowhere", "STATIC")):
            lost = WebsocketCommunicator(app(), where)
            with pytest.raises(ValueError):  # Channels' URLRouter: no route found
                await lost.connect()
            assert (
                value(state, "coderd_api_requests_processed_total", code="500", method="GET", path=label) == 1
            )
