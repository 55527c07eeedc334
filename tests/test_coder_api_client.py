"""A third-party client, unchanged: `coder-api` (PyPI), written against Coder, drives a live coderd.

It covers users, organizations, templates and workspaces through the calls it has. Where the
library is itself wrong against Coder, the test says so and checks coderd answers as Coder would.
"""

from __future__ import annotations

from typing import Any

import coder
import pytest
from coder import Organization, Template, User, Workspace

from tests.fixtures import ECHO_SOURCE, finish_job, make_first_user, token_for

ZERO = "00000000-0000-0000-0000-000000000000"


@pytest.fixture
def client(live_server: Any, transactional_db: Any) -> Any:
    owner = make_first_user()
    coder.api_domain = f"{live_server.url}/api/v2/"
    coder.set_token(token_for(owner))
    yield owner
    coder.api_domain = coder.token = None


def ok(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json() if response.content else None


def refused(response: Any, status: int, field: str) -> str:
    assert response.status_code == status, response.text
    [validation] = [v for v in response.json()["validations"] if v["field"] == field]
    return validation["detail"]


def finish(job_id: str) -> None:
    from provisioner.models import ProvisionerJob

    finish_job(ProvisionerJob.objects.get(pk=job_id))


def test_it_serves_users_and_organizations_to_coder_api(client):
    assert ok(User.auth_methods())["password"]["enabled"] is True
    [org] = ok(Organization.list())
    assert ok(Organization.get(org["id"]))["name"] == "coder"
    # The library leaves the password out and sends `disable_login: true`, which Coder reads as login
    # type "none": a user who cannot sign in, created.
    bot = ok(User.create("bot@example.com", "Bot", "bot", organization_ids=[org["id"]]), 201)
    assert (bot["login_type"], bot["organization_ids"]) == ("none", [org["id"]])
    # Asked for a password user, it still sends no password: Coder refuses it, naming the field.
    refused(User.create("pw@example.com", "Pw", "pw", disable_login=False, login_type="password",
                        organization_ids=[org["id"]]), 400, "password")  # fmt: skip
    # Its default `organization_ids: []` Coder refuses too ("cannot be empty").
    refused(User.create("no@example.com", "No", "noorg"), 400, "organization_ids")
    assert ok(User.get("bot"))["name"] == "Bot"
    assert "bot" in [u["username"] for u in ok(User.list())["users"]]
    assert ok(User.suspend("bot"))["status"] == "suspended"
    assert ok(User.activate("bot"))["status"] == "active"
    assert [o["id"] for o in ok(User.get_organizations("bot"))] == [org["id"]]
    assert ok(User.get_or_create("bot@example.com", "Bot", "bot"))["id"] == bot["id"]
    assert ok(User.delete("bot"))["message"]
    assert User.get("bot").status_code == 404


def test_it_serves_tokens_to_coder_api(client):
    from django.conf import settings

    ok(User.create_session_key("me"), 201)
    # The library sends `lifetime_seconds`, a field Coder does not have (it reads `lifetime`, in
    # nanoseconds) and ignores: the token gets the default lifetime, not 60 seconds.
    ok(User.create_token("me", token_name="lib", lifetime_seconds=60), 201)
    token = ok(User.get_token("me", key_name="lib"))
    assert token["lifetime_seconds"] == int(settings.MAX_TOKEN_LIFETIME)
    assert ok(User.get_token("me", token_id=token["id"]))["token_name"] == "lib"
    assert [t["token_name"] for t in ok(User.get_tokens("me")) if t["token_name"]] == ["lib"]
    assert User.delete_token("me", token["id"]).status_code == 204
    assert User.get_token("me", key_name="lib").status_code == 404


def test_it_serves_templates_and_workspaces_to_coder_api(client):
    [org] = ok(Organization.list())
    # The library uploads a Terraform archive by default; coderd runs echo and shell templates given
    # inline, and says so naming the field.
    detail = refused(Template.create_version(org["id"], "v1", file_id=ZERO), 400, "provisioner")
    assert "echo" in detail and "shell" in detail
    version = ok(
        Template.create_version(
            org["id"], "v1", file_id=ZERO, storage_method=None, provisioner="echo", source=ECHO_SOURCE
        ),
        201,
    )
    finish(version["job"]["id"])
    template = ok(Template.create(org["id"], "tpl", version["id"], description="from coder-api"), 201)
    assert [t["name"] for t in ok(Template.list(org["id"]))] == ["tpl"]
    assert [t["name"] for t in ok(Template.list())] == ["tpl"]
    assert ok(Template.get(template["id"]))["description"] == "from coder-api"
    assert [v["name"] for v in ok(Template.get_versions(template["id"]))] == ["v1"]  # a trailing slash
    assert ok(Template.get_version(template["id"], "v1"))["id"] == version["id"]

    ws = ok(Workspace.create("me", "ws", version["id"]), 201)  # POST /users/{user}/workspaces
    other = ok(Workspace.create("me", "other", version["id"], organization_id=org["id"]), 201)
    assert other["organization_id"] == org["id"]
    assert ok(Workspace.status(ws["id"])) == {"status": "pending"}
    finish(ws["latest_build"]["job"]["id"])
    assert ok(Workspace.status(ws["id"])) == {"status": "running"}  # Coder's workspace status
    assert ok(Workspace.get_user_workspace("me", "ws"))["id"] == ws["id"]
    assert ok(Workspace.list())["count"] == 2
    delete = ok(Workspace.delete(ws["id"]), 201)
    finish(delete["job"]["id"])
    assert Workspace.get(ws["id"]).status_code == 410  # Coder's answer for a deleted workspace
    finish(other["latest_build"]["job"]["id"])
    assert ok(Workspace.start(other["id"]), 201)["transition"] == "start"
