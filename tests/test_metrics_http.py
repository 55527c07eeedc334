"""HTTP requests through the real ASGI application become exact metric values."""

from __future__ import annotations

import asyncio
import logging
import uuid

import pytest
from asgiref.sync import async_to_sync
from django.core.handlers.asgi import ASGIHandler
from django.http import HttpResponse
from django.urls import path, re_path
from django.views.decorators.csrf import csrf_exempt

from metrics.routes import template_for_route
from tests.fixtures import metrics_installed


def ok(request):
    return HttpResponse("ok")


@csrf_exempt
def thing(request, thing):
    return HttpResponse(status=201)


def boom(request):
    raise RuntimeError("the view raises")


_hang_started: list[asyncio.Event] = []


async def hang(request):
    _hang_started[-1].set()
    await asyncio.Event().wait()  # until the client leaves and Django cancels it


def slug(request, slug):
    return HttpResponse("slug")


urlpatterns = [
    path("t/ok", ok),
    path("t/things/<uuid:thing>", thing),
    path("t/boom", boom),
    path("t/hang", hang),
    re_path(r"^t/re/(?P<slug>[a-z]+(?:-[a-z]+)*)/$", slug),
]


@pytest.fixture
def state(db):
    with metrics_installed(with_database=False) as fresh:
        yield fresh


def _scope(method: str, path: str, headers: list[tuple[bytes, bytes]] = ()) -> dict:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1"), *headers],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 3000),
    }


async def _call(method: str, path: str, disconnect: bool = False, headers=(), app=None) -> list[dict]:
    from coderd.asgi import application

    application = app or application
    sent: list[dict] = []
    calls = 0
    never = asyncio.Event()
    _hang_started.append(asyncio.Event())

    async def receive():
        nonlocal calls
        calls += 1
        if calls == 1:
            return {"type": "http.request", "body": b"", "more_body": False}
        if disconnect:
            await _hang_started[-1].wait()  # the client leaves while the view runs
            return {"type": "http.disconnect"}
        await never.wait()

    async def send(message):
        sent.append(message)

    await application(_scope(method, path, list(headers)), receive, send)
    return sent


def request(method: str, path: str, **kw) -> int | None:
    sent = async_to_sync(_call)(method, path, **kw)
    starts = [m for m in sent if m["type"] == "http.response.start"]
    return starts[0]["status"] if starts else None


def value(state, name: str, **labels) -> float:
    return state.registry.get_sample_value(name, labels) or 0.0


@pytest.mark.urls(__name__)
def test_it_counts_known_routes_with_their_codes_and_patterns(state):
    for _ in range(3):
        assert request("GET", "/t/ok") == 200
    ids = [uuid.uuid4() for _ in range(4)]
    for i in ids:
        assert request("POST", f"/t/things/{i}") == 201
    assert request("GET", "/t/re/a-b/") == 200
    assert request("GET", "/t/nowhere") == 404

    total = "coderd_api_requests_processed_total"
    assert value(state, total, code="200", method="GET", path="/t/ok") == 3
    assert value(state, total, code="201", method="POST", path="/t/things/{thing}") == 4
    assert value(state, total, code="200", method="GET", path="/t/re/{slug}/") == 1
    assert value(state, total, code="404", method="GET", path="") == 1
    for unit in ("seconds", "ms"):
        hist = f"coderd_api_request_latencies_{unit}_count"
        assert value(state, hist, method="GET", path="/t/ok") == 3
        assert value(state, hist, method="POST", path="/t/things/{thing}") == 4
    assert value(state, "coderd_api_concurrent_requests") == 0


@pytest.mark.urls(__name__)
def test_it_counts_a_raising_view_as_500_and_lowers_the_gauge(state):
    assert request("GET", "/t/boom") == 500
    assert value(state, "coderd_api_requests_processed_total", code="500", method="GET", path="/t/boom") == 1
    assert value(state, "coderd_api_concurrent_requests") == 0


@pytest.mark.urls(__name__)
def test_it_counts_code_0_when_the_client_leaves_first(state):
    assert request("GET", "/t/hang", disconnect=True) is None
    assert value(state, "coderd_api_requests_processed_total", code="0", method="GET", path="/t/hang") == 1
    assert value(state, "coderd_api_concurrent_requests") == 0


@pytest.mark.urls(__name__)
@pytest.mark.parametrize("path", ["/t/ok", "/api/v2/anything"])  # the site's chain and the API's
def test_it_counts_code_0_when_the_client_leaves_before_its_request_is_read(state, path):
    from coderd.asgi import application

    sent: list[dict] = []

    async def receive():
        return {"type": "http.disconnect"}  # gone before the server read the request

    async def send(message):
        sent.append(message)

    async_to_sync(application)(_scope("GET", path), receive, send)
    assert sent == []  # nobody to answer
    route = "/t/ok" if path == "/t/ok" else ""  # no route matches the second (legacy names: "")
    assert value(state, "coderd_api_requests_processed_total", code="0", method="GET", path=route) == 1
    assert value(state, "coderd_api_request_latencies_seconds_count", method="GET", path=route) == 1
    assert value(state, "coderd_api_concurrent_requests") == 0


@pytest.mark.urls(__name__)
def test_it_labels_an_invented_method_other(state):
    assert request("BREW", "/t/ok") == 403  # CSRF refuses an unsafe method
    assert value(state, "coderd_api_requests_processed_total", code="403", method="OTHER", path="/t/ok") == 1


@pytest.mark.urls(__name__)
def test_it_creates_no_series_for_ten_thousand_unknown_urls(state, caplog, settings):
    def series() -> int:
        return sum(len(f.samples) for f in state.metrics.registry.collect())

    # Django's handler with only our middleware: the other middlewares' thread hops would make this
    # test take a minute without changing what it shows.
    settings.MIDDLEWARE = ["metrics.middleware.PrometheusMiddleware"]
    app = ASGIHandler()

    async def many(paths: list[str]) -> None:
        for p in paths:
            await _call("GET", p, app=app)

    caplog.set_level(logging.ERROR, logger="django.request")  # not 10,000 "Not Found" lines
    request("GET", "/t/unknown-0")
    before = series()
    async_to_sync(many)([f"/t/unknown-{i}/{uuid.uuid4()}" for i in range(1, 10_000)])
    assert series() == before
    assert value(state, "coderd_api_requests_processed_total", code="404", method="GET", path="") == 10_000


def test_it_labels_ninja_routes_with_their_pattern(state, owner, member, asgi_api_as):
    client = asgi_api_as(owner)
    assert client.get(f"users/{member.id}").status_code == 200
    assert client.get("users/not-a-user").status_code == 404
    total = "coderd_api_requests_processed_total"
    assert value(state, total, code="200", method="GET", path="/api/v2/users/{user}") == 1
    assert value(state, total, code="404", method="GET", path="/api/v2/users/{user}") == 1


@pytest.mark.parametrize(
    ("route", "template"),
    [
        ("api/v2/workspaces/<uuid:workspace>", "/api/v2/workspaces/{workspace}"),
        ("api/v2/workspaces/<uuidstr:workspace>/builds", "/api/v2/workspaces/{workspace}/builds"),
        ("api/v2/users/<user>/workspace/<workspacename>", "/api/v2/users/{user}/workspace/{workspacename}"),
        ("admin/^(?P<app_label>users|auth)/$", "/admin/{app_label}/"),
        ("^static/(?P<path>.*)$", "/static/{path}"),
        ("", "/"),
    ],
)
def test_it_turns_django_routes_into_coder_patterns(route, template):
    assert template_for_route(route) == template


@pytest.mark.urls(__name__)
def test_it_logs_one_line_per_request_with_method_route_status_and_duration(state):
    # Our own handler on the logger: Django's LOGGING set-up may replace pytest's capture handler.
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append
    logger = logging.getLogger("coderd.http")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        assert request("POST", f"/t/things/{uuid.uuid4()}") == 201
        assert request("GET", "/t/boom") == 500
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    lines = [(r.levelno, r.getMessage()) for r in records]
    assert len(lines) == 2
    assert lines[0][0] == logging.DEBUG
    assert lines[0][1].startswith("POST /t/things/{thing} 201 ") and lines[0][1].endswith("ms")
    assert lines[1][0] == logging.WARNING
    assert lines[1][1].startswith("GET /t/boom 500 ")
