"""Request bodies are read as Coder's server reads them (Go's encoding/json through httpapi.Read).

`SDK_BODIES` are the bodies Coder's Go SDK (codersdk) sends, field for field, as it marshals its
request structs: fields without `omitempty` go out as zero values or `null`, zero UUIDs included.
Each operation must answer 2xx to them.
"""

from __future__ import annotations

from typing import Any

from tests.fixtures import ECHO_SOURCE, PASSWORD, APIClient, finish_job

ZERO = "00000000-0000-0000-0000-000000000000"
TRIAL_INFO = {
    "first_name": "", "last_name": "", "phone_number": "", "job_title": "", "company_name": "",
    "country": "", "developers": "",
}  # fmt: skip


def sdk_bodies(org: str, template: str = "", version: str = "") -> dict[str, dict[str, Any]]:
    return {
        "first_user": {
            "email": "ada@example.com", "username": "ada", "name": "", "password": PASSWORD,
            "trial": False, "trial_info": TRIAL_INFO,
        },
        "login": {"email": "ada@example.com", "password": PASSWORD},
        "user": {
            "email": "bob@example.com", "username": "bob", "name": "", "password": PASSWORD,
            "login_type": "password", "user_status": None, "organization_ids": [org],
        },
        "user_2022": {
            "email": "cy@example.com", "username": "cy", "password": PASSWORD, "organization_id": org,
        },
        "token": {"lifetime": 3_600_000_000_000, "token_name": "t", "scope": None},
        "roles": {"roles": ["template-admin"]},
        "version": {
            "name": "", "message": "", "template_id": ZERO, "provisioner": "echo", "source": ECHO_SOURCE,
            "tags": None, "user_variable_values": None, "storage_method": None, "file_id": ZERO,
        },
        "template": {
            "name": "sdk", "display_name": "", "description": "", "icon": "", "template_version_id": version,
            "default_ttl_ms": 0, "allow_user_cancel_workspace_jobs": None, "allow_user_autostart": None,
            "allow_user_autostop": None, "failure_ttl_ms": None, "dormant_ttl_ms": None,
            "delete_ttl_ms": None, "disable_everyone_group_access": False, "require_active_version": False,
            "max_port_share_level": None, "cors_behavior": None,
        },
        "active_version": {"id": version},
        "workspace": {
            "template_id": template, "template_version_id": ZERO, "name": "sdk-ws",
            "template_version_preset_id": ZERO, "ttl_ms": None, "autostart_schedule": None,
            "rich_parameter_values": [], "automatic_updates": "",
        },
        "stop": {"transition": "stop", "template_version_id": ZERO, "template_version_preset_id": ZERO},
        "delete": {"transition": "delete", "orphan": False},
    }  # fmt: skip


def ok(response: Any, status: int = 201) -> dict[str, Any]:
    assert response.status_code == status, response.content
    return response.json()


def test_it_answers_2xx_to_every_body_coders_sdk_sends(db):
    anon = APIClient()
    first = ok(anon.post("users/first", sdk_bodies("")["first_user"]))
    org = first["organization_id"]
    token = ok(anon.post("users/login", sdk_bodies(org)["login"]))["session_token"]
    api = APIClient(token)
    bodies = sdk_bodies(org)
    bob = ok(api.post("users", bodies["user"]))
    assert (bob["organization_ids"], bob["status"]) == ([org], "active")
    assert ok(api.post("users", bodies["user_2022"]))["organization_ids"] == [org]
    ok(api.post("users/me/keys/tokens", bodies["token"]))
    assert ok(api.put("users/bob/roles", bodies["roles"]), 200)["roles"][0]["name"] == "template-admin"
    version = ok(api.post(f"organizations/{org}/templateversions", bodies["version"]))
    finish_job_by_id(version["job"]["id"])
    bodies = sdk_bodies(org, version=version["id"])
    template = ok(api.post(f"organizations/{org}/templates", bodies["template"]))
    ok(api.patch(f"templates/{template['id']}/versions", bodies["active_version"]), 200)
    bodies = sdk_bodies(org, template=template["id"], version=version["id"])
    ws = ok(api.post(f"organizations/{org}/members/me/workspaces", bodies["workspace"]))
    finish_job_by_id(ws["latest_build"]["job"]["id"])
    stop = ok(api.post(f"workspaces/{ws['id']}/builds", bodies["stop"]))
    finish_job_by_id(stop["job"]["id"])
    assert ok(api.post(f"workspaces/{ws['id']}/builds", bodies["delete"]))["transition"] == "delete"


def finish_job_by_id(job_id: str) -> None:
    from provisioner.models import ProvisionerJob

    finish_job(ProvisionerJob.objects.get(pk=job_id))


def test_it_reads_keys_whatever_their_case_as_go_does(owner, api_as):
    body = {"Email": "dee@example.com", "USERNAME": "dee", "Password": PASSWORD, "name": "Dee"}
    created = ok(api_as(owner).post("users", body))
    assert (created["username"], created["name"]) == ("dee", "Dee")


def test_it_refuses_wrong_types_as_go_does(owner, api_as):
    api = api_as(owner)
    for body, field in [
        ({"lifetime": "3600"}, "lifetime"),  # a string is not a duration
        ({"lifetime": 3.5e9}, "lifetime"),  # nor is a float
        ({"token_name": 7}, "token_name"),
    ]:
        r = api.post("users/me/keys/tokens", body)
        assert r.status_code == 400, body
        assert [v["field"] for v in r.json()["validations"]] == [field]


def test_it_refuses_sources_and_provisioners_it_cannot_run_saying_what_it_supports(owner, api_as):
    api = api_as(owner)
    for body, field, says in [
        ({"provisioner": "terraform", "source": {}}, "provisioner", "'echo' or 'shell'"),
        ({"provisioner": "echo", "source": {}, "storage_method": "file"}, "storage_method", "inline"),
        ({"provisioner": "echo", "source": {}, "file_id": "5b4d5b0e-3c1d-4a43-9f6c-7c1d1f8b6a11"}, "file_id", "inline"),
        ({"provisioner": "echo", "source": {}, "tags": {"os": "linux"}}, "tags", "any job"),
    ]:  # fmt: skip
        r = api.post("organizations/default/templateversions", body)
        assert r.status_code == 400, body
        [validation] = r.json()["validations"]
        assert validation["field"] == field and says in validation["detail"], validation


def test_it_builds_only_the_active_version_and_says_so(owner, api_as, workspace_for, echo_template):
    template = echo_template()
    ws = workspace_for(owner, template=template)
    finish_job(ws.latest_build.job)
    other = echo_template("other")
    api = api_as(owner)
    body = {"transition": "stop", "template_version_id": str(other.active_version_id)}
    r = api.post(f"workspaces/{ws.id}/builds", body)
    assert r.status_code == 400 and r.json()["validations"][0]["field"] == "template_version_id"
    body["template_version_id"] = str(template.active_version_id)
    assert api.post(f"workspaces/{ws.id}/builds", body).status_code == 201
    by_version = {"template_version_id": str(template.active_version_id), "name": "by-version"}
    created = ok(api.post("organizations/default/members/me/workspaces", by_version))
    assert created["template_id"] == str(template.id)
