"""Shared pytest fixtures (named people, API clients). Registered by tests/conftest.py.

People (all in the default organization, password `PASSWORD`):
    owner (first user, role owner), member, other_member, auditor, template_admin, user_admin.
Clients: `api_as(user)` / `anon_api` send requests through Django's test Client;
`asgi_api_as(user)` sends them through the ASGI handler (django.test.AsyncClient) from a sync test.
Factories: `echo_template(...)` -> Template, `workspace_for(user, ...)` -> Workspace with a pending
start build; `finish_job(job, error=...)` marks a job done as a daemon would (tests only).

The module-level functions (`make_*`, `token_for`, `finish_job`, `APIClient`) need no fixtures, so
other helpers' tests can import them directly.
"""

from __future__ import annotations

import contextlib
import json as jsonlib
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.test import AsyncClient, Client
from django.utils import timezone

PASSWORD = "correct-horse-battery"
API_PREFIX = "/api/v2/"

ECHO_SOURCE: dict[str, Any] = {
    "start": {"duration_ms": 10, "logs": ["starting"], "fail": False},
    "stop": {"duration_ms": 10, "logs": ["stopping"]},
    "delete": {"duration_ms": 10, "logs": ["deleting"]},
}


# --- plain helpers ---------------------------------------------------------------------------------


def token_for(user: Any, login_type: str = "token") -> str:
    from coderd.users.services import issue_api_key

    return issue_api_key(user, login_type)[1]


def make_first_user(username: str = "owner") -> Any:
    from coderd.users.services import create_first_user

    return create_first_user(f"{username}@example.com", username, PASSWORD)[0]


def make_user(actor: Any, username: str, roles: tuple[str, ...] = ()) -> Any:
    from coderd.users.services import create_user

    return create_user(actor, f"{username}@example.com", username, PASSWORD, roles=roles)


def make_echo_template(
    actor: Any,
    name: str = "echo",
    source: dict[str, Any] | None = None,
    organization: Any = None,
    provisioner: str = "echo",
) -> Any:
    from coderd.users.services import default_organization
    from coderd.workspaces.services import create_template, create_template_version

    org = organization or default_organization()
    version = create_template_version(
        actor, org, provisioner, ECHO_SOURCE if source is None else source, name=f"{name}-v1"
    )
    return create_template(actor, org, name, version)


def make_workspace(user: Any, template: Any, name: str = "ws", actor: Any = None) -> Any:
    from coderd.workspaces.services import create_workspace

    return create_workspace(actor or user, user, template, name)


def finish_job(job: Any, error: str = "", now: datetime | None = None) -> Any:
    """Mark a job as run to its end, as a daemon would, and tell the workspace services."""
    from coderd.workspaces.services import on_build_job_finished
    from provisioner.models import JobType, ProvisionerJob

    now = now or timezone.now()
    ProvisionerJob.objects.filter(pk=job.pk).update(
        started_at=job.started_at or now, completed_at=now, updated_at=now, error=error
    )
    job.refresh_from_db()
    if job.type == JobType.WORKSPACE_BUILD:
        on_build_job_finished(job, now)
    return job


class APIClient:
    """JSON requests with a session token, through Django's test Client or (asgi=True) AsyncClient.

    Paths without a leading slash are relative to /api/v2/. `json=` sends a JSON body; `body=`
    sends raw bytes (for malformed-JSON and too-large tests). Returns Django's test response.
    """

    def __init__(self, token: str | None = None, *, asgi: bool = False) -> None:
        self.token = token
        self.asgi = asgi
        self._client = AsyncClient() if asgi else Client()

    def headers(self) -> dict[str, str]:
        return {"Coder-Session-Token": self.token} if self.token else {}

    def request(
        self,
        method: str,
        path: str,
        json: Any = None,
        body: bytes | str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        url = path if path.startswith("/") else API_PREFIX + path
        if body is None and json is not None:
            body = jsonlib.dumps(json)
        all_headers = {**self.headers(), **(headers or {})}
        kwargs: dict[str, Any] = {"headers": all_headers}
        if body is not None:
            kwargs.update(data=body, content_type="application/json")
        if self.asgi:
            # Run from this (sync) thread, the sync views run back on it and share the test's
            # database transaction.
            async def go() -> Any:
                return await self._client.generic(method, url, **kwargs)

            return async_to_sync(go)()
        return self._client.generic(method, url, **kwargs)

    def get(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw)

    def post(self, path: str, json: Any = None, **kw: Any) -> Any:
        return self.request("POST", path, json=json, **kw)

    def put(self, path: str, json: Any = None, **kw: Any) -> Any:
        return self.request("PUT", path, json=json, **kw)

    def patch(self, path: str, json: Any = None, **kw: Any) -> Any:
        return self.request("PATCH", path, json=json, **kw)

    def delete(self, path: str, **kw: Any) -> Any:
        return self.request("DELETE", path, **kw)


# --- fixtures ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def metrics_installed(**build: Any) -> Iterator[Any]:
    """A fresh metrics state (`metrics.runtime.build_state(**build)`) as this process's, the previous
    one put back afterwards: every request, socket and scrape inside sees only this one."""
    from metrics import runtime

    fresh = runtime.build_state(**build)
    previous = runtime._state
    runtime.install(fresh)
    try:
        yield fresh
    finally:
        runtime.install(previous)


@pytest.fixture(autouse=True)
def _no_connection_outlives_its_test() -> Iterator[None]:
    """Close the database connections that threads other than the test's keep between requests.

    Connections persist (CONN_MAX_AGE), and sync code reached from async tests runs in asgiref's
    shared thread or in the API's request threads, not in the test's. pytest-django closes only the
    test's own thread's connection, so a later test without database access would meet the earlier
    test's connection there (channels health-checks it on every websocket event: "Database access
    not allowed"), and on PostgreSQL it would hold the test database open.
    """
    yield
    import sys

    from asgiref.sync import SyncToAsync
    from django.db import connections

    SyncToAsync.single_thread_executor.submit(connections.close_all).result()
    asgi = sys.modules.get("coderd.asgi")  # only if a test built the application
    if asgi is not None:
        asgi.http_app.threads.close()


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings: Any) -> None:
    # PBKDF2's default cost makes each user half a second; these tests are not about hashing.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def owner(db: Any) -> Any:
    return make_first_user("owner")


@pytest.fixture
def org(owner: Any) -> Any:
    from coderd.users.services import default_organization

    return default_organization()


@pytest.fixture
def member(owner: Any) -> Any:
    return make_user(owner, "member")


@pytest.fixture
def other_member(owner: Any) -> Any:
    return make_user(owner, "other-member")


@pytest.fixture
def auditor(owner: Any) -> Any:
    return make_user(owner, "auditor", roles=("auditor",))


@pytest.fixture
def template_admin(owner: Any) -> Any:
    return make_user(owner, "template-admin", roles=("template-admin",))


@pytest.fixture
def user_admin(owner: Any) -> Any:
    return make_user(owner, "user-admin", roles=("user-admin",))


@pytest.fixture
def owner_token(owner: Any) -> str:
    return token_for(owner)


@pytest.fixture
def member_token(member: Any) -> str:
    return token_for(member)


@pytest.fixture
def api_as(db: Any) -> Callable[[Any], APIClient]:
    """api_as(user) -> a client sending a fresh token of that user."""
    return lambda user: APIClient(token_for(user))


@pytest.fixture
def asgi_api_as(db: Any) -> Callable[[Any], APIClient]:
    """asgi_api_as(user) -> the same, through the ASGI handler."""
    return lambda user: APIClient(token_for(user), asgi=True)


@pytest.fixture
def anon_api(db: Any) -> APIClient:
    return APIClient()


@pytest.fixture
def echo_template(owner: Any) -> Callable[..., Any]:
    """echo_template(name="echo", source=None, actor=owner) -> a Template with a pending import."""

    def factory(
        name: str = "echo", source: dict[str, Any] | None = None, actor: Any = None, **kw: Any
    ) -> Any:
        return make_echo_template(actor or owner, name=name, source=source, **kw)

    return factory


@pytest.fixture
def workspace_for(echo_template: Callable[..., Any]) -> Callable[..., Any]:
    """workspace_for(user, template=None, name="ws") -> a Workspace with a pending start build."""
    templates: dict[str, Any] = {}

    def factory(user: Any, template: Any = None, name: str = "ws", actor: Any = None) -> Any:
        if template is None:
            if "default" not in templates:
                templates["default"] = echo_template()
            template = templates["default"]
        return make_workspace(user, template, name=name, actor=actor)

    return factory
