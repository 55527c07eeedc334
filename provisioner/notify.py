"""Telling websocket followers that a job or a workspace changed, through the channel layer.

A message only says "look again": followers re-read the database from the last log id they sent,
so a lost, late or duplicated message can neither drop nor repeat a line.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

log = logging.getLogger(__name__)

# The event loop that serves websockets in this process, recorded by the consumers on connect.
# The in-memory channel layer keeps asyncio queues bound to that loop, and waking a waiter from
# another thread is only safe through `run_coroutine_threadsafe`.
_serving_loop: asyncio.AbstractEventLoop | None = None
_serving_thread: int | None = None
PUBLISH_TIMEOUT_SECONDS = 5.0


def job_group(job_id: Any) -> str:
    return f"provisioner-job-{job_id}"


def workspace_group(workspace_id: Any) -> str:
    return f"workspace-{workspace_id}"


def register_serving_loop() -> None:
    """Called from a coroutine running on the loop that serves this process's websockets."""
    global _serving_loop, _serving_thread
    loop = asyncio.get_running_loop()
    if _serving_loop is not loop:
        _serving_loop, _serving_thread = loop, threading.get_ident()


def publish(group: str, message: dict[str, Any]) -> None:
    """group_send from synchronous code (daemon threads, sync_to_async workers). Never raises."""
    layer = get_channel_layer()
    if layer is None:
        return
    loop = _serving_loop
    try:
        if (
            loop is not None
            and loop.is_running()
            and not loop.is_closed()
            and threading.get_ident() != _serving_thread
        ):
            future = asyncio.run_coroutine_threadsafe(layer.group_send(group, message), loop)
            future.result(timeout=PUBLISH_TIMEOUT_SECONDS)
        else:
            async_to_sync(layer.group_send)(group, message)
    except Exception:  # followers also poll the database: a lost notice costs latency only
        log.warning("could not publish to %s", group, exc_info=True)


def job_changed(job_id: Any, workspace_id: Any | None = None) -> None:
    publish(job_group(job_id), {"type": "job.changed", "job_id": str(job_id)})
    if workspace_id is not None:
        workspace_changed(workspace_id)


def workspace_changed(workspace_id: Any) -> None:
    publish(workspace_group(workspace_id), {"type": "workspace.changed", "workspace_id": str(workspace_id)})
