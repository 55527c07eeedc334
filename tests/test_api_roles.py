"""Every endpoint by every role: the status each one gets.

`member` owns the workspaces; `other` is another member; a member asking for someone else's
workspace (or someone else) gets 404, as if it did not exist.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.db import transaction

from tests.fixtures import ECHO_SOURCE, PASSWORD, APIClient, finish_job, make_echo_template, token_for

ROLES = ("anon", "member", "other", "auditor", "template_admin", "user_admin", "owner")


def row(name: str, method: str, path: str, body: Any, *statuses: int) -> tuple:
    assert len(statuses) == len(ROLES), name
    return name, method, path, body, dict(zip(ROLES, statuses, strict=True))


#      name                        method  path                                              body
#                                  anon member other auditor t-admin u-admin owner
TABLE = [
    row("buildinfo", "GET", "buildinfo", None, 200, 200, 200, 200, 200, 200, 200),
    row("me", "GET", "users/me", None, 401, 200, 200, 200, 200, 200, 200),
    row("list users", "GET", "users", None, 401, 403, 403, 200, 200, 200, 200),
    row(
        "create user",
        "POST",
        "users",
        {"email": "new@example.com", "username": "newbie", "password": PASSWORD},
        *(401, 403, 403, 403, 403, 201, 201),
    ),
    row("get member", "GET", "users/member", None, 401, 200, 404, 200, 200, 200, 200),
    row("suspend other", "PUT", "users/other-member/status/suspend", None, 401, 404, 403, 403, 403, 200, 200),
    row(
        "activate other", "PUT", "users/other-member/status/activate", None, 401, 404, 403, 403, 403, 200, 200
    ),
    row("keys for member", "POST", "users/member/keys", None, 401, 201, 404, 403, 403, 403, 201),
    row("organization", "GET", "organizations/default", None, 401, 200, 200, 200, 200, 200, 200),
    row("list templates", "GET", "organizations/default/templates", None, 401, 200, 200, 200, 200, 200, 200),
    row("get template", "GET", "templates/{template}", None, 401, 200, 200, 200, 200, 200, 200),
    row(
        "create version",
        "POST",
        "organizations/default/templateversions",
        {"provisioner": "echo", "source": ECHO_SOURCE},
        *(401, 403, 403, 403, 201, 403, 201),
    ),
    row("get version", "GET", "templateversions/{spare_version}", None, 401, 200, 200, 200, 200, 200, 200),
    row(
        "create template",
        "POST",
        "organizations/default/templates",
        {"name": "fresh", "template_version_id": "{spare_version}"},
        *(401, 403, 403, 403, 201, 403, 201),
    ),
    row(
        "set active version",
        "PATCH",
        "templates/{template}/versions",
        {"id": "{template_version}"},
        *(401, 403, 403, 403, 200, 403, 200),
    ),
    row("delete unused template", "DELETE", "templates/{unused}", None, 401, 403, 403, 403, 200, 403, 200),
    row("list workspaces", "GET", "workspaces", None, 401, 200, 200, 200, 200, 200, 200),
    row("get workspace", "GET", "workspaces/{ws}", None, 401, 200, 404, 200, 200, 404, 200),
    row("workspace by name", "GET", "users/member/workspace/ws", None, 401, 200, 404, 200, 200, 404, 200),
    row(
        "own workspace",
        "POST",
        "organizations/default/members/me/workspaces",
        {"template_id": "{template}", "name": "mine"},
        *(401, 201, 201, 201, 201, 201, 201),
    ),
    row(
        "workspace for member",
        "POST",
        "organizations/default/members/member/workspaces",
        {"template_id": "{template}", "name": "given"},
        *(401, 201, 404, 403, 403, 403, 201),
    ),
    row("list builds", "GET", "workspaces/{ws}/builds", None, 401, 200, 404, 200, 200, 404, 200),
    row(
        "start build",
        "POST",
        "workspaces/{ws}/builds",
        {"transition": "stop"},
        *(401, 201, 404, 403, 403, 404, 201),
    ),
    row("get build", "GET", "workspacebuilds/{build}", None, 401, 200, 404, 200, 200, 404, 200),
    row("build logs", "GET", "workspacebuilds/{build}/logs", None, 401, 200, 404, 200, 200, 404, 200),
    row(
        "cancel build",
        "PATCH",
        "workspacebuilds/{pending_build}/cancel",
        None,
        401,
        200,
        404,
        403,
        403,
        404,
        200,
    ),
    row(
        "version logs",
        "GET",
        "templateversions/{spare_version}/logs",
        None,
        401,
        200,
        200,
        200,
        200,
        200,
        200,
    ),
    row("jobs", "GET", "organizations/default/provisionerjobs", None, 401, 403, 403, 200, 200, 403, 200),
    row(
        "daemons", "GET", "organizations/default/provisionerdaemons", None, 401, 403, 403, 200, 200, 403, 200
    ),
    row("delete other", "DELETE", "users/other-member", None, 401, 404, 403, 403, 403, 200, 200),
]


@pytest.fixture
def world(owner, member, other_member, auditor, template_admin, user_admin, org) -> dict[str, Any]:
    from coderd.workspaces.services import create_template_version

    template = make_echo_template(owner, name="base")
    finish_job(template.active_version.job)  # its import done: it can be made active again
    unused = make_echo_template(owner, name="unused")
    spare = create_template_version(owner, org, "echo", ECHO_SOURCE, name="spare")
    ws = make_workspace_idle(member, template, "ws")
    busy = make_workspace_idle(member, template, "busy", finish=False)
    people = {
        "member": member,
        "other": other_member,
        "auditor": auditor,
        "template_admin": template_admin,
        "user_admin": user_admin,
        "owner": owner,
    }
    return {
        "people": people,
        "ids": {
            "template": template.id,
            "template_version": template.active_version_id,
            "unused": unused.id,
            "spare_version": spare.id,
            "ws": ws.id,
            "build": ws.latest_build_id,
            "pending_build": busy.latest_build_id,
        },
    }


def make_workspace_idle(user: Any, template: Any, name: str, finish: bool = True) -> Any:
    from coderd.workspaces.services import create_workspace

    ws = create_workspace(user, user, template, name)
    if finish:
        finish_job(ws.latest_build.job)
    return ws


def _fill(value: Any, ids: dict[str, Any]) -> Any:
    if isinstance(value, str):
        return value.format(**ids)
    if isinstance(value, dict):
        return {k: _fill(v, ids) for k, v in value.items()}
    return value


@pytest.mark.parametrize(("name", "method", "path", "body", "expected"), TABLE, ids=[r[0] for r in TABLE])
def test_it_answers_each_role_as_the_table_says(world, name, method, path, body, expected):
    ids = world["ids"]
    tokens = {role: token_for(person) for role, person in world["people"].items()}
    got, shapes = {}, {}
    for role in ROLES:
        # Each role asks against the same world: what one role's request changed is rolled back.
        with transaction.atomic():
            response = APIClient(tokens.get(role)).request(method, _fill(path, ids), json=_fill(body, ids))
            transaction.set_rollback(True)
        got[role] = response.status_code
        data = response.json()
        if response.status_code >= 400:
            shapes[role] = set(data) == {"message", "detail", "validations"} and bool(data["message"])
    assert got == expected
    assert all(shapes.values()), shapes
