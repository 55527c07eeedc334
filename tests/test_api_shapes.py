"""Response bodies carry every field of Coder's structs with Coder's names, JSON types and meanings.

The field lists are codersdk's (users.go, organizations.go, templates.go, templateversions.go,
workspaces.go, workspacebuilds.go, provisionerdaemons.go): a client decoding them field by field
finds each one.
"""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from tests.fixtures import finish_job

USER = {
    "id", "username", "name", "avatar_url", "email", "created_at", "updated_at", "last_seen_at",
    "status", "login_type", "theme_preference", "organization_ids", "roles",
}  # fmt: skip
ORGANIZATION = {
    "id", "name", "display_name", "icon", "description", "created_at", "updated_at", "is_default",
    "default_org_member_roles",
}  # fmt: skip
JOB = {
    "id", "created_at", "started_at", "completed_at", "canceled_at", "error", "error_code", "status",
    "worker_id", "worker_name", "file_id", "tags", "queue_position", "queue_size", "organization_id",
    "initiator_id", "input", "type", "metadata", "logs_overflowed",
}  # fmt: skip
TEMPLATE = {
    "id", "created_at", "updated_at", "organization_id", "organization_name",
    "organization_display_name", "organization_icon", "name", "display_name", "provisioner",
    "active_version_id", "active_user_count", "build_time_stats", "description", "deprecated",
    "deprecation_message", "icon", "default_ttl_ms", "activity_bump_ms", "autostop_requirement",
    "autostart_requirement", "created_by_id", "created_by_name", "allow_user_autostart",
    "allow_user_autostop", "allow_user_cancel_workspace_jobs", "failure_ttl_ms", "time_til_dormant_ms",
    "time_til_dormant_autodelete_ms", "require_active_version", "max_port_share_level", "cors_behavior",
    "use_classic_parameter_flow",
}  # fmt: skip
VERSION = {
    "id", "template_id", "organization_id", "created_at", "updated_at", "name", "message", "job",
    "readme", "created_by", "archived", "warnings", "has_external_agent",
}  # fmt: skip
BUILD = {
    "id", "created_at", "updated_at", "workspace_id", "workspace_name", "workspace_owner_id",
    "workspace_owner_name", "workspace_owner_avatar_url", "template_version_id",
    "template_version_name", "build_number", "transition", "initiator_id", "initiator_name", "job",
    "reason", "resources", "deadline", "max_deadline", "status", "daily_cost",
    "template_version_preset_id",
}  # fmt: skip
WORKSPACE = {
    "id", "created_at", "updated_at", "owner_id", "owner_name", "owner_avatar_url", "organization_id",
    "organization_name", "template_id", "template_name", "template_display_name", "template_icon",
    "template_allow_user_cancel_workspace_jobs", "template_active_version_id",
    "template_require_active_version", "template_use_classic_parameter_flow", "latest_build",
    "latest_app_status", "outdated", "name", "autostart_schedule", "ttl_ms", "last_used_at",
    "deleting_at", "dormant_at", "health", "automatic_updates", "allow_renames", "favorite",
    "next_start_at", "is_prebuild",
}  # fmt: skip


def test_it_sends_every_field_of_coders_user_and_organization(owner, api_as):
    api = api_as(owner)
    me = api.get("users/me").json()
    assert set(me) >= USER
    assert (me["login_type"], me["avatar_url"], me["roles"][0]["name"]) == ("password", "", "owner")
    org = api.get("organizations/default").json()
    assert set(org) >= ORGANIZATION
    assert (org["icon"], org["default_org_member_roles"], org["is_default"]) == ("", [], True)


def test_it_sends_every_field_of_coders_template_version_and_job(owner, api_as, echo_template):
    template = echo_template()
    api = api_as(owner)
    body = api.get(f"templates/{template.id}").json()
    assert set(body) >= TEMPLATE
    assert (body["organization_name"], body["created_by_name"], body["active_user_count"]) == (
        "coder",
        "owner",
        0,
    )
    assert body["build_time_stats"] == {t: {"P50": None, "P95": None} for t in ("start", "stop", "delete")}
    version = api.get(f"templateversions/{template.active_version_id}").json()
    assert set(version) >= VERSION
    assert version["created_by"]["username"] == "owner" and version["template_id"] == str(template.id)
    job = version["job"]
    assert set(job) >= JOB
    assert job["metadata"]["template_name"] == template.name
    assert job["metadata"]["template_version_name"] == version["name"]
    assert (job["type"], job["initiator_id"], job["tags"]) == (
        "template_version_import",
        str(owner.id),
        {"scope": "organization", "owner": ""},
    )


def test_it_sends_every_field_of_coders_workspace_and_build(member, api_as, workspace_for):
    ws = workspace_for(member, name="shaped")
    api = api_as(member)
    body = api.get(f"workspaces/{ws.id}").json()
    assert set(body) >= WORKSPACE
    assert (body["ttl_ms"], body["autostart_schedule"], body["health"]) == (
        None,
        None,
        {"healthy": True, "failing_agents": []},
    )
    build = body["latest_build"]
    assert set(build) >= BUILD
    assert (build["resources"], build["reason"], build["initiator_name"], build["deadline"]) == (
        [],
        "initiator",
        "member",
        None,
    )
    assert build["template_version_name"] == "echo-v1"
    assert body["last_used_at"] == build["created_at"]
    assert build["job"]["metadata"]["workspace_name"] == "shaped"


def test_it_says_coders_workspace_status_beside_the_jobs_own(member, api_as, workspace_for):
    ws = workspace_for(member, name="meaning")
    api = api_as(member)

    def statuses() -> tuple[str, str]:
        build = api.get(f"workspaces/{ws.id}").json()["latest_build"]
        return build["status"], build["job"]["status"]

    assert statuses() == ("pending", "pending")
    finish_job(ws.latest_build.job)
    assert statuses() == ("running", "succeeded")
    stop = api.post(f"workspaces/{ws.id}/builds", {"transition": "stop"}).json()
    assert (stop["status"], stop["job"]["status"]) == ("pending", "pending")
    from provisioner.models import ProvisionerJob

    job = ProvisionerJob.objects.get(pk=stop["job"]["id"])
    ProvisionerJob.objects.filter(pk=job.pk).update(started_at=timezone.now(), updated_at=timezone.now())
    assert statuses() == ("stopping", "running")
    finish_job(job)
    assert statuses() == ("stopped", "succeeded")
    assert api.get("workspaces?q=status:stopped").json()["count"] == 1


def test_it_places_pending_jobs_in_the_queue(member, other_member, api_as, echo_template, workspace_for):
    template = echo_template()
    finish_job(template.active_version.job)  # its import job leaves the queue
    first = workspace_for(member, template=template, name="first")
    second = workspace_for(other_member, template=template, name="second")
    job = api_as(other_member).get(f"workspaces/{second.id}").json()["latest_build"]["job"]
    assert (job["queue_position"], job["queue_size"]) == (2, 2)
    finish_job(first.latest_build.job)
    job = api_as(other_member).get(f"workspaces/{second.id}").json()["latest_build"]["job"]
    assert (job["queue_position"], job["queue_size"]) == (1, 1)
    finish_job(second.latest_build.job)
    job = api_as(other_member).get(f"workspaces/{second.id}").json()["latest_build"]["job"]
    assert (job["queue_position"], job["queue_size"]) == (0, 0)


def test_it_reports_template_build_times_and_active_users(
    owner, member, api_as, echo_template, workspace_for
):
    template = echo_template()
    ws = workspace_for(member, template=template)
    job = ws.latest_build.job
    now = timezone.now()
    type(job).objects.filter(pk=job.pk).update(started_at=now - timedelta(seconds=3), updated_at=now)
    job.refresh_from_db()
    finish_job(job, now=now)
    body = api_as(owner).get(f"templates/{template.id}").json()
    assert body["build_time_stats"]["start"] == {"P50": 3000, "P95": 3000}
    assert body["active_user_count"] == 1
    listed = api_as(owner).get("organizations/default/templates").json()
    assert [(t["name"], t["active_user_count"]) for t in listed] == [(template.name, 1)]
