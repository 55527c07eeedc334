"""Websockets on a running `manage.py server` (uvicorn): the gauge follows real sockets, closed
cleanly or dropped without a close frame, and returns to exactly 0."""

from __future__ import annotations

import contextlib
import json
import socket
import urllib.request

import pytest
from websockets.sync.client import connect

from tests.services import http_get, metrics_server, parse_samples, total, wait_for

WATCH = "/api/v2/workspaces/{workspace}/watch-ws"


@pytest.fixture
def server(tmp_path):
    with metrics_server(tmp_path, daemons=0, name="coderd-ws") as started:
        yield started


def _api(port: int, method: str, path: str, body: dict, token: str | None = None) -> dict:
    headers = {"Content-Type": "application/json", **({"Coder-Session-Token": token} if token else {})}
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v2/{path}",
        data=json.dumps(body).encode(),
        method=method,
        headers=headers,
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 201, path
        return json.loads(response.read())


def test_it_counts_real_websockets_back_to_zero(server):
    process, http_port, metrics_port = server
    email, password = "admin@example.com", "correct-horse-battery"
    _api(http_port, "POST", "users/first", {"email": email, "username": "admin", "password": password})
    token = _api(http_port, "POST", "users/login", {"email": email, "password": password})["session_token"]
    version = _api(
        http_port, "POST", "organizations/default/templateversions", {"name": "v1", "provisioner": "echo", "source": {}}, token
    )  # fmt: skip
    template = _api(
        http_port, "POST", "organizations/default/templates", {"name": "t", "template_version_id": version["id"]}, token
    )  # fmt: skip
    workspace = _api(
        http_port, "POST", "organizations/default/members/me/workspaces", {"template_id": template["id"], "name": "w"}, token
    )  # fmt: skip

    def scrape():
        return parse_samples(http_get(f"http://127.0.0.1:{metrics_port}/")[2].decode())

    url = f"ws://127.0.0.1:{http_port}/api/v2/workspaces/{workspace['id']}/watch-ws"
    headers = {"Coder-Session-Token": token}
    origin = f"http://127.0.0.1:{http_port}"
    with contextlib.ExitStack() as stack:
        sockets = [
            stack.enter_context(connect(url, additional_headers=headers, origin=origin, open_timeout=30))
            for _ in range(4)
        ]
        wait_for(lambda: total(scrape(), "coderd_api_concurrent_websockets") == 4, 20, "4 open websockets")
        for ws in sockets[:2]:
            ws.close()  # a clean close
        for ws in sockets[2:]:
            ws.socket.shutdown(socket.SHUT_RDWR)  # dropped: no close frame
            ws.socket.close()
        wait_for(lambda: total(scrape(), "coderd_api_concurrent_websockets") == 0, 20, "websockets back to 0")
    samples = scrape()
    assert total(samples, "coderd_api_requests_processed_total", code="101", method="GET", path=WATCH) == 4
    assert total(samples, "coderd_api_websocket_durations_seconds_count", path=WATCH) == 4
    assert total(samples, "coderd_api_concurrent_requests") == 0
