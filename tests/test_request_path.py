"""The request path (coderd/handlers.py): the API's chain without Django's sync middlewares, the
admin's chain with all of them, one metrics middleware before both, and threads lent per request
instead of started per request."""

from __future__ import annotations

import asyncio
import re
import threading
from typing import Any
from urllib.parse import urlencode

import pytest
from asgiref.sync import SyncToAsync, async_to_sync
from django.core.signals import request_finished, request_started
from django.db import close_old_connections

# Imported at collection: its django.setup() re-applies LOGGING (see tests/test_http_edges.py).
from coderd.asgi import application
from coderd.handlers import HTTPApplication, RequestThreads
from tests.fixtures import PASSWORD, metrics_installed, token_for


async def _call(app: Any, method: str, path: str, headers: list, body: bytes = b"", query: str = "") -> dict:
    sent: list[dict] = []
    calls = 0

    async def receive() -> dict:
        nonlocal calls
        calls += 1
        if calls == 1:
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": query.encode(),
        "headers": [(b"host", b"127.0.0.1"), *headers],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 3000),
    }
    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    return {
        "status": start["status"],
        "headers": [(k.decode().lower(), v.decode()) for k, v in start["headers"]],
        "body": b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"),
    }


def http(method: str, path: str, headers: list | None = None, body: bytes = b"", query: str = "") -> dict:
    """One request through the application, its sync code in this thread, in the test's transaction;
    as Django's test clients do, the connection is not closed at the request's start and end."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        return async_to_sync(_call)(application, method, path, headers or [], body, query)
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


def header(response: dict, name: str) -> list[str]:
    return [v for k, v in response["headers"] if k == name]


@pytest.fixture
def hops(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every sync_to_async call (a hop to a thread and back), by the function it runs."""
    seen: list[str] = []
    original = SyncToAsync.__call__

    def counting(self: SyncToAsync, *args: Any, **kwargs: Any) -> Any:
        seen.append(getattr(self.func, "__qualname__", repr(self.func)))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SyncToAsync, "__call__", counting)
    return seen


# --- two chains ------------------------------------------------------------------------------------


def test_it_serves_an_authenticated_api_get_in_three_thread_hops(owner: Any, hops: list[str]) -> None:
    token = token_for(owner)
    http("GET", "/api/v2/users/me", [(b"coder-session-token", token.encode())])  # warm: imports, caches
    hops.clear()
    response = http("GET", "/api/v2/users/me", [(b"coder-session-token", token.encode())])
    assert response["status"] == 200, response["body"]
    # Django's request_started receivers (closing an old connection), the view (the token check and
    # the query), the response's close (request_finished). The seven sync middlewares of the full
    # chain made thirteen more.
    assert len(hops) == 3, hops


def test_it_keeps_djangos_full_chain_on_the_admin(db: Any, hops: list[str]) -> None:
    http("GET", "/admin/login/")
    hops.clear()
    response = http("GET", "/admin/login/")
    assert response["status"] == 200
    assert len(hops) > 10, hops  # sessions, CSRF, auth, messages... each through a thread


def test_it_enforces_csrf_on_the_admin_login(owner: Any) -> None:
    form = urlencode({"username": owner.email, "password": PASSWORD}).encode()
    typed = [(b"content-type", b"application/x-www-form-urlencoded")]
    refused = http("POST", "/admin/login/", typed, body=form)
    assert refused["status"] == 403
    assert b"CSRF" in refused["body"]

    page = http("GET", "/admin/login/")
    cookie = next(v for v in header(page, "set-cookie") if v.startswith("csrftoken="))
    csrf = cookie.split(";", 1)[0].split("=", 1)[1]
    token = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', page["body"])[1]
    form = urlencode({"username": owner.email, "password": PASSWORD, "csrfmiddlewaretoken": token}).encode()
    logged_in = http("POST", "/admin/login/", [*typed, (b"cookie", f"csrftoken={csrf}".encode())], body=form)
    assert logged_in["status"] == 302
    assert any(v.startswith("sessionid=") for v in header(logged_in, "set-cookie"))


def test_it_keeps_the_security_headers_on_both_chains_and_sessions_off_the_api(owner: Any) -> None:
    api = http("GET", "/api/v2/users/me", [(b"authorization", f"Bearer {token_for(owner)}".encode())])
    admin = http("GET", "/admin/login/")
    for response in (api, admin):
        assert header(response, "x-frame-options") == ["DENY"]
        assert header(response, "x-content-type-options") == ["nosniff"]
        assert header(response, "referrer-policy") == ["same-origin"]
    # The session middleware varies the admin's pages on the cookie; the API never reads a session.
    assert "Cookie" in ", ".join(header(admin, "vary"))
    assert "Cookie" not in ", ".join(header(api, "vary"))


def test_it_authenticates_the_api_by_every_carrier(owner: Any) -> None:
    token = token_for(owner).encode()
    carriers = [
        [(b"coder-session-token", token)],
        [(b"authorization", b"Bearer " + token)],
        [(b"cookie", b"coder_session_token=" + token)],
    ]
    for headers in carriers:
        response = http("GET", "/api/v2/users/me", headers)
        assert response["status"] == 200, (headers, response["body"])
    assert http("GET", "/api/v2/users/me", [(b"cookie", b"coder_session_token=nope")])["status"] == 401


def test_it_counts_api_and_admin_requests_with_the_same_labels(owner: Any) -> None:
    with metrics_installed(with_database=False) as state:
        assert (
            http("GET", "/api/v2/users/me", [(b"coder-session-token", token_for(owner).encode())])["status"]
            == 200
        )
        assert http("GET", "/api/v2/users/me")["status"] == 401
        assert http("GET", "/admin/login/")["status"] == 200
        assert http("GET", "/api/v2/nowhere")["status"] == 404

        def count(code: str, path: str) -> float:
            labels = {"code": code, "method": "GET", "path": path}
            return state.registry.get_sample_value("coderd_api_requests_processed_total", labels) or 0.0

        assert count("200", "/api/v2/users/{user}") == 1
        assert count("401", "/api/v2/users/{user}") == 1
        assert count("200", "/admin/login/") == 1
        assert count("404", "") == 1
        assert state.registry.get_sample_value("coderd_api_concurrent_requests") == 0


# --- threads ---------------------------------------------------------------------------------------


def _serve_on_a_loop_of_its_own(app: Any, paths: list[list[str]]) -> list[str]:
    """Each inner list of paths requested at once, the lists one after the other, from a thread with
    no sync caller above it (as under uvicorn); returns the threads Django's request_started ran in."""
    threads: list[str] = []

    def started(**kwargs: Any) -> None:
        threads.append(threading.current_thread().name)

    async def run() -> None:
        for batch in paths:
            responses = await asyncio.gather(*(_call(app, "GET", p, []) for p in batch))
            assert all(r["status"] == 200 for r in responses), responses

    request_started.connect(started)
    try:
        runner = threading.Thread(target=asyncio.run, args=(run(),))
        runner.start()
        runner.join(60)
    finally:
        request_started.disconnect(started)
    return threads


def test_it_lends_a_few_threads_instead_of_starting_them_per_request(db: Any) -> None:
    app = HTTPApplication(RequestThreads(size=3))
    one_by_one = _serve_on_a_loop_of_its_own(app, [["/healthz"]] * 20)
    assert len(one_by_one) == 20
    assert len(set(one_by_one)) == 1, set(one_by_one)  # Django started one thread per request

    before = threading.active_count()
    at_once = _serve_on_a_loop_of_its_own(app, [["/healthz", "/api/v2/buildinfo"] * 5] * 4)
    assert len(at_once) == 40
    assert len(set(at_once)) == 3, set(at_once)  # ten at once wait for the three
    assert threading.active_count() <= before + 2
