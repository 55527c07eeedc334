"""The HTTP metrics middleware: first in settings.MIDDLEWARE, async-capable.

Under ASGI Django calls it as a coroutine (no thread hop); under WSGI or the test client, plainly.
The in-flight gauge is raised before the rest of the chain and lowered in `finally`, so a view that
raises, a timeout or a client that leaves still lowers it. The `path` label is the route pattern
(`metrics.routes`): with legacy names on, the gauge has no label and the route is read from Django's
own resolution after the response; with them off, the gauge is labelled, so the route is resolved
before the chain runs (as today's Coder does), `UNKNOWN`/`STATIC` when none matches.
The code is the status sent; 500 when an exception escapes the chain (the server answers 500); 0
when the request was cancelled because the client went away before anything was sent.
"""

from __future__ import annotations

import asyncio
import logging
import time

from asgiref.sync import iscoroutinefunction, markcoroutinefunction

from metrics import runtime
from metrics.dbquery import current_origin
from metrics.routes import STATIC, UNKNOWN, http_route, resolve_route

_TASKS_UPDATE_SECONDS = 1.0
# One line per request (method, route, status, duration): DEBUG when it went well, WARNING for a 5xx,
# as Coder's request logger does; INFO stays for start-up and events. A 503 is DEBUG too: it is an
# outage of a dependency, already logged once for all its requests (coderd.outages).
request_log = logging.getLogger("coderd.http")
# Any other method a client invents is labelled OTHER: a label value must not come from the client.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})


def _method(request) -> str:
    method = request.method
    return method if method in _METHODS else "OTHER"


class PrometheusMiddleware:
    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request):
        if self.is_async:
            return self.__acall__(request)
        state = runtime.current()
        metrics = state.metrics
        gauge = _begin(metrics, request)
        gauge.inc()
        origin = current_origin.set(request)
        start = time.perf_counter()
        code = 500
        try:
            response = self.get_response(request)
            code = response.status_code
            return response
        finally:
            gauge.dec()
            current_origin.reset(origin)
            _record(metrics, request, code, time.perf_counter() - start)

    async def __acall__(self, request):
        state = runtime.current()
        metrics = state.metrics
        gauge = _begin(metrics, request)
        gauge.inc()
        origin = current_origin.set(request)
        start = time.perf_counter()
        code = 500
        try:
            response = await self.get_response(request)
            code = response.status_code
            return response
        except asyncio.CancelledError:
            code = 0  # Django cancels the view when the client disconnects
            raise
        finally:
            gauge.dec()
            current_origin.reset(origin)
            _record(metrics, request, code, time.perf_counter() - start)
            _note_loop(state)


def _begin(metrics, request):
    """Label the request (its method; with legacy names off, its route now, as today's Coder does
    before the handler) and return the concurrency gauge it raises."""
    method = request.metrics_method = _method(request)
    if metrics.legacy:
        request.metrics_route = None  # read from Django's resolution, after the handler
        return metrics.request_gauge(method, "")
    route = request.metrics_route = resolve_route(request)
    return metrics.request_gauge(method, route)


def _record(metrics, request, code: int, seconds: float) -> None:
    method, route = request.metrics_method, request.metrics_route
    if route is None:
        route = http_route(request)
    metrics.observe_request(method, route, code, seconds)
    level = logging.WARNING if code >= 500 and code != 503 else logging.DEBUG
    if request_log.isEnabledFor(level):
        request_log.log(level, "%s %s %s %.1fms", method, route or request.path, code, seconds * 1000)


def count_unread(request, seconds: float = 0.0) -> None:
    """A request whose client left before Django read it: Django's handler returns at once, before any
    middleware, so the middleware above never saw it. Counted as it counts a client that leaves while
    the view runs, code 0 (its latency 0: nothing served it): every request that reached the
    application is counted once."""
    metrics = runtime.current().metrics
    route = resolve_route(request)
    if metrics.legacy and route in (UNKNOWN, STATIC):
        route = ""  # legacy names label what no route matched "", as Django's own resolution does
    metrics.observe_request(_method(request), route, 0, seconds)


class StaticFilesMetrics:
    """Static files are served before Django's middleware (coderd/asgi.py). Legacy names on: not
    counted, as in the 2022 scrape. Off: counted as `path="STATIC"`, as today's Coder counts its
    own static files; `get_response` is the static handler's own."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response
        self.metered = PrometheusMiddleware(get_response)

    async def __call__(self, request):
        if runtime.current().metrics.legacy:
            return await self.get_response(request)
        return await self.metered(request)


def _note_loop(state: runtime.MetricsState) -> None:
    loop = asyncio.get_running_loop()
    if state.asyncio_tasks_gauge is None:
        if loop not in state.loops:
            state.note_loop(loop)
        return
    # Multiprocess: scrapes happen in another process, so each worker publishes its task count and GC
    # counts, at most once a second (len(all_tasks) walks every task).
    now = time.monotonic()
    if now - state._tasks_updated_at >= _TASKS_UPDATE_SECONDS:
        state._tasks_updated_at = now
        state.asyncio_tasks_gauge.set(len(asyncio.all_tasks(loop)))
        if state.gc_collector is not None:
            state.gc_collector.publish()
