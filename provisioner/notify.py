"""Telling websocket followers that a job or a workspace changed, through the channel layer.

A message only says "look again": followers re-read the database from the last log id they sent,
so a lost, late or duplicated message can neither drop nor repeat a line. Publishing (bounded in
time, quiet while Redis is away) is coderd.websockets.publish.
"""

from __future__ import annotations

from typing import Any

from coderd.websockets import publish, register_serving_loop

__all__ = [
    "job_changed",
    "job_group",
    "publish",
    "register_serving_loop",
    "workspace_changed",
    "workspace_group",
]


def job_group(job_id: Any) -> str:
    return f"provisioner-job-{job_id}"


def workspace_group(workspace_id: Any) -> str:
    return f"workspace-{workspace_id}"


def job_changed(job_id: Any, workspace_id: Any | None = None) -> None:
    publish(job_group(job_id), {"type": "job.changed", "job_id": str(job_id)})
    if workspace_id is not None:
        workspace_changed(workspace_id)


def workspace_changed(workspace_id: Any) -> None:
    publish(workspace_group(workspace_id), {"type": "workspace.changed", "workspace_id": str(workspace_id)})
