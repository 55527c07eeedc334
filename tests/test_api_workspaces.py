"""Templates, versions, workspaces, builds, jobs and logs through the API."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.utils import timezone

from coderd.workspaces.services import create_build, create_template_version, validate_source
from provisioner.models import ProvisionerDaemon, ProvisionerJob, ProvisionerJobLog
from tests.fixtures import ECHO_SOURCE, finish_job


def test_it_puts_everything_a_provisioner_needs_in_the_build_job(owner, member, workspace_for):
    ws = workspace_for(member, name="dev")
    build = ws.latest_build
    assert build.job.input == {
        "transition": "start",
        "provisioner": "echo",
        "source": validate_source("echo", ECHO_SOURCE),
        "workspace_build_id": str(build.id),
        "build_number": 1,
        "workspace_id": str(ws.id),
        "workspace_name": "dev",
        "workspace_owner": "member",
        "workspace_owner_id": str(member.id),
        "template_id": str(ws.template_id),
        "template_name": "echo",
        "template_version_id": str(build.template_version_id),
        "template_version_name": "echo-v1",
    }
    assert (build.job.type, build.job.initiator_id, build.job.organization_id) == (
        "workspace_build",
        member.id,
        ws.organization_id,
    )


def test_it_creates_shell_versions_and_attaches_versions_to_templates(owner, api_as, echo_template):
    api = api_as(owner)
    template = echo_template("base")
    source = {"start": "#!/bin/sh\necho hi\n", "stop": "exit 0", "timeout_seconds": 30}
    r = api.post(
        "organizations/default/templateversions",
        {"name": "v2", "provisioner": "shell", "source": source, "template_id": str(template.id)},
    )
    assert r.status_code == 201, r.content
    version = r.json()
    assert version["template_id"] == str(template.id) and version["provisioner"] == "shell"
    job = ProvisionerJob.objects.get(pk=version["job"]["id"])
    assert job.input["source"] == {**source, "delete": ""}
    # The same name again on the same template is a conflict.
    r = api.post(
        "organizations/default/templateversions",
        {"name": "v2", "provisioner": "echo", "source": {}, "template_id": str(template.id)},
    )
    assert r.status_code == 409
    versions = api.get(f"templates/{template.id}/versions").json()
    assert [v["name"] for v in versions] == ["base-v1", "v2"]


def test_it_keeps_version_names_unique_when_the_check_is_raced(owner, org, echo_template, monkeypatch):
    # The database has the last word: a request that passed the check too late still gets a 409.
    from django.db.models import QuerySet

    from coderd.errors import Conflict
    from coderd.workspaces.services import create_template_version

    template = echo_template("base")
    create_template_version(owner, org, "echo", {}, name="v2", template=template)
    monkeypatch.setattr(QuerySet, "exists", lambda self: False)  # as if the other had not committed yet
    with pytest.raises(Conflict, match="already exists"):
        create_template_version(owner, org, "echo", {}, name="V2", template=template)
    monkeypatch.undo()
    assert template.versions.filter(name__iexact="v2").count() == 1


def test_it_switches_the_active_version_and_marks_old_workspaces_outdated(owner, org, api_as, echo_template):
    api = api_as(owner)
    template = echo_template("base")
    ws = api.post(
        "organizations/default/members/me/workspaces", {"template_id": str(template.id), "name": "a"}
    ).json()
    finish_job(ProvisionerJob.objects.get(pk=ws["latest_build"]["job"]["id"]))
    v2 = create_template_version(
        owner, org, "echo", {"start": {"logs": ["v2"]}}, name="v2", template=template
    )
    r = api.patch(f"templates/{template.id}/versions", {"id": str(v2.id)})
    assert r.status_code == 400  # its import has not run yet
    assert r.json()["validations"][0]["field"] == "id"
    assert "import succeeded" in r.json()["validations"][0]["detail"]
    finish_job(v2.job)
    r = api.patch(f"templates/{template.id}/versions", {"id": str(v2.id)})
    assert r.status_code == 200, r.content
    assert api.get(f"templates/{template.id}").json()["active_version_id"] == str(v2.id)
    assert api.get(f"workspaces/{ws['id']}").json()["outdated"] is True
    build = api.post(f"workspaces/{ws['id']}/builds", {"transition": "start"}).json()
    assert build["template_version_id"] == str(v2.id) and build["template_version_name"] == "v2"
    assert api.get(f"workspaces/{ws['id']}").json()["outdated"] is False
    # A version of another template cannot be made active.
    other = echo_template("other")
    r = api.patch(f"templates/{template.id}/versions", {"id": str(other.active_version_id)})
    assert r.status_code == 400


def test_it_refuses_a_template_from_a_failed_import(owner, org, api_as):
    version = create_template_version(owner, org, "echo", ECHO_SOURCE, name="bad")
    finish_job(version.job, error="template is broken")
    r = api_as(owner).post(
        "organizations/default/templates", {"name": "t", "template_version_id": str(version.id)}
    )
    assert r.status_code == 400
    assert r.json()["validations"][0]["field"] == "template_version_id"


def test_it_deletes_a_template_only_without_workspaces(owner, member, api_as, echo_template, workspace_for):
    api = api_as(owner)
    template = echo_template("base")
    ws = workspace_for(member, template)
    assert api.delete(f"templates/{template.id}").status_code == 409
    finish_job(ws.latest_build.job)
    finish_job(create_build(member, ws, "delete").job)
    assert api.delete(f"templates/{template.id}").status_code == 200
    assert api.get(f"templates/{template.id}").status_code == 404
    assert api.get("organizations/default/templates").json() == []
    # The name is free for a new template.
    assert echo_template("base").name == "base"


def test_it_shows_members_only_their_own_workspaces(
    owner, member, other_member, auditor, api_as, workspace_for
):
    mine = workspace_for(member, name="mine")
    theirs = workspace_for(other_member, name="theirs")
    listed = api_as(member).get("workspaces").json()
    assert (listed["count"], [w["id"] for w in listed["workspaces"]]) == (1, [str(mine.id)])
    assert api_as(member).get(f"workspaces/{theirs.id}").status_code == 404
    assert api_as(member).get(f"workspacebuilds/{theirs.latest_build_id}").status_code == 404
    assert api_as(member).get("users/other-member/workspace/theirs").status_code == 404
    everyone = api_as(auditor).get("workspaces").json()
    assert [w["owner_name"] for w in everyone["workspaces"]] == ["member", "other-member"]


def test_it_filters_workspaces_with_q(owner, member, api_as, echo_template, workspace_for):
    other_template = echo_template("other")
    a = workspace_for(member, name="alpha")
    b = workspace_for(owner, name="beta")
    c = workspace_for(owner, other_template, name="gamma")
    finish_job(c.latest_build.job)
    api = api_as(owner)

    def ids(q: str) -> list[str]:
        r = api.get(f"workspaces?q={q}")
        assert r.status_code == 200, r.content
        return [w["id"] for w in r.json()["workspaces"]]

    assert ids("owner:member") == [str(a.id)]
    assert ids("owner:me") == [str(b.id), str(c.id)]
    assert ids("template:other") == [str(c.id)]
    assert ids("status:running") == [str(c.id)]  # Coder's workspace status: its start succeeded
    assert set(ids("status:pending")) == {str(a.id), str(b.id)}
    assert ids("name:amm") == [str(c.id)]
    assert ids("owner:me%20name:bet") == [str(b.id)]


def test_it_pages_workspaces_and_builds_in_a_stable_order(owner, api_as, workspace_for):
    for n in range(5):
        workspace_for(owner, name=f"ws{n}")
    api = api_as(owner)
    pages = [api.get(f"workspaces?limit=2&offset={o}").json() for o in (0, 2, 4)]
    assert [p["count"] for p in pages] == [5, 5, 5]
    assert [w["name"] for p in pages for w in p["workspaces"]] == [f"ws{n}" for n in range(5)]

    ws = workspace_for(owner, name="busy")
    for transition in ("stop", "start", "stop"):
        finish_job(ProvisionerJob.objects.get(workspace_build__workspace=ws, completed_at__isnull=True))
        create_build(owner, ws, transition)
    numbers = [b["build_number"] for b in api.get(f"workspaces/{ws.id}/builds").json()]
    assert numbers == [4, 3, 2, 1]
    assert [b["build_number"] for b in api.get(f"workspaces/{ws.id}/builds?limit=2&offset=1").json()] == [
        3,
        2,
    ]


def test_it_lists_workspaces_by_their_owners_names_through_a_rename(
    owner, member, other_member, api_as, workspace_for
):
    from coderd.users.models import User

    for user in (owner, member, other_member):
        for name in ("b", "a"):
            workspace_for(user, name=name)
    api = api_as(owner)

    def listed(path="workspaces"):
        return [(w["owner_name"], w["name"]) for w in api.get(path).json()["workspaces"]]

    assert listed() == [(u, n) for u in ("member", "other-member", "owner") for n in ("a", "b")]
    # The list's order is the owners' current names (kept on each workspace by a trigger), by page too.
    User.objects.filter(pk=member.pk).update(username="zed")
    assert listed() == [(u, n) for u in ("other-member", "owner", "zed") for n in ("a", "b")]
    assert listed("workspaces?limit=3&offset=2") == [("owner", "a"), ("owner", "b"), ("zed", "a")]
    assert listed("workspaces?q=name:a") == [("other-member", "a"), ("owner", "a"), ("zed", "a")]


def test_it_lists_jobs_by_status_newest_first(owner, org, api_as, workspace_for):
    a = workspace_for(owner, name="a")
    b = workspace_for(owner, name="b")
    finish_job(a.latest_build.job, error="boom")
    api = api_as(owner)
    failed = api.get("organizations/default/provisionerjobs?status=failed").json()
    assert [j["id"] for j in failed] == [str(a.latest_build.job_id)]
    assert failed[0]["error"] == "boom"
    both = api.get("organizations/default/provisionerjobs?status=failed,pending").json()
    assert str(b.latest_build.job_id) in {j["id"] for j in both}
    repeated = api.get("organizations/default/provisionerjobs?status=failed&status=pending").json()
    assert repeated == both
    everything = api.get("organizations/default/provisionerjobs").json()
    created = [j["created_at"] for j in everything]
    assert created == sorted(created, reverse=True)
    one = api.get(f"organizations/default/provisionerjobs/{b.latest_build.job_id}").json()
    assert one["input"]["workspace_build_id"] == str(b.latest_build_id)


def test_it_marks_a_running_build_canceling_until_its_daemon_stops_it(owner, api_as, workspace_for):
    ws = workspace_for(owner)
    job = ws.latest_build.job
    ProvisionerJob.objects.filter(pk=job.pk).update(started_at=timezone.now())
    api = api_as(owner)
    assert api.patch(f"workspacebuilds/{ws.latest_build_id}/cancel").status_code == 200
    assert api.get(f"workspacebuilds/{ws.latest_build_id}").json()["job"]["status"] == "canceling"
    # A new build must wait for the daemon to stop the old one.
    assert api.post(f"workspaces/{ws.id}/builds", {"transition": "stop"}).status_code == 409
    assert api.patch(f"workspacebuilds/{ws.latest_build_id}/cancel").status_code == 409


def test_it_returns_logs_in_order_and_after_an_id(owner, api_as, workspace_for):
    ws = workspace_for(owner)
    lines = [
        ProvisionerJobLog.objects.create(job=ws.latest_build.job, output=f"line {n}", stage="Starting")
        for n in range(3)
    ]
    api = api_as(owner)
    logs = api.get(f"workspacebuilds/{ws.latest_build_id}/logs").json()
    assert [entry["output"] for entry in logs] == ["line 0", "line 1", "line 2"]
    # Coder's ProvisionerJobLog, field for field.
    assert set(logs[0]) == {"id", "created_at", "log_source", "log_level", "stage", "output"}
    assert (logs[0]["log_source"], logs[0]["log_level"]) == ("provisioner", "info")
    after = api.get(f"workspacebuilds/{ws.latest_build_id}/logs?after={lines[0].id}").json()
    assert [entry["output"] for entry in after] == ["line 1", "line 2"]


def test_it_lists_daemons_with_their_current_job(owner, api_as, workspace_for):
    ws = workspace_for(owner)
    now = timezone.now()
    ProvisionerDaemon.objects.create(
        name="busy", provisioners=["echo"], last_seen_at=now, current_job=ws.latest_build.job
    )
    ProvisionerDaemon.objects.create(
        name="gone", provisioners=["shell"], last_seen_at=now - timedelta(hours=1)
    )
    daemons = api_as(owner).get("organizations/default/provisionerdaemons").json()
    assert [(d["name"], d["status"]) for d in daemons] == [("busy", "busy"), ("gone", "offline")]
    assert daemons[0]["current_job"] == {"id": str(ws.latest_build.job_id), "status": "pending"}
    assert daemons[1]["provisioners"] == ["shell"] and daemons[1]["current_job"] is None


def test_it_describes_every_route_in_the_openapi_document(anon_api, db):
    from django.urls import get_resolver

    doc = anon_api.get("/api/v2/openapi.json").json()
    documented = {
        (method.upper(), path) for path, operations in doc["paths"].items() for method in operations
    }
    for method, path in [
        ("POST", "/api/v2/users/first"),
        ("POST", "/api/v2/organizations/{organization}/members/{user}/workspaces"),
        ("GET", "/api/v2/users/{user}/workspace/{workspacename}"),
        ("PATCH", "/api/v2/templates/{template}/versions"),
        ("PATCH", "/api/v2/workspacebuilds/{workspacebuild}/cancel"),
        ("GET", "/api/v2/organizations/{organization}/provisionerjobs"),
    ]:
        assert (method, path) in documented
    # Every URL pattern of the API is in the document (but ninja's own docs pages).
    api_patterns = [p for p in get_resolver().url_patterns if str(p.pattern) == "api/v2/"][0].url_patterns
    # ninja turns `{uuid:x}` into its own `<uuidstr:x>` converter; either way the name is Coder's.
    # A route's trailing-slash twin (coderd.urls, as Coder's router) is the same documented operation.
    routes = {
        "/api/v2/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", str(p.pattern)).removesuffix("/")
        for p in api_patterns
    }
    routes -= {"/api/v2/openapi.json", "/api/v2/docs", "/api/v2/"}
    assert routes <= {path for _, path in documented}
