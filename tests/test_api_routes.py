"""The routes Coder's clients call first: organizations, auth methods, workspaces by user, tokens,
templates and versions by name, every template; and a trailing slash where Coder's router takes one."""

from __future__ import annotations

from tests.fixtures import APIClient, finish_job


def test_it_lists_the_organizations_a_caller_may_see(owner, member, api_as):
    from coderd.users.models import Organization

    Organization.objects.create(name="elsewhere")
    assert [o["name"] for o in api_as(owner).get("organizations").json()] == ["coder", "elsewhere"]
    assert [o["name"] for o in api_as(member).get("organizations").json()] == ["coder"]


def test_it_says_how_users_sign_in_without_a_session(db):
    methods = APIClient().get("users/authmethods").json()
    assert methods["password"] == {"enabled": True}
    assert methods["github"]["enabled"] is False and methods["oidc"]["enabled"] is False


def test_it_creates_a_workspace_for_a_user_in_its_templates_organization(member, api_as, echo_template):
    template = echo_template()
    r = api_as(member).post("users/me/workspaces", {"template_id": str(template.id), "name": "mine"})
    assert r.status_code == 201, r.content
    assert (r.json()["owner_name"], r.json()["organization_name"]) == ("member", "coder")


def test_it_lists_gets_and_deletes_tokens_as_coder_does(owner, member, template_admin, api_as):
    api = api_as(member)
    secret = api.post("users/me/keys/tokens", {"token_name": "ci"}).json()["key"]
    key_id = secret.split("-")[0]
    listed = [t for t in api.get("users/me/keys/tokens").json() if t["token_name"]]  # not api_as's own
    assert [(t["id"], t["token_name"], t["username"], t["scope"]) for t in listed] == [
        (key_id, "ci", "member", "all")
    ]
    assert api.get("users/me/keys/tokens/ci").json()["id"] == key_id
    assert api.get("users/me/keys/tokens/nope").status_code == 404
    assert api.get(f"users/me/keys/{key_id}").json()["login_type"] == "token"
    # Users see only their own (a member does not even see other users); owners see anyone's.
    assert api.get("users/owner/keys/tokens").status_code == 404
    assert api_as(template_admin).get("users/member/keys/tokens").status_code == 403
    assert api_as(template_admin).delete(f"users/member/keys/{key_id}").status_code == 403
    assert key_id in [t["id"] for t in api_as(owner).get("users/member/keys/tokens").json()]
    mine = api_as(owner).get("users/me/keys/tokens").json()
    assert {t["username"] for t in mine} == {"owner"}
    everyone = api_as(owner).get("users/me/keys/tokens?include_all=true").json()
    assert {t["username"] for t in everyone} >= {"member", "owner"}
    r = api.delete(f"users/me/keys/{key_id}")
    assert r.status_code == 204 and r.content == b""
    assert APIClient(secret).get("users/me").status_code == 401
    assert api.delete(f"users/me/keys/{key_id}").status_code == 404


def test_it_finds_templates_and_versions_by_name(owner, member, api_as, echo_template):
    from coderd.users.models import Organization

    template = echo_template("named")
    elsewhere = Organization.objects.create(name="elsewhere")
    echo_template("hidden", organization=elsewhere)
    api = api_as(member)
    assert api.get("organizations/default/templates/named").json()["id"] == str(template.id)
    version = api.get(f"templates/{template.id}/versions/named-v1").json()
    assert version["id"] == str(template.active_version_id)
    assert api.get(f"templates/{template.id}/versions/v9").status_code == 404
    assert [t["name"] for t in api.get("templates").json()] == ["named"]  # their organizations only
    assert [t["name"] for t in api_as(owner).get("templates").json()] == ["named", "hidden"]


def test_it_takes_a_trailing_slash_where_coders_router_does(owner, api_as, workspace_for):
    ws = workspace_for(owner)
    finish_job(ws.latest_build.job)
    api = api_as(owner)
    assert api.get("workspaces/").json()["count"] == 1
    assert api.get(f"workspaces/{ws.id}/").json()["id"] == str(ws.id)
    assert api.get("users/me/").json()["username"] == "owner"
    assert api.post(f"workspaces/{ws.id}/builds/", {"transition": "stop"}).status_code == 201
    # Leaf actions take none, in Coder's router as here.
    assert api.put("users/me/status/activate/").status_code == 404
    assert api.patch(f"workspacebuilds/{ws.latest_build_id}/cancel/").status_code == 404


def test_it_answers_buildinfo_with_every_field_of_coders(db):
    info = APIClient().get("buildinfo").json()
    assert set(info) >= {
        "external_url", "version", "dashboard_url", "telemetry", "workspace_proxy", "agent_api_version",
        "provisioner_api_version", "upgrade_message", "deployment_id",
    }  # fmt: skip
    assert (info["telemetry"], info["workspace_proxy"]) == (False, False)
