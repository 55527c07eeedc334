"""Managing users and organizations through the API."""

from __future__ import annotations

from coderd.workspaces.services import create_build
from tests.fixtures import PASSWORD, APIClient, finish_job


def test_it_creates_the_first_user_once(anon_api, db):
    body = {"email": "first@example.com", "username": "first", "password": PASSWORD}
    r = anon_api.post("users/first", body)
    assert r.status_code == 201
    from coderd.users.models import Organization, User

    user = User.objects.get(pk=r.json()["user_id"])
    assert user.roles == ["owner"] and user.is_staff
    org = Organization.objects.get(pk=r.json()["organization_id"])
    assert (org.name, org.is_default) == ("coder", True)
    assert (
        anon_api.post("users/first", {**body, "username": "again", "email": "a@example.com"}).status_code
        == 409
    )


def test_it_validates_a_new_users_fields(owner, api_as):
    r = api_as(owner).post("users", {"email": "not-an-email", "username": "-bad-", "password": "123"})
    assert r.status_code == 400
    assert {v["field"] for v in r.json()["validations"]} == {"email", "username", "password"}


def test_it_creates_users_with_roles_and_user_admins_cannot_make_owners(owner, user_admin, api_as):
    admin = api_as(user_admin)
    r = admin.post(
        "users",
        {"email": "t@example.com", "username": "tina", "password": PASSWORD, "roles": ["template-admin"]},
    )
    assert r.status_code == 201, r.content
    created = r.json()
    assert created["roles"] == [{"name": "template-admin", "display_name": "Template admin"}]
    assert (
        created["status"] == "active" and created["last_seen_at"] == "0001-01-01T00:00:00Z"
    )  # Go's zero time, as Coder
    r = admin.post(
        "users", {"email": "o@example.com", "username": "oscar", "password": PASSWORD, "roles": ["owner"]}
    )
    assert r.status_code == 403
    r = admin.post(
        "users", {"email": "o@example.com", "username": "oscar", "password": PASSWORD, "roles": ["god"]}
    )
    assert r.status_code == 400
    # The new user can log in.
    login = APIClient().post("users/login", {"email": "t@example.com", "password": PASSWORD})
    assert login.status_code == 201


def test_it_protects_owners_and_the_caller_from_status_changes(owner, user_admin, member, api_as):
    admin = api_as(user_admin)
    assert admin.put("users/owner/status/suspend").status_code == 403
    # As Coder (coderd/users.go): suspending yourself is 400, deleting yourself 403.
    assert admin.put("users/me/status/suspend").status_code == 400
    assert api_as(owner).delete("users/me").status_code == 403
    assert admin.put("users/me/status/activate").json()["status"] == "active"
    assert admin.put("users/member/status/suspend").json()["status"] == "suspended"


def test_it_assigns_roles(owner, member, user_admin, api_as):
    r = api_as(user_admin).put("users/member/roles", {"roles": ["auditor"]})
    assert r.status_code == 200
    assert [role["name"] for role in r.json()["roles"]] == ["auditor"]
    assert api_as(user_admin).put("users/member/roles", {"roles": ["owner"]}).status_code == 403
    assert api_as(owner).put("users/member/roles", {"roles": ["owner"]}).status_code == 200


def test_it_refuses_to_change_the_callers_own_roles(owner, user_admin, api_as):
    # Else the only owner could drop the owner role, and nobody could ever give it back.
    r = api_as(owner).put("users/me/roles", {"roles": []})
    assert r.status_code == 400
    assert r.json()["message"] == "You cannot change your own roles."
    assert api_as(user_admin).put("users/me/roles", {"roles": ["auditor"]}).status_code == 400
    owner.refresh_from_db()
    user_admin.refresh_from_db()
    assert owner.roles == ["owner"]
    assert user_admin.roles == ["user-admin"]


def test_it_refuses_to_delete_a_user_with_workspaces_then_frees_the_name(
    owner, member, api_as, workspace_for
):

    ws = workspace_for(member)
    api = api_as(owner)
    assert api.delete("users/member").status_code == 417  # as Coder: Expectation Failed
    finish_job(ws.latest_build.job)
    finish_job(create_build(member, ws, "delete").job)
    assert api.delete("users/member").status_code == 200
    assert api.get("users/member").status_code == 404
    r = api.post("users", {"email": "member@example.com", "username": "member", "password": PASSWORD})
    assert r.status_code == 201, r.content


def test_it_lists_users_in_pages_in_a_stable_order(owner, member, other_member, auditor, api_as):
    api = api_as(auditor)
    everyone = api.get("users").json()
    assert everyone["count"] == 4
    names = [u["username"] for u in everyone["users"]]
    assert names == sorted(names)
    pages = [api.get(f"users?limit=2&offset={o}").json()["users"] for o in (0, 2, 4)]
    assert [u["username"] for p in pages for u in p] == names
    assert [u["username"] for u in api.get("users?q=member").json()["users"]] == ["member", "other-member"]


def test_it_looks_users_up_by_id_username_or_me(owner, member, api_as):
    api = api_as(owner)
    by_id = api.get(f"users/{member.id}").json()
    assert by_id == api.get("users/MEMBER").json()
    assert by_id["username"] == "member"
    assert api_as(member).get("users/me").json()["id"] == str(member.id)


def test_it_shows_organizations_by_id_name_or_default(owner, member, org, api_as):
    api = api_as(member)
    assert api.get(f"organizations/{org.id}").json()["name"] == "coder"
    assert api.get("organizations/coder").json()["id"] == str(org.id)
    assert api.get("organizations/default").json()["is_default"] is True
    assert [o["id"] for o in api.get("users/me/organizations").json()] == [str(org.id)]


def test_it_filters_users_by_status(owner, member, other_member, api_as):
    from coderd.users.services import suspend_user

    suspend_user(owner, member)
    api = api_as(owner)
    assert [u["username"] for u in api.get("users?status=suspended").json()["users"]] == ["member"]
    assert api.get("users?status=asleep").status_code == 400


def test_it_searches_users_with_coders_query_terms(owner, member, other_member, auditor, api_as):
    from urllib.parse import urlencode

    from coderd.users.services import suspend_user

    suspend_user(owner, member)
    api = api_as(owner)

    def names(q: str) -> list[str]:
        r = api.get("users?" + urlencode({"q": q}))
        assert r.status_code == 200, r.content
        return [u["username"] for u in r.json()["users"]]

    assert names("status:suspended") == ["member"]
    assert names("status:active member") == ["other-member"]  # a term and a word: both must match
    assert names("role:auditor") == ["auditor"]
    assert names("role:owner") == ["owner"]
    assert len(names("role:member")) == 4  # everyone is a member
    for bad in ("status:bogus", "role:king", "color:blue", "status:"):
        r = api.get("users?" + urlencode({"q": bad}))
        assert r.status_code == 400, bad
        assert r.json()["validations"][0]["field"] == "q"
