"""Websockets: following a job's logs, watching a workspace, and the external daemons' serve socket.

Followers join a channel-layer group per job (or workspace) before reading the backlog, then re-read
the database from the last id they sent whenever told something changed (and every second anyway,
in case a notice was lost): no gaps, no duplicates, and it works across processes with Redis. Their
base (coderd.websockets.Consumer) keeps them going through a Redis outage and closes them when their
session is revoked.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import uuid
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from django.conf import settings
from django.db import DatabaseError
from django.utils import timezone

from coderd import outages
from coderd.websockets import TRY_AGAIN_LATER, Consumer
from coderd.ws_notfound import REFUSED_BAD_REQUEST, REFUSED_NOT_FOUND, REFUSED_UNAUTHENTICATED
from provisioner import notify, queue
from provisioner.execution import GONE, HEARTBEAT_INTERVAL, LogLine
from provisioner.runners import KNOWN_PROVISIONERS

log = logging.getLogger(__name__)

# Followers re-read the database this often even without a notice.
FALLBACK_POLL_SECONDS = 1.0
PSK_HEADER = b"coder-provisioner-daemon-psk"
MAX_LOG_LINES_PER_MESSAGE = 1000
LOG_PAGE = 500


def _headers(scope: dict[str, Any]) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


def _query(scope: dict[str, Any]) -> dict[str, list[str]]:
    return parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)


def token_from_scope(scope: dict[str, Any]) -> str | None:
    """The session token, from the same carriers as the HTTP API, plus a query parameter (browsers
    cannot set headers on a websocket)."""
    headers = _headers(scope)
    if headers.get("coder-session-token"):
        return headers["coder-session-token"].strip()
    scheme, _, value = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if "cookie" in headers:
        cookie = SimpleCookie()
        try:
            cookie.load(headers["cookie"])
        except Exception:
            cookie = SimpleCookie()
        if "coder_session_token" in cookie:
            return cookie["coder_session_token"].value
    values = _query(scope).get("coder_session_token")
    return values[0] if values and values[0] else None


def _cookie(scope: dict[str, Any], name: str) -> str | None:
    raw = _headers(scope).get("cookie")
    if not raw:
        return None
    cookie = SimpleCookie()
    try:
        cookie.load(raw)
    except Exception:
        return None
    return cookie[name].value if name in cookie else None


def session_user(scope: dict[str, Any]) -> Any:
    """The user of the admin's Django session cookie, or None: the admin's pages follow logs over
    these sockets with the browser's own login. Safe as a carrier because every websocket passes the
    Origin check first (coderd.ws_notfound.allowed_hosts_origin_check), so another site's page cannot
    open one with the operator's cookie."""
    from importlib import import_module

    from django.contrib.auth import get_user

    key = _cookie(scope, settings.SESSION_COOKIE_NAME)
    if not key:
        return None

    class _Request:  # what django.contrib.auth.get_user reads: the session, and its hash check
        session = import_module(settings.SESSION_ENGINE).SessionStore(key)

    user = get_user(_Request())
    return user if user.is_authenticated and user.is_active else None


@database_sync_to_async
def _auth_for_scope(scope: dict[str, Any]) -> tuple[Any, Any]:
    """(user, API key) of the socket: the key its token names, or (user, None) for the admin's
    session cookie; (None, None) when neither is valid."""
    from coderd.users.services import api_key_for_token

    token = token_from_scope(scope)
    if token:
        key = api_key_for_token(token, timezone.now())
        return (key.user, key) if key else (None, None)
    return session_user(scope), None


class JsonConsumer(Consumer):
    """Bad frames (binary, not JSON) are answered, never a crash."""

    async def receive(
        self, text_data: str | None = None, bytes_data: bytes | None = None, **kwargs: Any
    ) -> None:
        await self.receive_json(await self.decode_json(text_data) if text_data is not None else None)

    async def decode_json(self, text_data: str) -> Any:
        try:
            return json.loads(text_data)
        except ValueError:
            return None


def route_uuid(scope: dict[str, Any], name: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(scope["url_route"]["kwargs"][name]))
    except (KeyError, ValueError):
        return None


def _after_param(scope: dict[str, Any]) -> int | None:
    """`?after=<log id>` as the HTTP logs endpoint takes it (a whole number, 0 to 2**63-1); None if bad."""
    raw = (_query(scope).get("after") or ["0"])[0]
    if not raw.isascii() or not raw.isdigit():
        return None
    after = int(raw)
    return after if after < 2**63 else None


class JobLogsConsumer(JsonConsumer):
    """A job's log lines, backlog first, then live; closed normally once the job ended and all was sent."""

    not_found = "Not found."

    async def connect(self) -> None:
        self.finished = True
        # Refused before accept: where the server can (uvicorn), the client gets the status the close
        # code names, with the API's JSON error (coderd.ws_notfound); elsewhere a plain 403.
        after = _after_param(self.scope)
        if after is None:
            await self.close(code=REFUSED_BAD_REQUEST, reason="Query parameter 'after' must be a log id.")
            return
        user, key = await _auth_for_scope(self.scope)
        if user is None:
            await self.close(code=REFUSED_UNAUTHENTICATED)
            return
        job_id = await database_sync_to_async(self.find_job)(user)
        if job_id is None:
            await self.close(code=REFUSED_NOT_FOUND, reason=self.not_found)
            return
        self.job_id, self.after, self.finished = job_id, after, False
        self.lock = asyncio.Lock()
        await self.join(notify.job_group(job_id))
        await self.follow_session(user, key)
        await self.accept()
        await self.catch_up()
        if not self.finished:
            self.spawn(self._poll())

    def find_job(self, user: Any) -> Any:
        raise NotImplementedError

    async def _poll(self) -> None:
        while not self.finished:
            await asyncio.sleep(FALLBACK_POLL_SECONDS)
            await self.catch_up()

    async def job_changed(self, event: dict[str, Any]) -> None:
        await self.catch_up()

    async def catch_up(self) -> None:
        async with self.lock:
            if self.finished:
                return
            while True:  # in pages, so that a long backlog is never all in memory at once
                done, entries = await database_sync_to_async(queue.logs_after)(
                    self.job_id, self.after, LOG_PAGE
                )
                for entry in entries:
                    await self.send_json(entry)
                    self.after = entry["id"]
                if len(entries) < LOG_PAGE:
                    break
            if done:
                self.finished = True
                await self.close(code=1000)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        pass  # followers only listen


class BuildLogsConsumer(JobLogsConsumer):
    """/api/v2/workspacebuilds/{workspacebuild}/logs?follow"""

    not_found = "Workspace build not found."

    def find_job(self, user: Any) -> Any:
        from coderd.users.auth import can_read_workspace
        from coderd.workspaces.models import WorkspaceBuild

        build = (
            WorkspaceBuild.objects.select_related("workspace")
            .filter(id=route_uuid(self.scope, "workspacebuild"))
            .first()
        )
        if build is None or not can_read_workspace(user, build.workspace):
            return None
        return build.job_id


class TemplateVersionLogsConsumer(JobLogsConsumer):
    """/api/v2/templateversions/{templateversion}/logs?follow"""

    not_found = "Template version not found."

    def find_job(self, user: Any) -> Any:
        from coderd.users.auth import is_owner
        from coderd.users.models import OrganizationMember
        from coderd.workspaces.models import TemplateVersion

        version = TemplateVersion.objects.filter(id=route_uuid(self.scope, "templateversion")).first()
        if version is None:
            return None
        member = OrganizationMember.objects.filter(
            organization_id=version.organization_id, user=user
        ).exists()
        return version.job_id if member or is_owner(user) else None


def workspace_json(workspace_id: Any) -> dict[str, Any] | None:
    """The workspace exactly as GET /api/v2/workspaces/{workspace} returns it."""
    from coderd.workspaces.models import Workspace
    from coderd.workspaces.schemas import WORKSPACE_RELATED, WorkspaceOut
    from coderd.workspaces.schemas import workspace_json as api_workspace_json

    workspace = Workspace.objects.select_related(*WORKSPACE_RELATED).filter(id=workspace_id).first()
    if workspace is None:
        return None
    return WorkspaceOut.model_validate(api_workspace_json(workspace)).model_dump(mode="json")


class WorkspaceWatchConsumer(JsonConsumer):
    """/api/v2/workspaces/{workspace}/watch-ws: the workspace as JSON, again each time it changes."""

    async def connect(self) -> None:
        user, key = await _auth_for_scope(self.scope)
        if user is None:
            await self.close(code=REFUSED_UNAUTHENTICATED)
            return
        self.workspace_id = route_uuid(self.scope, "workspace")
        if self.workspace_id is None or not await database_sync_to_async(self._visible)(user):
            await self.close(code=REFUSED_NOT_FOUND, reason="Workspace not found.")
            return
        self.last: dict[str, Any] | None = None
        self.lock = asyncio.Lock()
        await self.join(notify.workspace_group(self.workspace_id))
        await self.follow_session(user, key)
        await self.accept()
        await self.push()
        self.spawn(self._poll())

    def _visible(self, user: Any) -> bool:
        from coderd.users.auth import can_read_workspace
        from coderd.workspaces.models import Workspace

        workspace = Workspace.objects.filter(id=self.workspace_id).first()
        return workspace is not None and can_read_workspace(user, workspace)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(FALLBACK_POLL_SECONDS)
            await self.push()

    async def workspace_changed(self, event: dict[str, Any]) -> None:
        await self.push()

    async def job_changed(self, event: dict[str, Any]) -> None:
        await self.push()

    async def push(self) -> None:
        async with self.lock:
            data = await database_sync_to_async(workspace_json)(self.workspace_id)
            if data is not None and data != self.last:
                self.last = data
                await self.send_json(data)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        pass


class ProvisionerDaemonServeConsumer(JsonConsumer):
    """/api/v2/organizations/{organization}/provisionerdaemons/serve: an external daemon's link.

    The server does the claiming and the writing; the daemon runs the provisioner. Requests and
    replies (JSON, one per message): hello -> welcome; acquire -> job | no_job; heartbeat ->
    heartbeat {state: running | canceled | gone | idle}; logs -> (nothing); complete -> completed
    {status}. A cancel reaches the daemon as the state in the next heartbeat reply (it beats every
    ~0.2 s while running). If the socket drops with a job in flight, the job is failed at once.
    """

    async def connect(self) -> None:
        self.daemon_id: Any = None
        self.job_id: Any = None
        self.job_spec: Any = None
        self.last_beat = None
        self.name = ""
        expected = settings.PROVISIONER_DAEMON_PSK
        given = _headers(self.scope).get(PSK_HEADER.decode(), "")
        if not expected or not given or not hmac.compare_digest(given.encode(), expected.encode()):
            # The operator of a daemon that keeps retrying looks here first (the key is never logged).
            why = (
                "coderd has no CODER_PROVISIONER_DAEMON_PSK"
                if not expected
                else "no key"
                if not given
                else "wrong key"
            )
            log.warning("refused an external provisioner daemon from %s: %s", self._peer(), why)
            await self.close(
                code=REFUSED_UNAUTHENTICATED, reason="A valid provisioner daemon key is required."
            )
            return
        self.organization_id = await database_sync_to_async(self._organization)()
        if self.organization_id is None:
            organization = self.scope["url_route"]["kwargs"]["organization"]
            log.warning(
                "refused an external provisioner daemon from %s: no organization %r",
                self._peer(),
                organization,
            )
            await self.close(code=REFUSED_NOT_FOUND, reason="Organization not found.")
            return
        await self.accept()

    def _peer(self) -> str:
        client = self.scope.get("client") or ("?", 0)
        return f"{client[0]}:{client[1]}"

    def _organization(self) -> Any:
        from coderd.errors import APIError
        from coderd.users.services import organization_by_ref

        try:
            return organization_by_ref(self.scope["url_route"]["kwargs"]["organization"]).id
        except APIError:
            return None

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        kind = content.get("type") if isinstance(content, dict) else None
        handler = getattr(self, f"on_{kind}", None) if isinstance(kind, str) and kind.isidentifier() else None
        if handler is None:
            await self.send_json({"type": "error", "message": f"unknown message type {kind!r}"})
            return
        if kind != "hello" and self.daemon_id is None:
            await self.send_json({"type": "error", "message": "say hello first"})
            return
        try:
            await handler(content)
        except Exception as exc:
            if isinstance(exc, DatabaseError) and outages.note_database_error(exc):
                # The daemon reconnects and says hello again once the database is back.
                await self.close(code=TRY_AGAIN_LATER, reason="The database is unavailable; reconnect later.")
                return
            # Fail the job in flight now (disconnect()), as for a dropped connection.
            log.exception("external daemon %s: %s message failed; closing its connection", self.name, kind)
            await self.close(code=1011)  # and disconnect() fails the job in flight

    async def on_hello(self, content: dict[str, Any]) -> None:
        name = str(content.get("name") or "")[:128] or f"external-{uuid.uuid4().hex[:8]}"
        wanted = content.get("provisioners") or list(KNOWN_PROVISIONERS)
        provisioners = [p for p in wanted if p in KNOWN_PROVISIONERS] if isinstance(wanted, list) else []
        if not provisioners:
            await self.send_json({"type": "error", "message": "no known provisioner in hello"})
            return
        row = await database_sync_to_async(queue.register_daemon)(
            name,
            provisioners,
            timezone.now(),
            external=True,
            organization_id=self.organization_id,
            version=str(content.get("version") or "")[:64],
        )
        # Not counted in coderd's num_daemons: the external daemon exports its own (as Coder's
        # provisionerd does), so a sum over every pod counts each daemon once.
        self.daemon_id, self.name, self.provisioners = row.id, name, provisioners
        log.info("external daemon %s connected from %s (%s)", name, self._peer(), ",".join(provisioners))
        await self.send_json({"type": "welcome", "daemon_id": str(row.id)})

    async def on_acquire(self, content: dict[str, Any]) -> None:
        if self.job_id is not None:
            await self.send_json({"type": "error", "message": "a job is already running"})
            return
        spec = await database_sync_to_async(self._claim)()
        if spec is None:
            await self.send_json({"type": "no_job"})
        else:
            self.job_id, self.job_spec = spec.job_id, spec
            log.info("external daemon %s: running %s", self.name, spec.describe())
            await self.send_json({"type": "job", "job": spec.to_dict()})

    def _claim(self) -> Any:
        now = timezone.now()
        job = queue.claim(self.daemon_id, self.provisioners, now)
        if job is None:
            self._seen(now)
            return None
        self.last_beat = now
        spec = queue.job_spec(job)
        # The claim is made here, in coderd: its queue wait is coderd's, as in Coder.
        from provisioner.daemon import process_observer

        queue.report_acquired(process_observer(), job, spec, now)
        return spec

    def _seen(self, now: Any) -> None:
        if self.last_beat is None or (now - self.last_beat).total_seconds() >= HEARTBEAT_INTERVAL:
            queue.daemon_seen(self.daemon_id, now)
            self.last_beat = now

    async def on_heartbeat(self, content: dict[str, Any]) -> None:
        job_id = content.get("job_id")
        if self.job_id is None or str(job_id) != str(self.job_id):
            await database_sync_to_async(self._seen)(timezone.now())
            await self.send_json({"type": "heartbeat", "state": "idle"})
            return
        state = await database_sync_to_async(self._job_heartbeat)()
        if state == GONE:
            self.job_id = self.job_spec = None
        await self.send_json({"type": "heartbeat", "job_id": str(job_id), "state": state})

    def _job_heartbeat(self) -> str:
        now = timezone.now()
        beat = self.last_beat is None or (now - self.last_beat).total_seconds() >= HEARTBEAT_INTERVAL
        state = queue.heartbeat(self.job_id, self.daemon_id, now, beat=beat)
        if beat:
            self.last_beat = now
        return state

    async def on_logs(self, content: dict[str, Any]) -> None:
        lines = content.get("logs")
        if (
            self.job_id is None
            or str(content.get("job_id")) != str(self.job_id)
            or not isinstance(lines, list)
        ):
            return
        parsed = [LogLine.from_dict(x) for x in lines[:MAX_LOG_LINES_PER_MESSAGE] if isinstance(x, dict)]
        await database_sync_to_async(queue.append_logs)(self.job_id, parsed)

    async def on_complete(self, content: dict[str, Any]) -> None:
        job_id = content.get("job_id")
        if self.job_id is None or str(job_id) != str(self.job_id):
            await self.send_json({"type": "completed", "job_id": str(job_id), "status": None})
            return
        error = str(content.get("error") or "")
        status = await database_sync_to_async(queue.complete)(
            self.job_id, timezone.now(), error=error, daemon_id=self.daemon_id
        )
        what = self.job_spec.describe() if self.job_spec else f"job {self.job_id}"
        if status == "failed":
            log.warning("external daemon %s: failed: %s: %s", self.name, what, error)
        else:
            log.info("external daemon %s: %s: %s", self.name, status or "already ended", what)
        self.job_id = self.job_spec = None
        await self.send_json({"type": "completed", "job_id": str(job_id), "status": status})

    async def disconnect(self, code: int) -> None:
        if self.daemon_id is None:
            return
        await database_sync_to_async(self._gone)()

    def _gone(self) -> None:
        if self.job_id is not None:
            what = self.job_spec.describe() if self.job_spec else f"job {self.job_id}"
            log.warning(
                "external daemon %s disconnected while running %s: the job is failed", self.name, what
            )
            queue.fail(
                self.job_id,
                timezone.now(),
                f"The external provisioner daemon {self.name!r} disconnected while running the job.",
                daemon_id=self.daemon_id,
            )
            self.job_id = self.job_spec = None
        else:
            log.info("external daemon %s disconnected", self.name)
        queue.daemon_gone(self.daemon_id)
