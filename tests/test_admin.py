"""The Django admin as a product surface: every model's pages with data present, search, the computed
job-status filter, the actions (through the same services as the API), logs on build and job pages,
and who gets in."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.messages import get_messages
from django.test import Client

from coderd.users.models import APIKey, OrganizationMember, User, UserStatus
from coderd.workspaces.models import Template, TemplateVersion, Workspace, WorkspaceBuild
from coderd.workspaces.status import WorkspaceStatus
from provisioner.models import JobStatus, ProvisionerDaemon, ProvisionerJob, ProvisionerJobLog
from tests.fixtures import PASSWORD, finish_job, token_for

pytestmark = pytest.mark.django_db

CHANGELISTS = {
    User: "/admin/users/user/",
    OrganizationMember: "/admin/users/organizationmember/",
    APIKey: "/admin/users/apikey/",
    Template: "/admin/workspaces/template/",
    TemplateVersion: "/admin/workspaces/templateversion/",
    Workspace: "/admin/workspaces/workspace/",
    WorkspaceBuild: "/admin/workspaces/workspacebuild/",
    ProvisionerJob: "/admin/provisioner/provisionerjob/",
    ProvisionerJobLog: "/admin/provisioner/provisionerjoblog/",
    ProvisionerDaemon: "/admin/provisioner/provisionerdaemon/",
}
ORGANIZATIONS = "/admin/users/organization/"


@pytest.fixture
def data(owner: Any, member: Any, workspace_for: Any) -> dict[str, Any]:
    """A member's workspace with a started build that logged three lines, a daemon, a token."""
    workspace = workspace_for(member, name="dev")
    build = workspace.latest_build
    daemon = ProvisionerDaemon.objects.create(name="in-process-1", provisioners=["echo", "shell"])
    for output in ("first line", "second line", "third line"):
        ProvisionerJobLog.objects.create(job=build.job, stage="Starting", output=output)
    token_for(member)
    return {"workspace": workspace, "build": build, "daemon": daemon}


@pytest.fixture
def admin_client(owner: Any) -> Client:
    client = Client()
    client.force_login(owner)
    return client


def messages_of(response: Any) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def act(client: Client, url: str, action: str, *pks: Any) -> Any:
    return client.post(url, {"action": action, "_selected_action": [str(pk) for pk in pks]}, follow=True)


# --- pages --------------------------------------------------------------------------------------


def test_it_lists_every_model_with_data_present(admin_client: Client, data: dict[str, Any]) -> None:
    for model, url in [*CHANGELISTS.items(), (None, ORGANIZATIONS)]:
        response = admin_client.get(url)
        assert response.status_code == 200, url
        if model is not None:
            assert response.context["cl"].result_count == model.objects.count() > 0, url


def test_it_opens_every_objects_page(admin_client: Client, data: dict[str, Any]) -> None:
    for model, url in CHANGELISTS.items():
        obj = model.objects.order_by("pk").first()
        response = admin_client.get(f"{url}{obj.pk}/change/")
        assert response.status_code == 200, url


def test_it_shows_counts_and_computed_status_as_columns(admin_client: Client, data: dict[str, Any]) -> None:
    response = admin_client.get(CHANGELISTS[Workspace])
    row = response.context["cl"].result_list[0]
    assert row.state == WorkspaceStatus.PENDING  # Coder's workspace state, not the job's status
    assert b'coderd-badge coderd-state-pending">pending</span>' in response.content
    users = admin_client.get(CHANGELISTS[User]).context["cl"].result_list
    assert {u.username: u.live_workspace_count for u in users} == {"member": 1, "owner": 0}


def test_it_searches(admin_client: Client, data: dict[str, Any]) -> None:
    def found(url: str, q: str) -> int:
        response = admin_client.get(url, {"q": q})
        assert response.status_code == 200
        return response.context["cl"].result_count

    assert found(CHANGELISTS[Workspace], "dev") == 1
    assert found(CHANGELISTS[Workspace], "member") == 1  # by owner
    assert found(CHANGELISTS[Workspace], "nothing-like-it") == 0
    assert found(CHANGELISTS[User], "member@example") == 1
    assert found(CHANGELISTS[ProvisionerJobLog], "second") == 1
    job = data["build"].job
    assert found(CHANGELISTS[ProvisionerJob], str(job.pk)[:8]) == 1  # the short id the list shows
    assert found(CHANGELISTS[ProvisionerJob], "not-a-uuid") == 0


def test_it_filters_on_the_computed_job_status(admin_client: Client, data: dict[str, Any]) -> None:
    def count(url: str, status: str) -> int:
        response = admin_client.get(url, {"status": status})
        assert response.status_code == 200
        return response.context["cl"].result_count

    # The workspace's start build and the template's import are both pending.
    assert count(CHANGELISTS[ProvisionerJob], "pending") == 2
    assert count(CHANGELISTS[WorkspaceBuild], "pending") == 1
    finish_job(data["build"].job)
    assert count(CHANGELISTS[ProvisionerJob], "pending") == 1
    assert count(CHANGELISTS[ProvisionerJob], "succeeded") == 1
    assert count(CHANGELISTS[WorkspaceBuild], "succeeded") == 1
    workspaces = admin_client.get(CHANGELISTS[Workspace], {"state": "running"}).context["cl"]
    assert workspaces.result_count == 1
    assert admin_client.get(CHANGELISTS[Workspace], {"state": "pending"}).context["cl"].result_count == 0
    finish_job(data["build"].template_version.job, error="import failed")
    assert count(CHANGELISTS[TemplateVersion], "failed") == 1


def test_it_shows_a_builds_logs_in_order(admin_client: Client, data: dict[str, Any]) -> None:
    build, job = data["build"], data["build"].job
    for url in (
        f"{CHANGELISTS[WorkspaceBuild]}{build.pk}/change/",
        f"{CHANGELISTS[ProvisionerJob]}{job.pk}/change/",
    ):
        text = admin_client.get(url).content.decode()
        positions = [text.index(line) for line in ("first line", "second line", "third line")]
        assert positions == sorted(positions), url
        assert "[Starting]" in text


def test_it_never_shows_an_api_keys_hash(admin_client: Client, data: dict[str, Any]) -> None:
    key = APIKey.objects.get(user__username="member")
    text = admin_client.get(f"{CHANGELISTS[APIKey]}{key.pk}/change/").content.decode()
    assert key.pk in text
    assert "hashed" not in text.lower()
    assert bytes(key.hashed_secret).hex() not in text
    assert admin_client.get(f"{CHANGELISTS[APIKey]}add/").status_code == 403


# --- actions ------------------------------------------------------------------------------------


def test_it_stops_and_starts_a_workspace_through_the_build_service(
    admin_client: Client, data: dict[str, Any], owner: Any
) -> None:
    workspace = data["workspace"]
    # The first build is still pending: the service refuses, and the admin says so (no 500).
    response = act(admin_client, CHANGELISTS[Workspace], "stop_workspaces", workspace.pk)
    assert response.status_code == 200
    assert any("already in progress" in m for m in messages_of(response))
    assert workspace.builds.count() == 1

    finish_job(data["build"].job)
    response = act(admin_client, CHANGELISTS[Workspace], "stop_workspaces", workspace.pk)
    assert any("Stopping 1 workspace" in m for m in messages_of(response))
    workspace.refresh_from_db()
    stop = workspace.latest_build
    assert (stop.build_number, stop.transition, stop.initiator) == (2, "stop", owner)
    assert stop.job.get_status() == JobStatus.PENDING

    finish_job(stop.job)
    act(admin_client, CHANGELISTS[Workspace], "start_workspaces", workspace.pk)
    workspace.refresh_from_db()
    assert (workspace.latest_build.build_number, workspace.latest_build.transition) == (3, "start")


def test_it_deletes_a_workspace_with_a_delete_build(admin_client: Client, data: dict[str, Any]) -> None:
    workspace = data["workspace"]
    finish_job(data["build"].job)
    act(admin_client, CHANGELISTS[Workspace], "delete_workspaces", workspace.pk)
    workspace.refresh_from_db()
    assert workspace.latest_build.transition == "delete"
    assert not workspace.deleted  # until the delete build succeeds
    finish_job(workspace.latest_build.job)
    workspace.refresh_from_db()
    assert workspace.deleted


def test_it_cancels_a_build_and_a_job(admin_client: Client, data: dict[str, Any]) -> None:
    build = data["build"]
    response = act(admin_client, CHANGELISTS[WorkspaceBuild], "cancel_builds", build.pk)
    assert any("Canceled 1 build" in m for m in messages_of(response))
    build.job.refresh_from_db()
    assert build.job.get_status() == JobStatus.CANCELED

    # Canceling it again is a conflict, shown as a message.
    response = act(admin_client, CHANGELISTS[WorkspaceBuild], "cancel_builds", build.pk)
    assert response.status_code == 200
    assert any("already completed" in m for m in messages_of(response))

    import_job = build.template_version.job
    response = act(admin_client, CHANGELISTS[ProvisionerJob], "cancel_jobs", import_job.pk)
    assert any("Canceled 1 job" in m for m in messages_of(response))
    import_job.refresh_from_db()
    assert import_job.get_status() == JobStatus.CANCELED


def test_it_cancels_a_build_job_through_its_build(admin_client: Client, data: dict[str, Any]) -> None:
    build = data["build"]
    act(admin_client, CHANGELISTS[ProvisionerJob], "cancel_jobs", build.job.pk)
    build.job.refresh_from_db()
    assert build.job.get_status() == JobStatus.CANCELED


def test_it_suspends_and_activates_users(
    admin_client: Client, data: dict[str, Any], member: Any, owner: Any
) -> None:
    response = act(admin_client, CHANGELISTS[User], "suspend_users", member.pk)
    assert any("Suspended 1 user" in m for m in messages_of(response))
    member.refresh_from_db()
    assert member.status == UserStatus.SUSPENDED

    act(admin_client, CHANGELISTS[User], "activate_users", member.pk)
    member.refresh_from_db()
    assert member.status == UserStatus.ACTIVE

    # The service's rules hold here too: an owner cannot suspend themselves.
    response = act(admin_client, CHANGELISTS[User], "suspend_users", owner.pk)
    assert response.status_code == 200
    assert any("cannot suspend yourself" in m for m in messages_of(response))
    owner.refresh_from_db()
    assert owner.status == UserStatus.ACTIVE


def test_it_refuses_to_delete_a_user_who_owns_workspaces(
    admin_client: Client, data: dict[str, Any], member: Any
) -> None:
    response = act(admin_client, CHANGELISTS[User], "delete_users", member.pk)
    assert any("has workspaces" in m for m in messages_of(response))
    member.refresh_from_db()
    assert not member.deleted


def test_it_refuses_to_delete_a_template_in_use(admin_client: Client, data: dict[str, Any]) -> None:
    template = data["workspace"].template
    response = act(admin_client, CHANGELISTS[Template], "delete_templates", template.pk)
    assert response.status_code == 200
    template.refresh_from_db()
    assert not template.deleted
    assert messages_of(response)  # the service's reason


# --- users' forms and who gets in ----------------------------------------------------------------


def test_it_creates_a_user_with_a_hashed_password(admin_client: Client, owner: Any) -> None:
    response = admin_client.post(
        f"{CHANGELISTS[User]}add/",
        {
            "email": "new@example.com",
            "username": "newcomer",
            "name": "New Comer",
            "roles": ["template-admin"],
            "password1": "a-long-passphrase",
            "password2": "a-long-passphrase",
        },
    )
    assert response.status_code == 302, response.content.decode()[-3000:]
    user = User.objects.get(username="newcomer")
    assert user.password != "a-long-passphrase"
    assert user.check_password("a-long-passphrase")
    assert user.roles == ["template-admin"]
    assert user.memberships.filter(organization__is_default=True).exists()


def test_it_refuses_a_bad_new_user_on_the_form(admin_client: Client, owner: Any) -> None:
    response = admin_client.post(
        f"{CHANGELISTS[User]}add/",
        {"email": "OWNER@example.com", "username": "bad name", "password1": "x1", "password2": "x2"},
    )
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert {"email", "username", "password2"} <= set(errors)
    assert not User.objects.filter(username="bad name").exists()


def test_it_changes_a_password_and_roles(admin_client: Client, member: Any) -> None:
    url = f"{CHANGELISTS[User]}{member.pk}/change/"
    form = {"email": member.email, "username": member.username, "name": "", "roles": ["auditor"]}
    response = admin_client.post(url, {**form, "new_password": "another-passphrase"})
    assert response.status_code == 302
    member.refresh_from_db()
    assert member.check_password("another-passphrase")
    assert member.roles == ["auditor"]

    # Leaving the password empty keeps it.
    admin_client.post(url, {**form, "new_password": ""})
    member.refresh_from_db()
    assert member.check_password("another-passphrase")


def test_it_logs_an_owner_in_with_email_and_password(owner: Any) -> None:
    client = Client()
    assert ">Email:</label>" in client.get("/admin/login/").content.decode()  # not "Username"
    response = client.post("/admin/login/?next=/admin/", {"username": owner.email, "password": PASSWORD})
    assert response.status_code == 302 and response["Location"] == "/admin/"
    assert client.get("/admin/").status_code == 200


def test_it_keeps_members_out(member: Any) -> None:
    client = Client()
    response = client.post("/admin/login/?next=/admin/", {"username": member.email, "password": PASSWORD})
    assert response.status_code == 200
    assert "staff account" in response.content.decode()
    client.force_login(member)
    assert client.get("/admin/").status_code == 302
    assert client.get(CHANGELISTS[Workspace]).status_code == 302


def test_it_keeps_a_suspended_owner_out(owner: Any, member: Any) -> None:
    User.objects.filter(pk=owner.pk).update(status=UserStatus.SUSPENDED)
    client = Client()
    response = client.post("/admin/login/?next=/admin/", {"username": owner.email, "password": PASSWORD})
    assert response.status_code == 200
    assert client.get("/admin/").status_code == 302


def test_it_lists_without_a_query_per_row(
    admin_client: Client, data: dict[str, Any], member: Any, workspace_for: Any
) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    def queries() -> dict[str, int]:
        counts = {}
        for url in [*CHANGELISTS.values(), ORGANIZATIONS]:
            with CaptureQueriesContext(connection) as ctx:
                assert admin_client.get(url).status_code == 200
            counts[url] = len(ctx.captured_queries)
        return counts

    before = queries()
    for i in range(3):
        workspace = workspace_for(member, name=f"more-{i}")
        ProvisionerJobLog.objects.create(job=workspace.latest_build.job, output="more")
        ProvisionerDaemon.objects.create(
            name=f"d{i}", provisioners=["echo"], current_job=workspace.latest_build.job
        )
        token_for(member)
    assert queries() == before


def test_it_shows_only_coderds_models_and_links_to_the_api(admin_client: Client) -> None:
    text = admin_client.get("/admin/").content.decode()
    assert "/admin/auth/group/" not in text  # roles are coderd's, not Django groups
    assert 'href="/api/v2/docs"' in text


def test_it_lets_an_owner_change_their_own_password(admin_client: Client, owner: Any) -> None:
    response = admin_client.post(
        "/admin/password_change/",
        {"old_password": PASSWORD, "new_password1": "a-new-passphrase", "new_password2": "a-new-passphrase"},
    )
    assert response.status_code == 302
    owner.refresh_from_db()
    assert owner.check_password("a-new-passphrase")


def test_it_makes_a_version_active_through_the_service(
    admin_client: Client, data: dict[str, Any], owner: Any
) -> None:
    from coderd.workspaces.services import create_template_version

    template = data["workspace"].template
    first = template.active_version
    second = create_template_version(owner, template.organization, "echo", {}, name="v2", template=template)
    url = CHANGELISTS[TemplateVersion]
    # Its import has not run yet: the service refuses, the admin says why.
    response = act(admin_client, url, "make_active", second.pk)
    assert any("this one's is pending" in m for m in messages_of(response))
    template.refresh_from_db()
    assert template.active_version == first
    finish_job(second.job)
    response = act(admin_client, url, "make_active", second.pk)
    assert any("Activated 1 version" in m for m in messages_of(response))
    template.refresh_from_db()
    assert template.active_version == second

    # Nor can a failed one.
    finish_job(first.job, error="import failed")
    response = act(admin_client, url, "make_active", first.pk)
    assert any("this one's is failed" in m for m in messages_of(response))
    template.refresh_from_db()
    assert template.active_version == second


def test_it_filters_keys_by_state_and_shows_daemons_as_connected(
    admin_client: Client, data: dict[str, Any], member: Any
) -> None:
    from datetime import timedelta

    from django.utils import timezone

    APIKey.objects.filter(user=member).update(expires_at=timezone.now() - timedelta(minutes=1))
    token_for(member)
    url = CHANGELISTS[APIKey]
    live = admin_client.get(url, {"state": "live"}).context["cl"].result_count
    expired = admin_client.get(url, {"state": "expired"}).context["cl"].result_count
    assert (live, expired) == (1, 1)

    ProvisionerDaemon.objects.filter(pk=data["daemon"].pk).update(last_seen_at=timezone.now())
    ProvisionerDaemon.objects.create(
        name="gone", provisioners=["echo"], last_seen_at=timezone.now() - timedelta(hours=1)
    )
    rows = admin_client.get(CHANGELISTS[ProvisionerDaemon]).context["cl"].result_list
    admin_view = admin_client.get(CHANGELISTS[ProvisionerDaemon]).context["cl"].model_admin
    assert {d.name: admin_view.connected(d) for d in rows} == {"in-process-1": True, "gone": False}
