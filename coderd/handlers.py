"""HTTP: two Django handlers behind one ASGI entry, and the threads their sync code runs in.

**Two chains.** The API (`/api/...`, token-authenticated, and `/healthz`) needs none of sessions,
CSRF, messages or Django's auth middleware, which are sync: each costs two thread hops a request.
Its chain (`settings.API_MIDDLEWARE`) is the metrics middleware and Django's header middlewares run
on the event loop. Everything else (the admin, `/metrics` with its admin-session login, unknown
paths) goes through `settings.MIDDLEWARE`, Django's full stack. Both chains start with the same
metrics middleware, so every request is counted with the same labels.

**Threads lent, not started.** Django's ASGIHandler enters a fresh `ThreadSensitiveContext` per
request: asgiref then starts a thread for the request's sync code and another to join it at the end,
and as Django's database connections belong to a thread, each request also opened a new connection.
Here each request borrows one of a few long-lived single-thread executors for its whole life (so,
as in Django, all its sync code runs in one thread, one connection, one request at a time) and
gives it back; a request that finds all of them lent waits for one on the event loop.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections import deque
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from asgiref.sync import AsyncToSync, ThreadSensitiveContext
from django.conf import settings
from django.core.handlers.asgi import ASGIHandler

# Sync work of this many requests at once per process; each thread keeps its database connection.
REQUEST_THREADS = 8


def is_api_path(path: str) -> bool:
    return path.startswith("/api/") or path == "/healthz"


class RequestThreads:
    """`size` single-thread executors, each lent to one request at a time (started on first need).

    Not an asyncio.Queue: requests arrive on whatever loop runs the application (the server's, and
    in tests one per `async_to_sync` call), so a waiter is a future of its own loop, woken through
    `call_soon_threadsafe`. After a fork (a gunicorn worker built from a preloaded app) the executors
    of the parent, whose threads do not exist in the child, are forgotten and new ones made.
    """

    def __init__(self, size: int = REQUEST_THREADS) -> None:
        self.size = size
        self._reset()
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._idle: list[ThreadPoolExecutor] = []
        self._made = 0
        self._waiters: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = deque()
        self._lock = threading.Lock()

    def close(self) -> None:
        """Stop the idle threads, closing the database connections they keep (tests, shutdown)."""
        from django.db import connections

        with self._lock:
            idle, self._idle = self._idle, []
            self._made -= len(idle)
        for executor in idle:
            executor.submit(connections.close_all).result()
            executor.shutdown()

    @asynccontextmanager
    async def lend(self) -> AsyncIterator[ThreadPoolExecutor]:
        executor = await self._acquire()
        try:
            yield executor
        finally:
            self._release(executor)

    async def _acquire(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._idle:
                return self._idle.pop()  # the most recently used: its thread and connection are warm
            if self._made < self.size:
                self._made += 1
                return ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"coderd-request-{self._made}")
            loop = asyncio.get_running_loop()
            future = loop.create_future()
            self._waiters.append((loop, future))
        return await future

    def _release(self, executor: ThreadPoolExecutor) -> None:
        with self._lock:
            while self._waiters:
                loop, future = self._waiters.popleft()
                try:
                    loop.call_soon_threadsafe(self._hand_over, future, executor)
                    return
                except RuntimeError:  # that waiter's loop is closed
                    continue
            self._idle.append(executor)

    def _hand_over(self, future: asyncio.Future, executor: ThreadPoolExecutor) -> None:
        if future.done():  # the waiter was cancelled (its client left): next one
            self._release(executor)
        else:
            future.set_result(executor)


class ChainHandler(ASGIHandler):
    """Django's ASGI handler with its own middleware list, its sync code in a lent thread."""

    def __init__(self, middleware: list[str], threads: RequestThreads) -> None:
        self.middleware = list(middleware)
        self.threads = threads
        super().__init__()

    def load_middleware(self, is_async: bool = False) -> None:
        # BaseHandler.load_middleware builds the chain (sync/async adaptation, view and exception
        # hooks) from settings.MIDDLEWARE and nothing else: lend it our list while it reads it.
        # Done once, when the application is built, before any request.
        saved = settings.MIDDLEWARE
        settings.MIDDLEWARE = self.middleware
        try:
            super().load_middleware(is_async)
        finally:
            settings.MIDDLEWARE = saved

    async def listen_for_disconnect(self, receive) -> None:
        # Django's raises RequestAborted when the client's disconnect arrives, which handle() then
        # ignores. Under uvicorn that is every request (its receive() answers http.disconnect once
        # the response is sent), and the exception, kept by the task, holds a traceback through
        # handle()'s frame, which holds the task: a reference cycle dragging the request, the
        # response and both tasks (~100 objects a request) into the cyclic GC's young generations.
        # Returning instead is the same to handle(): a finished task, the view cancelled if running.
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        # As Django's: this should never happen.
        raise AssertionError(f"Invalid ASGI message after request body: {message['type']}")

    async def __call__(self, scope: dict, receive, send) -> None:
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        if getattr(AsyncToSync.executors, "current", None) is not None:
            # Called from a sync thread through async_to_sync (the tests, Django's AsyncClient):
            # Django's way, so that the sync code runs back in that thread, in its transaction.
            async with ThreadSensitiveContext():
                await self.handle(scope, receive, send)
            return
        async with self.threads.lend() as executor, ThreadSensitiveContext(executor=executor):
            await self.handle(scope, receive, send)


class HTTPApplication:
    """The ASGI application for HTTP: the API's chain or the site's, by path."""

    def __init__(self, threads: RequestThreads | None = None) -> None:
        self.threads = threads or RequestThreads()
        self.api = ChainHandler(settings.API_MIDDLEWARE, self.threads)
        self.site = ChainHandler(settings.MIDDLEWARE, self.threads)

    async def __call__(self, scope: dict, receive, send) -> None:
        handler = self.api if is_api_path(scope["path"]) else self.site
        await handler(scope, receive, send)
