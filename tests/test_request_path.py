"""The request path (coderd/handlers.py): the API's chain without Django's sync middlewares, the
admin's chain with all of them, one metrics middleware before both, and threads lent per request
instead of started per request."""

from __future__ import annotations

import asyncio
import gc
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest
from asgiref.sync import SyncToAsync, async_to_sync
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from django.db.backends.signals import connection_created

# Imported at collection: its django.setup() re-applies LOGGING (see tests/test_http_edges.py).
from coderd.asgi import application
from coderd.handlers import HTTPApplication, RequestThreads
from tests.fixtures import PASSWORD, metrics_installed, token_for
from tests.services import REPO, ServerProcess, clean_env, free_port, http_get, parse_samples, total
from tests.test_server import START_TIMEOUT, api, start_server


async def _call(
    app: Any,
    method: str,
    path: str,
    headers: list,
    body: bytes = b"",
    query: str = "",
    disconnect_when_sent: bool = False,
) -> dict:
    """One request; with `disconnect_when_sent`, `receive()` answers `http.disconnect` once the
    response is sent, as uvicorn's does."""
    sent: list[dict] = []
    calls = 0
    complete = asyncio.Event()

    async def receive() -> dict:
        nonlocal calls
        calls += 1
        if calls == 1:
            return {"type": "http.request", "body": body, "more_body": False}
        await (complete.wait() if disconnect_when_sent else asyncio.Event().wait())
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            complete.set()

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


def http(
    method: str,
    path: str,
    headers: list | None = None,
    body: bytes = b"",
    query: str = "",
    disconnect_when_sent: bool = False,
) -> dict:
    """One request through the application, its sync code in this thread, in the test's transaction;
    as Django's test clients do, the connection is not closed at the request's start and end."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        return async_to_sync(_call)(
            application, method, path, headers or [], body, query, disconnect_when_sent
        )
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


@pytest.mark.django_db(transaction=True)
def test_it_serves_an_authenticated_api_get_in_one_thread_hop(owner: Any, hops: list[str]) -> None:
    token = token_for(owner).encode()
    threads = RequestThreads(size=1)
    app = HTTPApplication(threads)
    try:
        # As under uvicorn: a loop with no sync caller above it, the request's thread lent.
        _serve_on_a_loop_of_its_own(app, [["/api/v2/users/me"]], [(b"coder-session-token", token)])  # warm
        hops.clear()
        _serve_on_a_loop_of_its_own(app, [["/api/v2/users/me"]], [(b"coder-session-token", token)])
    finally:
        threads.close()
    # The view (the token check and the query). The seven sync middlewares of the full chain made
    # thirteen more; request_started's receivers and the response's close two more, now run in the
    # request's thread without the loop waiting: the start in the view's hop, the close queued
    # behind it (the next test: they still run there, in order).
    assert hops == ["PathView.get_view.<locals>.sync_view_wrapper"], hops


@pytest.mark.django_db(transaction=True)
def test_it_runs_each_requests_start_and_end_in_its_thread_around_the_view(
    owner: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from coderd.users import services

    token = token_for(owner).encode()
    events: list[tuple[str, str]] = []

    def note(what: str) -> None:
        events.append((threading.current_thread().name, what))

    def started(**kwargs: Any) -> None:
        note("started")

    def finished(**kwargs: Any) -> None:
        note("finished")

    def organization_ids(user: Any) -> list[Any]:
        note("view")
        return original(user)

    original = services.organization_ids
    monkeypatch.setattr(services, "organization_ids", organization_ids)
    threads = RequestThreads(size=2)
    app = HTTPApplication(threads)
    request_started.connect(started)
    request_finished.connect(finished)
    try:
        one_by_one, at_once = [["/api/v2/users/me"]] * 3, [["/api/v2/users/me"] * 4] * 3
        _serve_on_a_loop_of_its_own(app, one_by_one + at_once, [(b"coder-session-token", token)])
    finally:
        threads.close()  # after what is queued on them: the last requests' ends
        request_started.disconnect(started)
        request_finished.disconnect(finished)
    by_thread: dict[str, list[str]] = {}
    for thread, what in events:
        by_thread.setdefault(thread, []).append(what)
    assert sum(len(seen) for seen in by_thread.values()) == 3 * 15
    for thread, seen in by_thread.items():
        # Each request's start, view and end in the thread lent to it, in that order, and the next
        # request lent that thread only after the end of the last.
        assert thread.startswith("coderd-request-"), thread
        assert seen == ["started", "view", "finished"] * (len(seen) // 3), (thread, seen)


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


# --- the garbage collector -------------------------------------------------------------------------


def test_it_leaves_no_reference_cycle_behind_an_api_request(owner: Any) -> None:
    token = token_for(owner).encode()
    headers = [(b"coder-session-token", token)]
    http("GET", "/api/v2/users/me", headers, disconnect_when_sent=True)  # warm: imports, caches
    collecting = gc.isenabled()
    gc.disable()
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)  # what a collection finds unreachable stays in gc.garbage
    try:
        gc.garbage.clear()
        for _ in range(5):
            response = http("GET", "/api/v2/users/me", headers, disconnect_when_sent=True)
            assert response["status"] == 200, response["body"]
        del response
        gc.collect()
        found = {type(o).__name__ for o in gc.garbage}
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        if collecting:
            gc.enable()
    # Django's listen_for_disconnect raised RequestAborted at every request's end under uvicorn: its
    # traceback and the tasks made a cycle holding the request, the response and the rest (~100
    # objects a request), freed only by the cyclic GC.
    assert not found & {"ASGIRequest", "HttpResponse", "Task", "RequestAborted", "traceback"}, found


def test_it_leaves_the_start_up_heap_out_of_the_garbage_collectors_walks(tmp_path: Path) -> None:
    # The application's import (uvicorn, gunicorn's workers, manage.py server) freezes what start-up
    # left alive: a full collection walked all of it (~160,000 objects, 80-125 ms a pause).
    code = "import gc, coderd.asgi; print(gc.get_freeze_count())"
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=clean_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) > 50_000


# --- threads ---------------------------------------------------------------------------------------


def _serve_on_a_loop_of_its_own(app: Any, paths: list[list[str]], headers: list | None = None) -> list[str]:
    """Each inner list of paths requested at once, the lists one after the other, from a thread with
    no sync caller above it (as under uvicorn); returns the threads Django's request_started ran in."""
    threads: list[str] = []

    def started(**kwargs: Any) -> None:
        threads.append(threading.current_thread().name)

    async def run() -> None:
        for batch in paths:
            responses = await asyncio.gather(*(_call(app, "GET", p, headers or []) for p in batch))
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
    threads = RequestThreads(size=3)
    app = HTTPApplication(threads)
    try:
        one_by_one = _serve_on_a_loop_of_its_own(app, [["/healthz"]] * 20)
        before = threading.active_count()
        at_once = _serve_on_a_loop_of_its_own(app, [["/healthz", "/api/v2/buildinfo"] * 5] * 4)
        after = threading.active_count()
    finally:
        threads.close()  # /healthz asks the database: the threads keep connections
    assert len(one_by_one) == 20
    assert len(set(one_by_one)) == 1, set(one_by_one)  # Django started one thread per request

    assert len(at_once) == 40
    assert len(set(at_once)) == 3, set(at_once)  # ten at once wait for the three
    assert after <= before + 2


# --- database connections --------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_it_opens_one_database_connection_for_a_hundred_requests(owner: Any) -> None:
    token = token_for(owner).encode()
    opened: list[str] = []

    def created(connection: Any, **kwargs: Any) -> None:
        opened.append(threading.current_thread().name)

    threads = RequestThreads(size=2)
    app = HTTPApplication(threads)
    connection_created.connect(created)
    try:
        served = _serve_on_a_loop_of_its_own(
            app, [["/api/v2/users/me"]] * 100, [(b"coder-session-token", token)]
        )
    finally:
        connection_created.disconnect(created)
        threads.close()
    assert len(served) == 100
    assert len(opened) == 1, opened  # one per request before (CONN_MAX_AGE=0, a thread per request)


# One per request before. A client's next request may arrive before the thread that served the last
# one is back in the pool (it still closes the response): then another thread, with its connection,
# serves it. Requests one after the other keep it to a few.
FEW = 3


def _new_connections(base: str) -> float:
    status, _, body = http_get(f"{base}/metrics")
    assert status == 200
    return total(parse_samples(body.decode()), "django_db_new_connections_total")


def _server_with_connection_counts(tmp_path: Path, **env: str) -> tuple[ServerProcess, str, str]:
    """`manage.py server` counting the connections it opens (django-prometheus's database wrappers),
    without daemons (their threads keep connections of their own); (server, base URL, token)."""
    port = free_port()
    server = start_server(
        tmp_path, "--http-address", f"127.0.0.1:{port}", "--provisioner-daemons", "0",
        CODER_PROMETHEUS_ENABLE="true", CODER_PROMETHEUS_ADDRESS=f"127.0.0.1:{free_port()}",
        CODER_PROMETHEUS_PUBLIC="true", CODER_PROMETHEUS_DJANGO_DB_METRICS="true",
        CODER_PROMETHEUS_REFRESH_INTERVAL="1h", **env,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    server.wait_http(f"{base}/healthz", timeout=START_TIMEOUT)
    user = {"email": "a@example.com", "username": "a", "password": "a-long-passphrase"}
    api(base, "POST", "users/first", user)
    token = api(base, "POST", "users/login", {"email": user["email"], "password": user["password"]})
    return server, base, token["session_token"]


def test_it_reuses_the_servers_sqlite_connection(tmp_path: Path) -> None:
    server, base, token = _server_with_connection_counts(tmp_path, CODER_PG_CONNECTION_URL="")
    try:
        before = _new_connections(base)  # the first scrape counts the database gauges: once an hour
        for _ in range(100):
            assert api(base, "GET", "users/me", token=token)["username"] == "a"
        assert _new_connections(base) - before <= FEW
    finally:
        server.stop()


@pytest.mark.postgres
def test_it_reuses_postgresql_connections_and_drops_a_dead_one(
    pg_server: Any, pg_database: Any, tmp_path: Path
) -> None:
    url = pg_database()
    server, base, token = _server_with_connection_counts(tmp_path, CODER_PG_CONNECTION_URL=url)
    try:
        before = _new_connections(base)
        for _ in range(100):
            assert api(base, "GET", "users/me", token=token)["username"] == "a"
        assert _new_connections(base) - before <= FEW

        # A failover or a restart: every connection of the server ends under it. The health check
        # before a kept connection's first use in a request finds it dead and opens another.
        name = urlsplit(url).path.lstrip("/")
        pg_server.execute(
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}' AND pid <> pg_backend_pid()"
        )
        for _ in range(3):
            assert api(base, "GET", "users/me", token=token)["username"] == "a"
    finally:
        server.stop()


def test_it_serves_with_a_copy_of_the_django_handler_it_was_written_against() -> None:
    # ChainHandler.serve and listen_for_disconnect are Django 5.2's ASGIHandler.handle and
    # listen_for_disconnect with the changes their docstrings give. A Django whose handler differs
    # (a fix in body reading, disconnects, signals) must be read and carried into the copy before
    # it is used: this fails until then, with the new source's fingerprints to put below.
    import hashlib
    import inspect

    from django.core.handlers.asgi import ASGIHandler

    fingerprints = {
        name: hashlib.sha256(inspect.getsource(getattr(ASGIHandler, name)).encode()).hexdigest()[:16]
        for name in ("handle", "listen_for_disconnect")
    }
    assert fingerprints == {"handle": "98faeb5bef800331", "listen_for_disconnect": "c729aa315c734f98"}
