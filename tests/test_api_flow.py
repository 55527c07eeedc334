"""The API end to end through the ASGI application: first user to a canceled build and job lists.

No daemon runs here, so jobs stay `pending` unless a test cancels or finishes them.
"""

from __future__ import annotations

import json

import pytest
from asgiref.sync import async_to_sync
from channels.testing import HttpCommunicator

from tests.fixtures import ECHO_SOURCE, PASSWORD, APIClient, finish_job

pytestmark = pytest.mark.django_db


def _asgi(token: str | None = None) -> APIClient:
    return APIClient(token, asgi=True)


def test_it_walks_from_first_user_to_a_canceled_build_through_asgi():
    anon = _asgi()
    assert anon.get("users/first").status_code == 404

    r = anon.post("users/first", {"email": "ada@example.com", "username": "ada", "password": PASSWORD})
    assert r.status_code == 201, r.content
    first = r.json()
    assert set(first) == {"user_id", "organization_id"}
    assert anon.get("users/first").status_code == 200

    r = anon.post("users/login", {"email": "ada@example.com", "password": PASSWORD})
    assert r.status_code == 201, r.content
    session = r.json()["session_token"]
    assert r.cookies["coder_session_token"].value == session
    ada = _asgi(session)

    me = ada.get("users/me").json()
    assert me["id"] == first["user_id"]
    assert me["roles"] == [{"name": "owner", "display_name": "Owner"}]
    assert me["organization_ids"] == [first["organization_id"]]

    # An API token from the session, then everything else with the token.
    r = ada.post("users/me/keys/tokens", {"token_name": "ci", "lifetime": 3600 * 10**9})
    assert r.status_code == 201, r.content
    api = _asgi(r.json()["key"])

    org = api.get("organizations/default").json()
    assert org["id"] == first["organization_id"] and org["name"] == "coder"

    r = api.post(
        "organizations/default/templateversions", {"name": "v1", "provisioner": "echo", "source": ECHO_SOURCE}
    )
    assert r.status_code == 201, r.content
    version = r.json()
    assert version["job"]["status"] == "pending"
    assert version["job"]["type"] == "template_version_import"

    r = api.post("organizations/coder/templates", {"name": "docker", "template_version_id": version["id"]})
    assert r.status_code == 201, r.content
    template = r.json()
    assert template["active_version_id"] == version["id"]
    assert api.get(f"templateversions/{version['id']}").json()["template_id"] == template["id"]

    r = api.post(
        f"organizations/{org['id']}/members/me/workspaces", {"template_id": template["id"], "name": "dev"}
    )
    assert r.status_code == 201, r.content
    ws = r.json()
    assert ws["owner_name"] == "ada" and ws["template_name"] == "docker" and ws["deleted"] is False
    start = ws["latest_build"]
    assert start["build_number"] == 1 and start["transition"] == "start"
    assert start["job"]["status"] == "pending"

    # A second build while the first is pending is refused.
    r = api.post(f"workspaces/{ws['id']}/builds", {"transition": "stop"})
    assert r.status_code == 409
    assert r.json()["message"]

    r = api.patch(f"workspacebuilds/{start['id']}/cancel")
    assert r.status_code == 200, r.content
    build = api.get(f"workspacebuilds/{start['id']}").json()
    assert build["job"]["status"] == "canceled"
    assert build["job"]["canceled_at"] and build["job"]["completed_at"]
    # Canceling twice is a conflict.
    assert api.patch(f"workspacebuilds/{start['id']}/cancel").status_code == 409

    r = api.post(f"workspaces/{ws['id']}/builds", {"transition": "stop"})
    assert r.status_code == 201, r.content
    stop = r.json()
    assert stop["build_number"] == 2 and stop["job"]["status"] == "pending"
    assert set(stop) >= {
        "id",
        "build_number",
        "transition",
        "workspace_id",
        "workspace_name",
        "workspace_owner_name",
        "template_version_id",
        "initiator_id",
        "created_at",
        "job",
    }
    assert set(stop["job"]) >= {
        "id",
        "status",
        "error",
        "created_at",
        "started_at",
        "completed_at",
        "worker_id",
    }

    builds = api.get(f"workspaces/{ws['id']}/builds").json()
    assert [b["build_number"] for b in builds] == [2, 1]
    assert api.get(f"workspaces/{ws['id']}").json()["latest_build"]["id"] == stop["id"]
    assert api.get("users/ada/workspace/dev").json()["id"] == ws["id"]
    assert [w["id"] for w in api.get("workspaces?q=owner:me").json()["workspaces"]] == [ws["id"]]

    pending = api.get("organizations/default/provisionerjobs?status=pending").json()
    assert {j["id"] for j in pending} == {version["job"]["id"], stop["job"]["id"]}
    canceled = api.get("organizations/default/provisionerjobs?status=canceled").json()
    assert [j["id"] for j in canceled] == [start["job"]["id"]]
    assert len(api.get("organizations/default/provisionerjobs").json()) == 3
    assert api.get("organizations/default/provisionerdaemons").json() == []
    assert api.get(f"workspacebuilds/{stop['id']}/logs").json() == []
    assert api.get(f"templateversions/{version['id']}/logs").json() == []

    r = ada.post("users/logout")
    assert r.status_code == 200
    assert ada.get("users/me").status_code == 401
    assert api.get("users/me").status_code == 200  # the API token outlives the session


def test_it_deletes_a_workspace_when_its_delete_build_succeeds(owner, member, api_as, workspace_for):
    ws = workspace_for(member, name="gone")
    finish_job(ws.latest_build.job)
    api = api_as(member)
    r = api.post(f"workspaces/{ws.id}/builds", {"transition": "delete"})
    assert r.status_code == 201, r.content
    from provisioner.models import ProvisionerJob

    finish_job(ProvisionerJob.objects.get(pk=r.json()["job"]["id"]))
    gone = api.get(f"workspaces/{ws.id}")
    assert gone.status_code == 410 and "include_deleted=true" in gone.json()["message"]  # as Coder
    deleted = api.get(f"workspaces/{ws.id}?include_deleted=true").json()
    assert deleted["deleted"] is True and deleted["latest_build"]["status"] == "deleted"
    assert api.get("users/me/workspace/gone").status_code == 404
    assert api.get("users/me/workspace/gone?include_deleted=true").json()["id"] == str(ws.id)
    assert api.post(f"workspaces/{ws.id}/builds", {"transition": "start"}).status_code == 410
    listed = api.get("workspaces?q=deleted:true").json()["workspaces"]
    assert [(w["id"], w["deleted"]) for w in listed] == [(str(ws.id), True)]
    # The name is free again.
    template_id = listed[0]["template_id"]
    r = api.post("organizations/default/members/me/workspaces", {"template_id": template_id, "name": "gone"})
    assert r.status_code == 201, r.content


# The communicator runs the application in an empty context, so its sync views run on asgiref's
# own thread with another database connection: the data must be committed for it to see.
@pytest.mark.django_db(transaction=True)
def test_it_answers_a_raw_asgi_request_through_the_application(owner_token):
    from coderd.asgi import application

    def call(path: str, token: str | None = None):
        headers = [(b"host", b"localhost")]
        if token:
            headers.append((b"authorization", f"Bearer {token}".encode()))

        async def go() -> dict:
            return await HttpCommunicator(application, "GET", path, headers=headers).get_response(timeout=30)

        return async_to_sync(go)()

    response = call("/api/v2/users/me", owner_token)
    assert response["status"] == 200
    assert json.loads(response["body"])["username"] == "owner"

    response = call("/api/v2/users/me")
    assert response["status"] == 401
    assert set(json.loads(response["body"])) == {"message", "detail", "validations"}

    assert call("/healthz")["status"] == 200
    openapi = json.loads(call("/api/v2/openapi.json")["body"])
    assert "/api/v2/workspaces/{workspace}" in openapi["paths"]
