"""Bad input at the HTTP edge: static paths that climb out, wrong methods, bad Host headers, refused
websockets. Each gets a clean status (JSON in API.md's shape where a client reads JSON), never a 500."""

from __future__ import annotations

import asyncio
import json
import logging
from urllib.parse import unquote

import pytest
from asgiref.sync import async_to_sync
from django.test import override_settings

SHAPE = {"message", "detail", "validations"}


async def _http(method: str, raw_path: str, headers: list | None = None) -> tuple[int, dict, bytes]:
    """One request through the real ASGI application (static files handler included)."""
    from coderd.asgi import application

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
    await application(scope, receive, send)
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
    from metrics import runtime

    fresh = runtime.build_state(with_database=False)
    previous = runtime._state
    runtime.install(fresh)
    yield fresh
    runtime.install(previous)


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
