"""The websocket metrics wrapper: an ASGI middleware around the Channels websocket router.

Every websocket connection is seen here, whatever consumer serves it. It counts in
`coderd_api_concurrent_websockets` from the moment the app accepts it, and leaves it in a `finally`
whatever ends it: a clean close, the client vanishing, the consumer raising, the server stopping
(the task is cancelled). At the end it is counted once in `requests_processed_total` as a GET with
code 101 (accepted), the HTTP status of a refusal (403 when closed before accepting, as Daphne and
uvicorn answer), 500 when the app raised before answering, or 0 when nothing was sent; an accepted
socket's lifetime is observed in the websocket duration histograms.
"""

from __future__ import annotations

import asyncio
import time

from metrics import runtime
from metrics.dbquery import current_origin
from metrics.routes import WebsocketRoutes


class MetricsWebsocketMiddleware:
    def __init__(self, app, patterns: list | None = None) -> None:
        self.app = app
        self._patterns = patterns
        self._routes: dict[bool, WebsocketRoutes] = {}  # by legacy setting: unmatched is "" or not

    def _route(self, path: str, legacy: bool) -> str:
        routes = self._routes.get(legacy)
        if routes is None:
            patterns = self._patterns
            if patterns is None:  # read late: apps add their routes when their modules load
                from coderd.routing import websocket_urlpatterns as patterns
            routes = self._routes[legacy] = WebsocketRoutes(patterns, legacy=legacy)
        return routes.resolve(path)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "websocket":
            return await self.app(scope, receive, send)
        state = runtime.current()
        metrics = state.metrics
        path = self._route(scope.get("path", ""), metrics.legacy)
        gauge = metrics.websocket_gauge(path)
        start = time.perf_counter()
        code = 0
        accepted = False
        # The consumer's database queries are counted under this route.
        origin = current_origin.set((path, "GET"))

        async def counting_send(message):
            nonlocal code, accepted
            kind = message["type"]
            if kind == "websocket.accept" and not accepted:
                accepted, code = True, 101
                gauge.inc()
            elif kind == "websocket.close" and not accepted and code == 0:
                code = 403
            elif kind == "websocket.http.response.start" and code == 0:
                code = int(message.get("status", 403))
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        except Exception:
            if code == 0:
                code = 500
            raise
        finally:
            current_origin.reset(origin)
            if accepted:
                gauge.dec()
            metrics.observe_websocket(path, code, time.perf_counter() - start if accepted else None)
            if state.asyncio_tasks_gauge is None:
                state.note_loop(asyncio.get_running_loop())
