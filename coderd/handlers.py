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
import contextvars
import functools
import io
import logging
import os
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from asgiref.sync import AsyncToSync, ThreadSensitiveContext, sync_to_async
from django.conf import settings
from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.urls import set_script_prefix

logger = logging.getLogger("django.request")

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
            # Django's way, so that the sync code runs back in that thread, in its transaction,
            # and all of it (the response's close too) before this call returns.
            async with ThreadSensitiveContext():
                await self.serve(scope, receive, send, None)
            return
        async with self.threads.lend() as executor:
            thread = RequestThread(executor)
            async with ThreadSensitiveContext(executor=thread):
                await self.serve(scope, receive, send, thread)

    async def serve(self, scope: dict, receive, send, thread: RequestThread | None) -> None:
        """Django's `ASGIHandler.handle` (5.2), but the request's start and end are run in its
        thread without the loop waiting for them.

        Django awaits `request_started`'s receivers (closing an obsolete database connection) and
        the response's `close()` (`request_finished`'s receivers, the same) each in a hop to the
        request's thread and back: ~60 µs of the loop's time each, a tenth of an API request. They
        must run in that thread (the connection is its own), before and after the request's other
        sync code; nothing waits for what they return. So the start is deferred to the front of
        the request's first sync call (the view: one wake-up of the thread for both), and the close
        is queued on the thread, which runs calls in the order submitted: they run where Django
        runs them, the start before the request's sync code, the close after it and before that of
        the next request the thread is lent to. A receiver's exception is logged (Django's would
        have failed the request: the one receiver that does I/O, closing an obsolete connection,
        swallows database errors). Without `thread` (under async_to_sync), both are awaited, as
        Django does.
        """
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            # The client left before its request was read. Django returns here, before any
            # middleware: counted by the metrics as a client that leaves is counted (code 0).
            request, _ = self.create_request(scope, io.BytesIO())
            if request is not None:
                from metrics.middleware import count_unread

                count_unread(request)
            return
        set_script_prefix(get_script_prefix(scope))
        if thread is None:
            await signals.request_started.asend(sender=self.__class__, scope=scope)
        else:
            thread.defer(signals.request_started.send, sender=self.__class__, scope=scope)
        request, error_response = self.create_request(scope, body_file)
        if request is None:
            body_file.close()
            await self.send_response(error_response, send)
            await _close(thread, error_response.close)
            return

        async def process_request(request, send):
            response = await self.run_get_response(request)
            try:
                await self.send_response(response, send)
            except asyncio.CancelledError:
                pass  # the client disconnected during send_response
            return response

        # As Django's: the view is cancelled if the client disconnects first.
        tasks = [
            asyncio.create_task(self.listen_for_disconnect(receive)),
            asyncio.create_task(process_request(request, send)),
        ]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            if task.done():
                try:
                    task.result()
                except AssertionError:
                    body_file.close()
                    raise
            else:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        try:
            response = tasks[1].result()
        except asyncio.CancelledError:
            if thread is None:
                await signals.request_finished.asend(sender=self.__class__)
            else:
                thread.queue(signals.request_finished.send, sender=self.__class__)
        else:
            await _close(thread, response.close)
        body_file.close()


async def _close(thread: RequestThread | None, close: Callable[[], Any]) -> None:
    if thread is None:
        await sync_to_async(close)()
    else:
        thread.queue(close)


class RequestThread(Executor):
    """The thread lent to one request, as that request's sync calls see it (the executor of its
    `ThreadSensitiveContext`). Submitted from the loop only."""

    def __init__(self, executor: ThreadPoolExecutor) -> None:
        self._executor = executor
        self._deferred: list[Callable[[], Any]] = []

    def defer(self, func: Callable[..., Any], **kwargs: Any) -> None:
        """Run `func` in the thread at the front of the next call submitted (or queued)."""
        self._deferred.append(functools.partial(contextvars.copy_context().run, func, **kwargs))

    def queue(self, func: Callable[..., Any], **kwargs: Any) -> None:
        """Run `func` in the thread after what is submitted already, without waiting for it."""
        self.defer(func, **kwargs)
        self._executor.submit(_run_deferred, self._take())

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        deferred = self._take()
        if deferred:
            return self._executor.submit(_after, deferred, fn, args, kwargs)
        return self._executor.submit(fn, *args, **kwargs)

    def _take(self) -> list[Callable[[], Any]]:
        deferred, self._deferred = self._deferred, []
        return deferred


def _run_deferred(deferred: list[Callable[[], Any]]) -> None:
    for call in deferred:
        try:
            call()
        except Exception:
            logger.exception("a request's start or end failed")


def _after(deferred: list[Callable[[], Any]], fn: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
    _run_deferred(deferred)
    return fn(*args, **kwargs)


class HTTPApplication:
    """The ASGI application for HTTP: the API's chain or the site's, by path."""

    def __init__(self, threads: RequestThreads | None = None) -> None:
        self.threads = threads or RequestThreads()
        self.api = ChainHandler(settings.API_MIDDLEWARE, self.threads)
        self.site = ChainHandler(settings.MIDDLEWARE, self.threads)

    async def __call__(self, scope: dict, receive, send) -> None:
        handler = self.api if is_api_path(scope["path"]) else self.site
        await handler(scope, receive, send)
