"""The audit trail through the admin: its actions and forms write the same rows as the API (with the
admin's address and browser), also appear in the admin's History and Recent actions, and the trail
is browsable there read-only."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.contenttypes.models import ContentType
from django.test import Client

from coderd.audit.models import AuditLog
from coderd.users.models import APIKey, User
from coderd.workspaces.models import Template, Workspace, WorkspaceBuild
from provisioner.models import ProvisionerJob
from tests.fixtures import PASSWORD, finish_job, token_for

pytestmark = pytest.mark.django_db

IP = "198.51.100.23"
BROWSER = "Mozilla/5.0 (X11; Linux x86_64) Chromium/131"
AUDIT = "/admin/audit/auditlog/"


@pytest.fixture
def admin_client(owner: Any) -> Client:
    client = Client(REMOTE_ADDR=IP, HTTP_USER_AGENT=BROWSER)
    client.force_login(owner)
    return client


@pytest.fixture
def workspace(member: Any, workspace_for: Any) -> Workspace:
    ws = workspace_for(member, name="dev")
    finish_job(ws.latest_build.job)
    AuditLog.objects.all().delete()
    return ws


def act(client: Client, url: str, action: str, *pks: Any) -> Any:
    response = client.post(url, {"action": action, "_selected_action": [str(pk) for pk in pks]}, follow=True)
    assert response.status_code == 200
    return response


def only_row(**match: Any) -> AuditLog:
    rows = list(AuditLog.objects.filter(**match))
    assert len(rows) == 1, rows
    return rows[0]


def assert_row(row: AuditLog, user: Any, action: str, resource_type: str, resource: Any, status: int) -> None:
    assert (row.user_id, row.action, row.resource_type, str(row.resource_id), row.status_code) == (
        user.pk,
        action,
        resource_type,
        str(resource),
        status,
    )
    assert (row.ip, row.user_agent) == (IP, BROWSER)


def history(obj: Any) -> list[str]:
    """The object's History page, as the admin reads it."""
    entries = LogEntry.objects.filter(
        content_type=ContentType.objects.get_for_model(obj), object_id=str(obj.pk)
    ).order_by("action_time")
    return [e.get_change_message() for e in entries]


# --- actions --------------------------------------------------------------------------------------


def test_it_records_stop_start_and_delete_of_a_workspace(
    admin_client: Client, owner: Any, workspace: Workspace
) -> None:
    url = "/admin/workspaces/workspace/"
    act(admin_client, url, "stop_workspaces", workspace.pk)
    workspace.refresh_from_db()
    stop = workspace.latest_build
    row = only_row(action="stop")
    assert_row(row, owner, "stop", "workspace_build", stop.pk, 201)
    assert row.additional_fields["workspace_owner"] == "member"

    finish_job(stop.job)
    act(admin_client, url, "start_workspaces", workspace.pk)
    workspace.refresh_from_db()
    assert_row(only_row(action="start"), owner, "start", "workspace_build", workspace.latest_build.pk, 201)

    finish_job(workspace.latest_build.job)
    act(admin_client, url, "delete_workspaces", workspace.pk)
    workspace.refresh_from_db()
    assert_row(only_row(action="delete"), owner, "delete", "workspace_build", workspace.latest_build.pk, 201)

    assert history(workspace) == ["Queued a stop build.", "Queued a start build.", "Queued a delete build."]
    entry = LogEntry.objects.filter(object_id=str(workspace.pk)).latest("action_time")
    assert (entry.user_id, entry.action_flag) == (owner.pk, CHANGE)
    # Recent actions on the index list the owner's LogEntry rows, linking to the workspace.
    index = admin_client.get("/admin/").content.decode()
    recent = index[index.index('id="recent-actions-module"') :]
    assert f'href="/admin/workspaces/workspace/{workspace.pk}/change/"' in recent


def test_it_records_a_refused_action_without_a_history_entry(
    admin_client: Client, owner: Any, workspace: Workspace
) -> None:
    act(admin_client, "/admin/workspaces/workspace/", "stop_workspaces", workspace.pk)
    # A second stop while the first is pending: refused (409), recorded, not in History.
    act(admin_client, "/admin/workspaces/workspace/", "stop_workspaces", workspace.pk)
    failed = only_row(status_code=409)
    assert_row(failed, owner, "stop", "workspace", workspace.pk, 409)
    assert history(workspace) == ["Queued a stop build."]


def test_it_records_canceling_a_build_and_a_job(
    admin_client: Client, owner: Any, member: Any, workspace_for: Any
) -> None:
    ws = workspace_for(member, name="dev")
    build = ws.latest_build
    import_job = build.template_version.job
    AuditLog.objects.all().delete()

    act(admin_client, "/admin/workspaces/workspacebuild/", "cancel_builds", build.pk)
    row = only_row(resource_type="workspace_build")
    assert_row(row, owner, "write", "workspace_build", build.pk, 200)
    assert row.diff["canceled_at"]["new"]
    assert history(build) == ["Canceled."]

    act(admin_client, "/admin/provisioner/provisionerjob/", "cancel_jobs", import_job.pk)
    row = only_row(resource_type="template_version")
    assert_row(row, owner, "write", "template_version", build.template_version_id, 200)
    assert history(ProvisionerJob.objects.get(pk=import_job.pk)) == ["Canceled."]


def test_it_records_suspend_activate_and_delete_of_users(
    admin_client: Client, owner: Any, member: Any
) -> None:
    AuditLog.objects.all().delete()
    url = "/admin/users/user/"
    act(admin_client, url, "suspend_users", member.pk)
    act(admin_client, url, "activate_users", member.pk)
    act(admin_client, url, "delete_users", member.pk)
    rows = list(AuditLog.objects.order_by("time"))
    assert [(r.action, r.status_code) for r in rows] == [("write", 200), ("write", 200), ("delete", 200)]
    for row in rows:
        assert_row(row, owner, row.action, "user", member.pk, 200)
    assert rows[0].diff == {"status": {"old": "active", "new": "suspended", "secret": False}}
    assert history(member) == ["Suspended.", "Activated.", "Deleted (the row and its history stay)."]

    # Suspending oneself is refused: a 400 row, no History entry.
    act(admin_client, url, "suspend_users", owner.pk)
    assert_row(only_row(status_code=400), owner, "write", "user", owner.pk, 400)
    assert history(owner) == []


# --- forms ----------------------------------------------------------------------------------------


def test_it_records_a_user_created_and_changed_on_the_forms(admin_client: Client, owner: Any) -> None:
    AuditLog.objects.all().delete()
    response = admin_client.post(
        "/admin/users/user/add/",
        {
            "email": "ada@example.com",
            "username": "ada",
            "name": "",
            "password1": PASSWORD,
            "password2": PASSWORD,
        },
    )
    assert response.status_code == 302
    ada = User.objects.get(username="ada")
    assert_row(only_row(action="create"), owner, "create", "user", ada.pk, 201)

    form = {"email": ada.email, "username": "ada", "name": "Ada L", "new_password": "another-passphrase"}
    response = admin_client.post(f"/admin/users/user/{ada.pk}/change/", form)
    assert response.status_code == 302
    row = only_row(action="write")
    assert_row(row, owner, "write", "user", ada.pk, 200)
    assert row.diff == {
        "name": {"old": "", "new": "Ada L", "secret": False},
        "password": {"old": "", "new": "", "secret": True},
    }

    admin_client.post(
        f"/admin/users/user/{ada.pk}/change/", {**form, "new_password": "", "roles": ["auditor"]}
    )
    roles = AuditLog.objects.filter(action="write").latest("time")
    assert roles.diff == {"roles": {"old": [], "new": ["auditor"], "secret": False}}


def test_it_records_a_templates_words_changed_on_the_form(
    admin_client: Client, owner: Any, echo_template: Any
) -> None:
    template = echo_template()
    AuditLog.objects.all().delete()
    response = admin_client.post(
        f"/admin/workspaces/template/{template.pk}/change/",
        {"display_name": "Echo", "description": "For tests"},
    )
    assert response.status_code == 302
    row = only_row()
    assert_row(row, owner, "write", "template", template.pk, 200)
    assert set(row.diff) == {"display_name", "description"}
    assert Template.objects.get(pk=template.pk).display_name == "Echo"


def test_it_records_a_key_revoked_in_the_admin(admin_client: Client, owner: Any, member: Any) -> None:
    token_for(member)
    key = APIKey.objects.get(user=member)
    AuditLog.objects.all().delete()
    response = admin_client.post(f"/admin/users/apikey/{key.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not APIKey.objects.filter(pk=key.pk).exists()
    assert_row(only_row(), owner, "delete", "api_key", member.pk, 204)  # what the API answers


# --- the trail's own pages -----------------------------------------------------------------------


def test_it_browses_the_trail_read_only_newest_first_with_filters(
    admin_client: Client, owner: Any, member: Any, workspace: Workspace
) -> None:
    act(admin_client, "/admin/users/user/", "suspend_users", member.pk)
    act(admin_client, "/admin/workspaces/workspace/", "stop_workspaces", workspace.pk)

    response = admin_client.get(AUDIT)
    assert response.status_code == 200
    shown = list(response.context["cl"].result_list)
    assert [e.action for e in shown[:2]] == ["stop", "write"]  # newest first
    assert response.context["cl"].result_count == AuditLog.objects.count()
    page = response.content.decode()
    assert "status: active → suspended" in page  # the diff, in one line
    assert "build #2" in page  # the stop build queued

    def count(query: str) -> int:
        r = admin_client.get(f"{AUDIT}?{query}")
        assert r.status_code == 200, query
        return r.context["cl"].result_count

    assert count("action__exact=stop") == 1
    assert count("resource_type__exact=user") == AuditLog.objects.filter(resource_type="user").count() == 1
    assert count(f"user__id__exact={owner.pk}") == AuditLog.objects.filter(user=owner).count() == 2
    assert count("outcome=failed") == 0
    assert count("q=dev") == 1  # the build's target is its workspace's name

    entry = AuditLog.objects.get(action="stop")
    page = admin_client.get(f"{AUDIT}{entry.pk}/change/")
    assert page.status_code == 200
    assert "workspace_owner" in page.content.decode()
    assert admin_client.get(f"{AUDIT}add/").status_code == 403
    assert admin_client.post(f"{AUDIT}{entry.pk}/delete/", {"post": "yes"}).status_code == 403
    assert AuditLog.objects.filter(pk=entry.pk).exists()
    assert WorkspaceBuild.objects.filter(workspace=workspace).count() == 2


def test_it_records_admin_logins_and_logouts(owner: Any) -> None:
    AuditLog.objects.all().delete()
    client = Client(REMOTE_ADDR=IP, HTTP_USER_AGENT=BROWSER)
    login = "/admin/login/?next=/admin/"
    assert client.post(login, {"username": owner.email, "password": "wrong"}).status_code == 200
    assert_row(only_row(status_code=401), owner, "login", "api_key", owner.pk, 401)
    client.post(login, {"username": "nobody@example.com", "password": "wrong"})
    assert AuditLog.objects.count() == 1  # a name that is no one's is not recorded

    assert client.post(login, {"username": owner.email, "password": PASSWORD}).status_code == 302
    assert_row(only_row(status_code=302), owner, "login", "api_key", owner.pk, 302)
    assert client.post("/admin/logout/").status_code == 200
    assert_row(only_row(action="logout"), owner, "logout", "api_key", owner.pk, 200)


def test_it_records_a_password_changed_on_the_admins_own_page(admin_client: Client, owner: Any) -> None:
    AuditLog.objects.all().delete()
    form = {"old_password": "wrong", "new_password1": "a-new-passphrase", "new_password2": "a-new-passphrase"}
    assert admin_client.post("/admin/password_change/", form).status_code == 200  # refused by the form
    assert AuditLog.objects.count() == 0
    response = admin_client.post("/admin/password_change/", {**form, "old_password": PASSWORD})
    assert response.status_code == 302
    row = only_row()
    assert_row(row, owner, "write", "user", owner.pk, 200)
    assert row.diff == {"password": {"old": "", "new": "", "secret": True}}


def test_it_records_organization_members_changed_inline(
    admin_client: Client, owner: Any, member: Any, auditor: Any, org: Any
) -> None:
    import json

    url = f"/admin/users/organization/{org.pk}/change/"
    formset = admin_client.get(url).context["inline_admin_formsets"][0].formset
    prefix = formset.prefix
    data: dict[str, Any] = {
        "name": org.name, "display_name": org.display_name, "description": org.description,
        f"{prefix}-TOTAL_FORMS": len(formset.forms), f"{prefix}-INITIAL_FORMS": len(formset.forms),
        f"{prefix}-MIN_NUM_FORMS": 0, f"{prefix}-MAX_NUM_FORMS": 1000,
    }  # fmt: skip
    for i, form in enumerate(formset.forms):
        membership = form.instance
        data.update({
            f"{prefix}-{i}-id": membership.pk, f"{prefix}-{i}-organization": org.pk,
            f"{prefix}-{i}-user": membership.user_id, f"{prefix}-{i}-roles": json.dumps(membership.roles),
        })  # fmt: skip
        if membership.user_id == member.pk:
            data[f"{prefix}-{i}-roles"] = json.dumps(["organization-admin"])
        if membership.user_id == auditor.pk:
            data[f"{prefix}-{i}-DELETE"] = "on"
    AuditLog.objects.all().delete()
    response = admin_client.post(url, data)
    assert response.status_code == 302, response.context["errors"] if response.context else response
    changed = only_row(action="write", resource_type="organization_member")
    assert_row(changed, owner, "write", "organization_member", member.pk, 200)
    assert (changed.resource_target, changed.organization_id) == ("member", org.pk)
    assert changed.diff == {"roles": {"old": [], "new": ["organization-admin"], "secret": False}}
    removed = only_row(action="delete")
    assert_row(removed, owner, "delete", "organization_member", auditor.pk, 200)


def test_it_lets_an_auditor_read_the_trail_in_the_admin(auditor: Any, member: Any) -> None:
    client = Client()
    client.force_login(auditor)
    response = client.get(AUDIT)
    assert response.status_code == 200
    assert response.context["cl"].result_count == AuditLog.objects.count() > 0
    entry = AuditLog.objects.first()
    assert client.get(f"{AUDIT}{entry.pk}/change/").status_code == 200
    assert client.post(f"{AUDIT}{entry.pk}/delete/", {"post": "yes"}).status_code == 403

    member_client = Client()
    member_client.force_login(member)
    assert member_client.get(AUDIT).status_code == 302  # to the admin's login page


def test_it_gives_the_rows_of_one_action_one_request_id(
    admin_client: Client, member: Any, other_member: Any
) -> None:
    AuditLog.objects.all().delete()
    act(admin_client, "/admin/users/user/", "suspend_users", member.pk, other_member.pk)
    act(admin_client, "/admin/users/user/", "activate_users", member.pk)
    suspends = AuditLog.objects.filter(diff__status__new="suspended")
    assert suspends.count() == 2 and len({r.request_id for r in suspends}) == 1
    activate = AuditLog.objects.get(diff__status__new="active")
    assert activate.request_id != suspends[0].request_id
