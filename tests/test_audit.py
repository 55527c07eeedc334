"""The audit trail through the API: each change writes one row (who, what, which object, from where,
with what outcome), refusals of a found object are rows with their status, and GET /api/v2/audit
reads it back in Coder's shape, for owners and auditors only."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from coderd.audit.models import AuditLog
from coderd.users.models import User, UserStatus
from coderd.workspaces.models import Template, TemplateVersion, Workspace
from tests.fixtures import ECHO_SOURCE, PASSWORD, APIClient, finish_job, token_for

pytestmark = pytest.mark.django_db

IP = "203.0.113.7"
AGENT = "coder/v2.18 (linux/amd64)"


def client_for(user: Any = None) -> APIClient:
    """A client from IP with AGENT, as a person at a terminal elsewhere."""
    api = APIClient(token_for(user) if user is not None else None)
    api._client = Client(REMOTE_ADDR=IP, HTTP_USER_AGENT=AGENT)
    return api


def only_row(**match: Any) -> AuditLog:
    rows = list(AuditLog.objects.filter(**match))
    assert len(rows) == 1, rows
    return rows[0]


def assert_row(row: AuditLog, user: Any, action: str, resource_type: str, resource: Any, status: int) -> None:
    assert (row.user_id, row.action, row.resource_type, row.status_code) == (
        user.pk,
        action,
        resource_type,
        status,
    )
    assert str(row.resource_id) == str(resource)
    assert (row.ip, row.user_agent) == (IP, AGENT)
    assert row.request_id is not None


@pytest.fixture
def trail_from_now(owner: Any, member: Any, auditor: Any) -> None:
    """The people exist; the rows their set-up wrote are not what the tests look at."""
    AuditLog.objects.all().delete()


# --- users --------------------------------------------------------------------------------------


def test_it_records_each_change_to_a_user(owner: Any, trail_from_now: None) -> None:
    api = client_for(owner)
    AuditLog.objects.all().delete()  # the token client_for issued

    r = api.post("users", {"email": "ada@example.com", "username": "ada", "password": PASSWORD})
    assert r.status_code == 201, r.json()
    ada = User.objects.get(username="ada")
    row = only_row(action="create")
    assert_row(row, owner, "create", "user", ada.pk, 201)
    assert row.resource_target == "ada"
    assert row.diff["username"] == {"old": None, "new": "ada", "secret": False}
    assert row.diff["password"] == {"old": "", "new": "", "secret": True}  # never the hash

    assert api.put("users/ada/status/suspend").status_code == 200
    row = only_row(action="write")
    assert_row(row, owner, "write", "user", ada.pk, 200)
    assert row.diff == {"status": {"old": "active", "new": "suspended", "secret": False}}

    assert api.put("users/ada/status/activate").status_code == 200
    assert AuditLog.objects.filter(action="write").latest("time").diff["status"]["new"] == "active"

    assert api.put("users/ada/roles", {"roles": ["auditor"]}).status_code == 200
    row = AuditLog.objects.filter(action="write").latest("time")
    assert row.diff == {"roles": {"old": [], "new": ["auditor"], "secret": False}}

    assert api.delete("users/ada").status_code == 200
    row = only_row(action="delete")
    assert_row(row, owner, "delete", "user", ada.pk, 200)
    assert row.resource_target == "ada"
    assert row.diff["deleted"] == {"old": False, "new": True, "secret": False}
    assert AuditLog.objects.count() == 5


def test_it_records_a_refused_change_to_a_found_user_with_its_status(
    owner: Any, user_admin: Any, member: Any, trail_from_now: None
) -> None:
    api = client_for(user_admin)
    AuditLog.objects.all().delete()
    r = api.put("users/owner/status/suspend")
    assert r.status_code == 403
    row = only_row()
    assert_row(row, user_admin, "write", "user", owner.pk, 403)
    assert row.diff == {}
    owner.refresh_from_db()
    assert owner.status == UserStatus.ACTIVE

    assert api.put(f"users/{user_admin.username}/status/suspend").status_code == 400  # themselves
    assert AuditLog.objects.filter(status_code=400, resource_id=user_admin.pk).count() == 1


def test_it_records_nothing_when_no_object_was_found_or_made(owner: Any, trail_from_now: None) -> None:
    # As Coder: a row needs a resource. A create refused by validation and an unknown user have none.
    api = client_for(owner)
    AuditLog.objects.all().delete()
    assert api.post("users", {"email": "bad", "username": "-", "password": "x"}).status_code == 400
    assert api.put("users/nobody/status/suspend").status_code == 404
    assert AuditLog.objects.count() == 0


# --- tokens and sessions --------------------------------------------------------------------------


def test_it_records_tokens_logins_and_logouts(owner: Any, member: Any, trail_from_now: None) -> None:
    api = client_for(member)
    AuditLog.objects.all().delete()
    r = api.post("users/me/keys/tokens", {"token_name": "ci"})
    assert r.status_code == 201
    row = only_row(action="create")
    assert_row(row, member, "create", "api_key", member.pk, 201)  # Coder: a key's id is its user's
    assert row.resource_target == "ci"

    anon = client_for()
    r = anon.post("users/login", {"email": member.email, "password": PASSWORD})
    assert r.status_code == 201
    row = only_row(action="login")
    assert_row(row, member, "login", "api_key", member.pk, 201)
    assert AuditLog.objects.filter(action="create").count() == 1  # the session key is the login

    assert anon.post("users/login", {"email": member.email, "password": "wrong"}).status_code == 401
    failed = only_row(action="login", status_code=401)
    assert_row(failed, member, "login", "api_key", member.pk, 401)
    # An email that names nobody is not recorded (Coder: no user, no row).
    assert anon.post("users/login", {"email": "nobody@example.com", "password": "x"}).status_code == 401
    assert AuditLog.objects.filter(action="login").count() == 2

    key_id = r.json()["session_token"].split("-")[0]
    assert api.delete(f"users/me/keys/{key_id}").status_code == 204
    revoked = only_row(action="delete")
    assert_row(revoked, member, "delete", "api_key", member.pk, 204)
    assert revoked.diff["login_type"] == {"old": "password", "new": None, "secret": False}

    session = client_for()
    session.token = r_token = anon.post("users/login", {"email": member.email, "password": PASSWORD}).json()[
        "session_token"
    ]
    assert r_token
    assert session.post("users/logout").status_code == 200
    assert_row(only_row(action="logout"), member, "logout", "api_key", member.pk, 200)


# --- templates and versions -----------------------------------------------------------------------


def test_it_records_template_and_version_changes(owner: Any, trail_from_now: None) -> None:
    api = client_for(owner)
    AuditLog.objects.all().delete()
    r = api.post(
        "organizations/default/templateversions", {"name": "v1", "provisioner": "echo", "source": ECHO_SOURCE}
    )
    assert r.status_code == 201
    v1 = TemplateVersion.objects.get(pk=r.json()["id"])
    row = only_row(resource_type="template_version")
    assert_row(row, owner, "create", "template_version", v1.pk, 201)
    assert (row.resource_target, row.organization_id) == ("v1", v1.organization_id)

    r = api.post("organizations/default/templates", {"name": "docker", "template_version_id": str(v1.pk)})
    assert r.status_code == 201
    template = Template.objects.get(name="docker")
    assert_row(only_row(resource_type="template"), owner, "create", "template", template.pk, 201)

    r = api.post(
        "organizations/default/templateversions",
        {"name": "v2", "provisioner": "echo", "source": ECHO_SOURCE, "template_id": str(template.pk)},
    )
    v2 = TemplateVersion.objects.get(pk=r.json()["id"])
    finish_job(v2.job)
    assert api.patch(f"templates/{template.pk}/versions", {"id": str(v2.pk)}).status_code == 200
    row = only_row(resource_type="template", action="write")
    assert row.diff == {"active_version_id": {"old": str(v1.pk), "new": str(v2.pk), "secret": False}}

    r = api.post(
        "organizations/default/templateversions",
        {"name": "v3", "provisioner": "echo", "source": ECHO_SOURCE, "template_id": str(template.pk)},
    )
    v3 = TemplateVersion.objects.get(pk=r.json()["id"])
    assert api.patch(f"templateversions/{v3.pk}/cancel").status_code == 200
    row = only_row(resource_type="template_version", action="write")
    assert_row(row, owner, "write", "template_version", v3.pk, 200)
    assert row.diff["canceled_at"]["old"] is None and row.diff["canceled_at"]["new"]

    assert api.delete(f"templates/{template.pk}").status_code == 200
    assert_row(only_row(action="delete"), owner, "delete", "template", template.pk, 200)


# --- workspaces and builds ------------------------------------------------------------------------


def test_it_records_a_workspaces_create_start_stop_delete_and_cancel(
    owner: Any, member: Any, echo_template: Any, trail_from_now: None
) -> None:
    template = echo_template()
    finish_job(template.active_version.job)
    api = client_for(member)
    AuditLog.objects.all().delete()

    r = api.post(
        "organizations/default/members/me/workspaces", {"name": "dev", "template_id": str(template.pk)}
    )
    assert r.status_code == 201
    ws = Workspace.objects.get(name="dev")
    row = only_row(resource_type="workspace")
    assert_row(row, member, "create", "workspace", ws.pk, 201)
    assert (row.resource_target, row.organization_id) == ("dev", ws.organization_id)

    finish_job(ws.latest_build.job)
    r = api.post(f"workspaces/{ws.pk}/builds", {"transition": "stop"})
    assert r.status_code == 201
    row = only_row(action="stop")
    assert_row(row, member, "stop", "workspace_build", r.json()["id"], 201)
    assert row.resource_target == "dev"
    assert row.additional_fields == {
        "workspace_name": "dev",
        "workspace_id": str(ws.pk),
        "workspace_owner": "member",
        "build_number": "2",
        "build_reason": "initiator",
    }

    # A build while one is in flight: refused, recorded against the workspace with 409.
    assert api.post(f"workspaces/{ws.pk}/builds", {"transition": "start"}).status_code == 409
    assert_row(only_row(action="start"), member, "start", "workspace", ws.pk, 409)

    assert api.patch(f"workspacebuilds/{r.json()['id']}/cancel").status_code == 200
    row = only_row(action="write", resource_type="workspace_build")
    assert_row(row, member, "write", "workspace_build", r.json()["id"], 200)
    assert row.diff["canceled_at"]["new"]

    r = api.post(f"workspaces/{ws.pk}/builds", {"transition": "start"})
    assert r.status_code == 201
    assert_row(
        only_row(action="start", status_code=201), member, "start", "workspace_build", r.json()["id"], 201
    )
    finish_job(ws.builds.get(pk=r.json()["id"]).job)
    r = api.post(f"workspaces/{ws.pk}/builds", {"transition": "delete"})
    assert_row(only_row(action="delete"), member, "delete", "workspace_build", r.json()["id"], 201)


def test_it_records_through_the_asgi_handler(owner: Any, member: Any, asgi_api_as: Any) -> None:
    # The request reaches the service in another thread under ASGI: the context must follow it.
    api = asgi_api_as(owner)
    AuditLog.objects.all().delete()
    r = api.put("users/member/status/suspend", headers={"User-Agent": AGENT})
    assert r.status_code == 200
    row = only_row()
    assert (row.user_id, row.action, row.resource_id, row.ip, row.user_agent) == (
        owner.pk,
        "write",
        member.pk,
        "127.0.0.1",
        AGENT,
    )


def test_it_records_through_the_servers_own_api_chain(owner: Any, member: Any) -> None:
    # coderd.asgi's application, whose API chain is not settings.MIDDLEWARE (coderd/handlers.py).
    from tests.test_request_path import http

    token = token_for(owner)
    AuditLog.objects.all().delete()
    headers = [(b"coder-session-token", token.encode()), (b"user-agent", AGENT.encode())]
    assert http("PUT", "/api/v2/users/member/status/suspend", headers)["status"] == 200
    row = only_row()
    assert (row.user_id, row.resource_id, row.ip, row.user_agent) == (owner.pk, member.pk, "127.0.0.1", AGENT)


def test_it_records_a_change_made_outside_a_request_without_an_address(owner: Any) -> None:
    from tests.fixtures import make_user

    AuditLog.objects.all().delete()
    ada = make_user(owner, "ada")
    row = only_row()
    assert (row.user_id, row.resource_id, row.ip, row.user_agent, row.request_id) == (
        owner.pk,
        ada.pk,
        None,
        "",
        None,
    )


# --- reading the trail ----------------------------------------------------------------------------


def test_it_lets_owners_and_auditors_read_the_trail_and_no_one_else(
    owner: Any, member: Any, auditor: Any, template_admin: Any, user_admin: Any, api_as: Any
) -> None:
    for user in (member, template_admin, user_admin):
        r = api_as(user).get("audit")
        assert r.status_code == 403, user
        assert r.json()["message"]
    for user in (owner, auditor):
        r = api_as(user).get("audit")
        assert r.status_code == 200, user
        assert r.json()["count"] == AuditLog.objects.count() > 0
    assert APIClient().get("audit").status_code == 401


def test_it_answers_in_coders_shape_newest_first(owner: Any, member: Any, auditor: Any, api_as: Any) -> None:
    client_for(owner).put("users/member/status/suspend")
    body = api_as(auditor).get("audit", headers={}).json()
    assert set(body) == {"audit_logs", "count", "count_cap"}
    newest = body["audit_logs"][0]
    assert set(newest) >= {
        "id", "request_id", "time", "ip", "user_agent", "resource_type", "resource_id", "resource_target",
        "resource_icon", "action", "diff", "status_code", "additional_fields", "description",
        "resource_link", "is_deleted", "organization_id", "organization", "user",
    }  # fmt: skip
    # The auditor's own token was issued after the suspend: it is the newest row.
    assert (newest["action"], newest["resource_type"], newest["user"]["username"]) == (
        "create",
        "api_key",
        "auditor",
    )
    suspend = next(e for e in body["audit_logs"] if e["action"] == "write")
    assert suspend["resource_target"] == "member"
    assert suspend["user"]["username"] == "owner" and suspend["user"]["roles"][0]["name"] == "owner"
    assert (suspend["ip"], suspend["user_agent"], suspend["status_code"]) == (IP, AGENT, 200)
    assert suspend["description"] == "{user} updated user {target}"
    assert suspend["diff"]["status"] == {"old": "active", "new": "suspended", "secret": False}
    assert suspend["resource_link"] == f"/admin/users/user/{member.pk}/change/"
    assert suspend["is_deleted"] is False
    times = [e["time"] for e in body["audit_logs"]]
    assert times == sorted(times, reverse=True)


def test_it_describes_failures_and_deleted_resources(
    owner: Any, member: Any, user_admin: Any, api_as: Any
) -> None:
    client_for(user_admin).put("users/owner/status/suspend")
    client_for(owner).delete("users/member")
    entries = api_as(owner).get("audit?q=resource_type:user").json()["audit_logs"]
    failed = next(e for e in entries if e["status_code"] == 403)
    assert failed["description"] == "{user} unsuccessfully attempted to write user {target}"
    deleted = [e for e in entries if e["resource_id"] == str(member.pk)]
    assert deleted and all(e["is_deleted"] and e["resource_link"] == "" for e in deleted)


def test_it_filters_with_coders_query_terms(owner: Any, member: Any, auditor: Any, api_as: Any) -> None:
    client_for(owner).put("users/member/status/suspend")
    client_for(owner).put("users/member/status/activate")
    api = api_as(auditor)

    def search(q: str, **params: Any) -> dict[str, Any]:
        query = "&".join([f"q={q}", *(f"{k}={v}" for k, v in params.items())])
        r = api.get(f"audit?{query}")
        assert r.status_code == 200, r.json()
        return r.json()

    writes = search("action:write")
    assert writes["count"] == 2 and {e["action"] for e in writes["audit_logs"]} == {"write"}
    keys = search("resource_type:api_key")
    assert keys["count"] == AuditLog.objects.filter(resource_type="api_key").count() > 0
    assert search("api_key")["count"] == keys["count"]  # a plain word is a resource type, as Coder
    by_owner = search("username:owner action:write")
    assert by_owner["count"] == 2
    assert search("username:member action:write")["count"] == 0
    assert search("username:me")["count"] == AuditLog.objects.filter(user=auditor).count()
    assert search(f"resource_id:{member.pk} resource_type:user")["count"] == 3  # create + 2 writes
    assert search("resource_target:MEMBER action:write")["count"] == 2  # lower-cased, as Coder

    page = search("action:write", limit=1, offset=1)
    assert page["count"] == 2 and len(page["audit_logs"]) == 1
    assert page["audit_logs"][0]["id"] == writes["audit_logs"][1]["id"]

    for bad in ("action:explode", "colour:red", "resource_id:nope", "date_from:yesterday"):
        r = api.get(f"audit?q={bad}")
        assert r.status_code == 400, bad
        assert r.json()["validations"][0]["field"] == "q"
    assert api.get("audit?limit=0").status_code == 400


def test_it_is_documented_in_the_openapi_schema(anon_api: APIClient) -> None:
    schema = anon_api.get("openapi.json").json()
    operation = schema["paths"]["/api/v2/audit"]["get"]
    assert {p["name"] for p in operation["parameters"]} >= {"q", "limit", "offset"}
    assert "403" in operation["responses"]


def test_it_logs_one_line_per_row(owner: Any, member: Any, caplog: pytest.LogCaptureFixture) -> None:
    api = client_for(owner)
    caplog.clear()
    with caplog.at_level("INFO", logger="coderd.audit.services"):
        api.put("users/member/status/suspend")
    lines = [r.getMessage() for r in caplog.records if r.name == "coderd.audit.services"]
    assert lines == [f"audit: owner write user 'member' status=200 ip={IP}"]


def test_it_caps_the_count_as_coder(owner: Any, auditor: Any, api_as: Any) -> None:
    import uuid

    from coderd.audit.api import COUNT_CAP

    AuditLog.objects.bulk_create(
        AuditLog(resource_type="user", resource_id=uuid.uuid4(), action="write", status_code=200)
        for _ in range(COUNT_CAP + 5)
    )
    body = api_as(auditor).get("audit?q=action:write&limit=3").json()
    assert (body["count"], body["count_cap"], len(body["audit_logs"])) == (COUNT_CAP + 1, COUNT_CAP, 3)
    assert api_as(auditor).get("audit?q=action:login").json()["count"] == 0
