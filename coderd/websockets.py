"""What every websocket consumer shares: a life that always ends, and a channel layer it can lose.

`Consumer` replaces Channels' dispatch loop (`AsyncConsumer.__call__`) for three reasons:
- **It always ends.** A close sent by the server (`close()`, `end()`) stops the consumer at once,
  without waiting for the client's reply; background tasks (`spawn()`) are cancelled and groups
  left (within `LAYER_TIMEOUT_SECONDS`) on every way out; `disconnect()` runs exactly once. A handler
  that outlived its socket kept `coderd_api_concurrent_websockets` up and SIGTERM waiting.
- **Redis may go away.** Channels ends a consumer whose channel-layer receive raises (the client
  saw 1006) and a `group_add` that raises refuses a new socket with a 500. Here a failing layer is
  waited out: receives are retried with a backoff, groups joined with `join()` are joined again
  once the layer answers (after a restart Redis has forgotten them), and the followers, which
  re-read the database every second anyway, carry on meanwhile. `coderd.outages` logs it once.
- **Errors become close codes.** The client leaving mid-send is a DEBUG line; an unreachable
  database is 503 before accept (4503, see coderd.ws_notfound) or 1013 "try again later" after.

Also here: `publish()` (group_send from synchronous code, bounded, skipped while the layer is known
down) and the groups that reach a user's or an API key's sockets (`close_sessions()`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Collection, Coroutine
from typing import Any

from asgiref.sync import async_to_sync
from channels.db import aclose_old_connections, database_sync_to_async
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.layers import get_channel_layer
from django.db import DatabaseError

from coderd import outages

log = logging.getLogger(__name__)

try:
    from redis.exceptions import RedisError
except ImportError:  # channels_redis (and so redis) is only needed with CODER_REDIS_URL

    class RedisError(Exception):  # type: ignore[no-redef]
        pass


try:
    from uvicorn.protocols.utils import ClientDisconnected
except ImportError:  # under Daphne sends to a gone client are dropped instead

    class ClientDisconnected(OSError):  # type: ignore[no-redef]
        pass


# What a failing channel layer raises: redis-py's errors, a socket's, or our own time limit.
LAYER_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, asyncio.TimeoutError)
# No single channel-layer call (join, leave, publish) may take longer than this.
LAYER_TIMEOUT_SECONDS = 2.0
# A failed receive is retried after this, doubling up to the maximum.
LAYER_RETRY_SECONDS = 0.5
LAYER_RETRY_MAX_SECONDS = 5.0
# How often a consumer checks that its groups are joined (after an outage they must be re-joined).
GROUP_CHECK_SECONDS = 1.0
# How often an open socket's session is checked again: suspension and revocation also reach sockets
# through the channel layer at once, but a notice lost in a Redis outage must not keep one open.
SESSION_CHECK_SECONDS = 30.0
# While the layer is known down, publishers try again this often instead of at every notice.
PUBLISH_RETRY_SECONDS = 1.0

# Close codes after accept (before accept, 4000 + an HTTP status: coderd.ws_notfound).
TRY_AGAIN_LATER = 1013
INTERNAL_ERROR = 1011
SESSION_ENDED = 4401
REFUSED_UNAVAILABLE = 4503


def user_group(user_id: Any) -> str:
    return f"user.{user_id}"


def api_key_group(key_id: Any) -> str:
    return f"apikey.{key_id}"


class Consumer(AsyncJsonWebsocketConsumer):
    """The base of coderd's consumers; see the module's docstring."""

    accepted = False
    close_code: int | None = None

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        register_serving_loop()
        self.scope = scope
        self.base_send = send
        self._stop = asyncio.Event()
        self._background: set[asyncio.Task] = set()
        self._groups: set[str] = set()
        self._joined_epoch: int | None = None
        self._keeper: asyncio.Task | None = None
        self._session: tuple[Any, Any] | None = None
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        sources: list[Callable[[], Coroutine]] = [receive]
        if self.channel_layer is not None:
            self.channel_name = await self.channel_layer.new_channel()
            sources.append(self._layer_receive)
        try:
            await self._dispatch_until_stopped(sources)
        finally:
            await self._finish()

    async def _dispatch_until_stopped(self, sources: list[Callable[[], Coroutine]]) -> None:
        tasks = [asyncio.ensure_future(source()) for source in sources]
        stopped = asyncio.ensure_future(self._stop.wait())
        try:
            while not self._stop.is_set():
                await asyncio.wait([*tasks, stopped], return_when=asyncio.FIRST_COMPLETED)
                for i, task in enumerate(tasks):
                    if task.done() and not self._stop.is_set():
                        message = task.result()
                        tasks[i] = asyncio.ensure_future(sources[i]())
                        await self.dispatch(message)
        except StopConsumer:
            pass
        finally:
            await _cancel_and_wait((*tasks, stopped), self.scope)

    async def dispatch(self, message: dict[str, Any]) -> None:
        try:
            await super().dispatch(message)
        except ClientDisconnected:
            log.debug("websocket %s: the client left while being sent to", self.scope.get("path"))
            self._stop.set()
        except DatabaseError as exc:
            if not outages.note_database_error(exc):
                raise
            await self._database_lost()

    async def websocket_disconnect(self, message: dict[str, Any]) -> None:
        self.close_code = message.get("code", 1000)
        raise StopConsumer()

    async def accept(self, subprotocol: str | None = None, headers: Any = None) -> None:
        await super().accept(subprotocol, headers)
        self.accepted = True

    async def close(self, code: int | bool | None = None, reason: str | None = None) -> None:
        """Close and stop: the client's reply is not waited for (a client that never answers would
        keep the handler, its gauge and a server's shutdown waiting)."""
        if self._stop.is_set():
            return
        try:
            await super().close(code=code, reason=reason)
        except ClientDisconnected:
            pass
        self.close_code = code if isinstance(code, int) else 1000
        self._stop.set()

    async def _finish(self) -> None:
        await _cancel_and_wait(list(self._background), self.scope)
        if self._groups and self.channel_layer is not None and not outages.channel_layer.down:
            try:
                async with asyncio.timeout(LAYER_TIMEOUT_SECONDS):
                    for group in self._groups:
                        await self.channel_layer.group_discard(group, self.channel_name)
            except LAYER_ERRORS as exc:  # the entries expire by themselves
                outages.channel_layer.failed(exc)
        try:
            await self.disconnect(self.close_code if self.close_code is not None else 1006)
        except DatabaseError as exc:
            if not outages.note_database_error(exc):
                log.exception("websocket %s: disconnect failed", self.scope.get("path"))
        # As Channels' own loop does before each handler, the last one included: a connection this
        # socket's work left open (past CONN_MAX_AGE, or broken) is not kept for the next one.
        await aclose_old_connections()

    async def _database_lost(self) -> None:
        if self.accepted:
            await self.close(TRY_AGAIN_LATER, "The database is unavailable; reconnect later.")
        else:
            await self.close(REFUSED_UNAVAILABLE, "The database is unavailable; try again later.")

    # --- background tasks ---

    def spawn(self, coro: Coroutine) -> asyncio.Task:
        """Run `coro` beside the socket until it ends; its errors end the socket, never a task log."""
        task = asyncio.ensure_future(self._guarded(coro))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _guarded(self, coro: Coroutine) -> None:
        try:
            await coro
        except ClientDisconnected:
            log.debug("websocket %s: the client left while being sent to", self.scope.get("path"))
            self._stop.set()
        except DatabaseError as exc:
            if not outages.note_database_error(exc):
                log.exception("websocket %s: database error", self.scope.get("path"))
            await self._database_lost()
        except Exception:
            log.exception("websocket %s: background task failed", self.scope.get("path"))
            await self.close(INTERNAL_ERROR)

    # --- the channel layer ---

    async def _layer_receive(self) -> dict[str, Any]:
        delay = LAYER_RETRY_SECONDS
        while True:
            try:
                return await self.channel_layer.receive(self.channel_name)
            except LAYER_ERRORS as exc:
                outages.channel_layer.failed(exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, LAYER_RETRY_MAX_SECONDS)

    async def join(self, group: str) -> None:
        """Be in `group` for as long as the socket is open, across outages of the layer."""
        self._groups.add(group)
        if self.channel_layer is None:
            return
        if not outages.channel_layer.down:
            await self._join_groups()
        if self._keeper is None:
            self._keeper = self.spawn(self._keep_groups())

    async def _join_groups(self) -> None:
        epoch = outages.channel_layer.epoch
        try:
            async with asyncio.timeout(LAYER_TIMEOUT_SECONDS):
                for group in list(self._groups):
                    await self.channel_layer.group_add(group, self.channel_name)
        except LAYER_ERRORS as exc:
            outages.channel_layer.failed(exc)
            self._joined_epoch = None
            return
        self._joined_epoch = epoch
        outages.channel_layer.recovered()

    async def _keep_groups(self) -> None:
        checked = time.monotonic()
        while True:
            await asyncio.sleep(GROUP_CHECK_SECONDS)
            if self._joined_epoch != outages.channel_layer.epoch:
                await self._join_groups()
            if self._session is not None and time.monotonic() - checked >= SESSION_CHECK_SECONDS:
                checked = time.monotonic()
                if not await database_sync_to_async(_session_alive)(*self._session):
                    await self.session_revoked({})

    # --- sessions ---

    async def follow_session(self, user: Any, key: Any = None) -> None:
        """Close this socket when its user is suspended or deleted, or its API key (None for the
        admin's session cookie) revoked."""
        self._session = (user.pk, key.pk if key is not None else None)
        await self.join(user_group(user.pk))
        if key is not None:
            await self.join(api_key_group(key.pk))

    async def session_revoked(self, event: dict[str, Any]) -> None:
        await self.close(SESSION_ENDED, "The session was revoked, or its user suspended.")


async def _cancel_and_wait(tasks: Collection[asyncio.Future], scope: dict[str, Any]) -> None:
    """Cancel `tasks` and wait for them, for LAYER_TIMEOUT_SECONDS at most.

    A channels_redis receive that is cancelled does not always end: under load, one has stayed
    "cancelling", waiting inside the layer, for as long as the server ran. Waiting for it without a
    bound kept its socket's handler from ever returning: the socket was never counted in
    coderd_api_requests_processed_total, its concurrent-websockets gauge stayed up, and SIGTERM waited
    for the graceful timeout. A task that outlives the bound is left to end by itself."""
    for task in tasks:
        task.cancel()
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=LAYER_TIMEOUT_SECONDS)
    for task in pending:
        task.add_done_callback(_retrieve)
    if pending:
        log.warning(
            "websocket %s: %d task(s) did not end within %g s of being cancelled; left behind: %s",
            scope.get("path"),
            len(pending),
            LAYER_TIMEOUT_SECONDS,
            "; ".join(_where(t) for t in pending),
        )
    for task in tasks:
        if task.done() and not task.cancelled():
            task.exception()  # retrieved, so asyncio does not log it as never retrieved


def _where(task: asyncio.Future) -> str:
    """Where a task waits: the chain of coroutines it awaits, innermost last (a task's own stack
    shows only its outermost frame)."""
    frames = []
    coro = task.get_coro() if isinstance(task, asyncio.Task) else None
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is not None:
            where = "/".join(frame.f_code.co_filename.rsplit("/", 2)[-2:])
            frames.append(f"{frame.f_code.co_qualname} ({where}:{frame.f_lineno})")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return " > ".join(frames) or repr(task)


def _retrieve(task: asyncio.Future) -> None:
    if not task.cancelled():
        task.exception()


def _session_alive(user_id: Any, key_id: Any) -> bool:
    from django.utils import timezone

    from coderd.users.models import APIKey, User

    if key_id is None:
        user = User.objects.filter(pk=user_id).first()
        return user is not None and user.is_active
    key = APIKey.objects.select_related("user").filter(pk=key_id).first()
    return key is not None and key.expires_at > timezone.now() and key.user.is_active


# --- publishing from synchronous code ---

# The event loop that serves websockets in this process, recorded by the consumers on connect.
# The in-memory channel layer keeps asyncio queues bound to that loop, and waking a waiter from
# another thread is only safe through `run_coroutine_threadsafe`.
_serving_loop: asyncio.AbstractEventLoop | None = None
_serving_thread: int | None = None
_next_try = 0.0


def register_serving_loop() -> None:
    """Called from a coroutine running on the loop that serves this process's websockets."""
    global _serving_loop, _serving_thread
    loop = asyncio.get_running_loop()
    if _serving_loop is not loop:
        _serving_loop, _serving_thread = loop, threading.get_ident()


async def _group_send(layer: Any, group: str, message: dict[str, Any]) -> None:
    async with asyncio.timeout(LAYER_TIMEOUT_SECONDS):
        await layer.group_send(group, message)


def publish(group: str, message: dict[str, Any]) -> None:
    """group_send from synchronous code (daemon threads, sync_to_async workers). Never raises, and
    never waits more than LAYER_TIMEOUT_SECONDS: a lost notice costs followers latency only."""
    global _next_try
    layer = get_channel_layer()
    if layer is None:
        return
    if outages.channel_layer.down and time.monotonic() < _next_try:
        return
    loop = _serving_loop
    try:
        if (
            loop is not None
            and loop.is_running()
            and not loop.is_closed()
            and threading.get_ident() != _serving_thread
        ):
            future = asyncio.run_coroutine_threadsafe(_group_send(layer, group, message), loop)
            try:
                future.result(timeout=LAYER_TIMEOUT_SECONDS + 1)
            except TimeoutError:
                future.cancel()
                raise
        else:
            async_to_sync(_group_send)(layer, group, message)
    except LAYER_ERRORS as exc:
        _next_try = time.monotonic() + PUBLISH_RETRY_SECONDS
        outages.channel_layer.failed(exc)
    except Exception:
        log.warning("could not publish to %s", group, exc_info=True)
    else:
        outages.channel_layer.recovered()


def close_sessions(user_id: Any = None, key_id: Any = None) -> None:
    """Close the open websockets of a user (suspended, deleted) or of one API key (revoked)."""
    if user_id is not None:
        publish(user_group(user_id), {"type": "session.revoked"})
    if key_id is not None:
        publish(api_key_group(key_id), {"type": "session.revoked"})
