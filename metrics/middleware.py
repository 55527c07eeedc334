"""The HTTP metrics middleware: first in settings.MIDDLEWARE, async-capable.

Under ASGI Django calls it as a coroutine (no thread hop); under WSGI or the test client, plainly.
The in-flight gauge is raised before the rest of the chain and lowered in `finally`, so a view that
raises, a timeout or a client that leaves still lowers it. The `path` label is the route pattern
(`metrics.routes`), known only once the URL resolver has run, so it is read after the response.
The code is the status sent; 500 when an exception escapes the chain (the server answers 500); 0
when the request was cancelled because the client went away before anything was sent.
"""

from __future__ import annotations

import asyncio
import logging
import time

from asgiref.sync import iscoroutinefunction, markcoroutinefunction

from metrics import runtime
from metrics.routes import http_route

_TASKS_UPDATE_SECONDS = 1.0
# One line per request (method, route, status, duration): DEBUG when it went well, WARNING for a 5xx,
# as Coder's request logger does; INFO stays for start-up and events.
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
        metrics.concurrent_requests.inc()
        start = time.perf_counter()
        code = 500
        try:
            response = self.get_response(request)
            code = response.status_code
            return response
        finally:
            metrics.concurrent_requests.dec()
            _record(metrics, request, code, time.perf_counter() - start)

    async def __acall__(self, request):
        state = runtime.current()
        metrics = state.metrics
        metrics.concurrent_requests.inc()
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
            metrics.concurrent_requests.dec()
            _record(metrics, request, code, time.perf_counter() - start)
            _note_loop(state)


def _record(metrics, request, code: int, seconds: float) -> None:
    method, route = _method(request), http_route(request)
    metrics.observe_request(method, route, code, seconds)
    level = logging.WARNING if code >= 500 else logging.DEBUG
    if request_log.isEnabledFor(level):
        request_log.log(level, "%s %s %s %.1fms", method, route or request.path, code, seconds * 1000)


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
