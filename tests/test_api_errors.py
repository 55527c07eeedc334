"""Bad input of every kind gets the right status and API.md's error shape, never a 500."""

from __future__ import annotations

import json
import logging
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fixtures import ECHO_SOURCE, PASSWORD, APIClient, finish_job

SHAPE = {"message", "detail", "validations"}


def assert_error(response, status: int, *fields: str) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    data = response.json()
    assert set(data) == SHAPE
    assert isinstance(data["message"], str) and data["message"]
    assert all(set(v) == {"field", "detail"} for v in data["validations"])
    assert {v["field"] for v in data["validations"]} >= set(fields)
    return data


@pytest.fixture
def api(owner, api_as):
    return api_as(owner)


@pytest.fixture
def template(echo_template):
    return echo_template("base")


@pytest.fixture
def workspace(owner, template, workspace_for):
    return workspace_for(owner, template, name="dev")


POSTS = [
    "users/login",
    "users",
    "organizations/default/templateversions",
    "organizations/default/templates",
    "organizations/default/members/me/workspaces",
    "workspaces/{ws}/builds",
]


@pytest.mark.parametrize("path", POSTS)
@pytest.mark.parametrize("body", [b"{not json", b'{"a": 1,}', b"\xff\xfe", b"[" * 50_000])
def test_it_refuses_malformed_json_with_400(api, workspace, path, body):
    assert_error(api.post(path.format(ws=workspace.id), body=body), 400)


@pytest.mark.parametrize("path", POSTS)
@pytest.mark.parametrize("body", [b"[]", b'"text"', b"42", b"null"])
def test_it_refuses_a_body_that_is_not_an_object_with_400(api, workspace, path, body):
    assert_error(api.post(path.format(ws=workspace.id), body=body), 400)


@pytest.mark.parametrize(
    ("path", "body", "fields"),
    [
        ("users/login", {"email": 1, "password": ["x"]}, ["email", "password"]),
        (
            "users",
            {"email": "a@example.com", "username": "a", "password": PASSWORD, "roles": "owner"},
            ["roles"],
        ),
        ("organizations/default/templateversions", {"provisioner": "docker", "source": {}}, ["provisioner"]),
        ("organizations/default/templateversions", {"provisioner": "echo", "source": "x"}, ["source"]),
        (
            "organizations/default/templateversions",
            {"provisioner": "echo", "source": {"start": {"duration_ms": -1, "logs": "x", "fail": "no"}}},
            ["source.start.duration_ms", "source.start.logs", "source.start.fail"],
        ),
        (
            "organizations/default/templateversions",
            {"provisioner": "shell", "source": {"start": 5, "timeout_seconds": 0}},
            ["source.start", "source.timeout_seconds"],
        ),
        (
            "organizations/default/templates",
            {"name": "t", "template_version_id": "nope"},
            ["template_version_id"],
        ),
        ("organizations/default/members/me/workspaces", {"template_id": 7, "name": "x"}, ["template_id"]),
        (
            "organizations/default/members/me/workspaces",
            {"template_id": "{tpl}", "name": "bad name!"},
            ["name"],
        ),
        ("workspaces/{ws}/builds", {"transition": "restart"}, ["transition"]),
        ("workspaces/{ws}/builds", {"transition": 5}, ["transition"]),
        ("users/me/keys/tokens", {"lifetime": "forever"}, ["lifetime"]),
        ("users/me/keys/tokens", {"lifetime": 10**30}, ["lifetime"]),
        ("users", {"email": "me@example.com", "username": "Me", "password": PASSWORD}, ["username"]),
        (
            "organizations/default/templateversions",
            {"provisioner": "echo", "source": {}, "name": "bad name/\u0001"},
            ["name"],
        ),
        (
            "organizations/default/templateversions",
            {"provisioner": "echo", "source": {}, "name": "v..2"},
            ["name"],
        ),
    ],
)
def test_it_refuses_wrong_types_and_values_with_400_naming_the_field(
    api, workspace, template, path, body, fields
):
    body = {k: (v.format(tpl=template.id) if isinstance(v, str) else v) for k, v in body.items()}
    assert_error(api.post(path.format(ws=workspace.id), json=body), 400, *fields)


@pytest.mark.parametrize(
    ("path", "fields"),
    [
        ("users/login", ["email", "password"]),
        ("users/first", ["email", "username", "password"]),
        ("organizations/default/templates", ["name", "template_version_id"]),
        ("organizations/default/members/me/workspaces", ["name"]),
        ("workspaces/{ws}/builds", ["transition"]),
    ],
)
def test_it_refuses_missing_fields_with_400(anon_api, api, workspace, path, fields):
    client = anon_api if path.startswith("users/") else api
    data = assert_error(client.post(path.format(ws=workspace.id), json={}), 400, *fields)
    assert all(v["detail"] == "Required field is missing." for v in data["validations"])
    # An empty body is a missing body.
    assert_error(client.post(path.format(ws=workspace.id)), 400)


def test_it_ignores_unknown_fields_and_nulls_as_coders_server_does(api, workspace):
    from coderd.workspaces.services import cancel_build

    cancel_build(workspace.owner, workspace.latest_build)
    body = {"transition": "stop", "flavour": "vanilla", "template_version_id": None, "orphan": None}
    assert api.post(f"workspaces/{workspace.id}/builds", body).status_code == 201
    r = api.post("users/login", {"email": "a@b.c", "password": "x", "remember": True})
    assert r.status_code == 401  # read, and refused as a wrong password, not as an unknown field


def test_it_refuses_a_known_field_it_cannot_honour_naming_it(api, workspace):
    data = assert_error(
        api.post(f"workspaces/{workspace.id}/builds", {"transition": "stop", "dry_run": True}), 400
    )
    assert data["validations"] == [{"field": "dry_run", "detail": "Input should be False"}]
    body = {"template_id": str(workspace.template_id), "name": "other", "template_version_id": None}
    assert_error(api.post("organizations/default/members/me/workspaces", {"name": "x"}), 400, "template_id")
    body["rich_parameter_values"] = [{"name": "region", "value": "eu"}]
    data = assert_error(api.post("organizations/default/members/me/workspaces", body), 400)
    assert data["validations"][0]["field"] == "rich_parameter_values.0.name"
    assert "no parameter named 'region'" in data["validations"][0]["detail"]


@pytest.mark.parametrize(
    "path",
    [
        "workspaces/{uuid}",
        "workspaces/{uuid}/builds",
        "workspacebuilds/{uuid}",
        "workspacebuilds/{uuid}/logs",
        "templates/{uuid}",
        "templateversions/{uuid}",
        "templateversions/{uuid}/logs",
        "users/{uuid}",
        "users/nobody",
        "users/nobody/workspace/dev",
        "users/owner/workspace/nothing",
        "organizations/{uuid}",
        "organizations/nope",
        "organizations/default/templates/nothing",
        "organizations/default/provisionerjobs/{uuid}",
        "workspaces/not-a-uuid",
        "workspaces/12345",
        "workspacebuilds/xyz/logs",
        "templates/0000",
        "no/such/route",
    ],
)
def test_it_answers_unknown_ids_and_bad_uuids_with_404(api, path):
    assert_error(api.get(path.format(uuid=uuid.uuid4())), 404)


LONG = "a" * 60_000  # past SQLite's 50,000-byte limit on a LIKE pattern (Django's iexact)


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("get", f"users/{LONG}", None, 404),
        ("post", f"users/{LONG}/keys", None, 404),
        ("get", f"organizations/{LONG}", None, 404),
        ("get", f"organizations/default/templates/{LONG}", None, 404),
        ("get", f"users/me/workspace/{LONG}", None, 404),
        ("get", f"users/{LONG}/workspace/dev", None, 404),
        ("get", f"workspaces?q=owner:{LONG}", None, 400),
        ("get", f"workspaces?q=name:{LONG}", None, 400),
        ("get", f"users?q={LONG}", None, 400),
    ],
)
def test_it_answers_very_long_names_without_asking_the_database(api, method, path, body, status):
    data = assert_error(
        getattr(api, method)(path, body) if body is not None else getattr(api, method)(path), status
    )
    assert len(data["message"]) < 200  # the value is not echoed back whole


def test_it_refuses_a_very_long_login_without_a_500(anon_api):
    assert_error(anon_api.post("users/login", {"email": LONG, "password": "x"}), 400, "email")
    assert_error(anon_api.post("users/login", {"email": "a@example.com", "password": LONG}), 400, "password")


def test_it_answers_unknown_ids_in_writes_with_404(api, workspace):
    missing = uuid.uuid4()
    assert_error(api.patch(f"workspacebuilds/{missing}/cancel"), 404)
    assert_error(api.post(f"workspaces/{missing}/builds", {"transition": "stop"}), 404)
    assert_error(api.post("workspaces/nope/builds", {"transition": "stop"}), 404)
    assert_error(api.delete(f"templates/{missing}"), 404)
    assert_error(api.put("users/nobody/status/suspend"), 404)
    assert_error(
        api.post("organizations/default/templates", {"name": "x", "template_version_id": str(missing)}), 404
    )
    assert_error(api.patch(f"templates/{workspace.template_id}/versions", {"id": str(missing)}), 404)


@pytest.mark.parametrize("asgi", [False, True], ids=["client", "asgi"])
def test_it_refuses_a_2mb_body_with_413(owner_token, asgi):
    client = APIClient(owner_token, asgi=asgi)
    body = b'{"provisioner": "echo", "source": {"start": {"logs": ["' + b"x" * (2 * 1024 * 1024) + b'"]}}}'
    assert_error(client.post("organizations/default/templateversions", body=body), 413)


def test_it_refuses_duplicate_names_with_409(api, owner, org, template, workspace):
    from coderd.workspaces.services import create_template_version

    version = create_template_version(owner, org, "echo", ECHO_SOURCE)
    assert_error(
        api.post("organizations/default/templates", {"name": "BASE", "template_version_id": str(version.id)}),
        409,
    )
    r = api.post(
        "organizations/default/members/me/workspaces", {"template_id": str(template.id), "name": "Dev"}
    )
    assert_error(r, 409)
    r = api.post("users", {"email": "OWNER@example.com", "username": "someone", "password": PASSWORD})
    assert_error(r, 409)
    assert_error(
        api.post("users", {"email": "x@example.com", "username": "Owner", "password": PASSWORD}), 409
    )
    assert_error(
        api.post("users/first", {"email": "y@example.com", "username": "y", "password": PASSWORD}), 409
    )


def test_it_answers_a_race_on_a_unique_constraint_with_409(api, template, monkeypatch):
    from django.db import IntegrityError

    from coderd.workspaces import services

    def racing(*args, **kwargs):
        raise IntegrityError("UNIQUE constraint failed: workspaces_workspace.owner_id")

    monkeypatch.setattr(services, "create_workspace", racing)
    r = api.post(
        "organizations/default/members/me/workspaces", {"template_id": str(template.id), "name": "x"}
    )
    assert_error(r, 409)


def test_it_refuses_a_build_while_one_is_in_flight_with_409(api, workspace):
    assert_error(api.post(f"workspaces/{workspace.id}/builds", {"transition": "stop"}), 409)
    finish_job(workspace.latest_build.job)
    assert api.post(f"workspaces/{workspace.id}/builds", {"transition": "stop"}).status_code == 201


def test_it_answers_a_wrong_method_with_json_405(api):
    response = api.delete("workspaces")
    assert_error(response, 405)
    assert response["Allow"] == "GET"
    assert_error(api.put("users/login", {}), 405)


@pytest.mark.parametrize(
    "query",
    [
        "limit=abc",
        "limit=0",
        "limit=100000",
        "offset=-1",
        "offset=99999999999999999999",
        "q=owner",
        "q=color:blue",
        "q=status:sleeping",
    ],
)
def test_it_refuses_bad_query_parameters_with_400(api, query):
    assert_error(api.get(f"workspaces?{query}"), 400)


def test_it_refuses_a_bad_job_status_filter_with_400(api):
    assert_error(api.get("organizations/default/provisionerjobs?status=done"), 400, "status")


def test_it_refuses_numbers_wider_than_the_database_with_400(api, workspace):
    assert_error(api.get(f"workspacebuilds/{workspace.latest_build_id}/logs?after=99999999999999999999"), 400)
    assert_error(api.get("organizations/default/templates?offset=99999999999999999999"), 400)


def test_it_answers_an_unexpected_error_with_json_500_and_logs_it(api, monkeypatch, caplog):
    from coderd.users import api as users_api

    def broken(*args, **kwargs):
        raise RuntimeError("database on fire")

    monkeypatch.setattr(users_api, "user_json", broken)
    with caplog.at_level(logging.ERROR, logger="coderd.api"):
        response = api.get("users/me")
    data = assert_error(response, 500)
    assert "database on fire" not in response.content.decode()
    assert "Traceback" not in data["detail"]
    assert any("database on fire" in (r.exc_text or "") for r in caplog.records)


@settings(
    max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    path=st.sampled_from(
        [
            "users",
            "users/login",
            "users/me/keys/tokens",
            "organizations/default/templateversions",
            "organizations/default/templates",
            "organizations/default/members/me/workspaces",
        ]
    ),
    body=st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(
                st.sampled_from(["name", "email", "source", "provisioner", "template_id", "lifetime", "x"]),
                children,
                max_size=5,
            )
        ),
        max_leaves=12,
    ),
)
def test_it_never_answers_random_json_with_a_500(api, path, body):
    response = api.post(path, json=body)
    assert response.status_code < 500, response.content
    if response.status_code >= 400:
        assert set(response.json()) == SHAPE


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        (
            "POST",
            "organizations/default/templateversions",
            b'{"name": "a\\u0000b", "provisioner": "echo", "source": {}}',
        ),
        (
            "POST",
            "organizations/default/templateversions",
            b'{"name": "a\x00b", "provisioner": "echo", "source": {}}',
        ),
        (
            "POST",
            "organizations/default/templateversions",
            b'{"name": "\\ud800", "provisioner": "echo", "source": {}}',
        ),
        ("GET", "users/a%00b", None),
        ("GET", "workspaces?q=name:a%00", None),
    ],
)
def test_it_refuses_text_no_database_can_store_with_400(api, method, path, body):
    assert_error(api.request(method, path, body=body), 400)


def test_it_reads_a_lone_surrogate_as_u_fffd_as_go_does(api):
    body = b'{"provisioner": "echo", "source": {"start": {"logs": ["a\\udfffb"]}}, "\\ud800": 1}'
    response = api.request("POST", "organizations/default/templateversions", body=body)
    assert response.status_code == 201, response.content
    from coderd.workspaces.models import TemplateVersion

    assert TemplateVersion.objects.get(pk=response.json()["id"]).source["start"]["logs"] == ["a\ufffdb"]


def test_it_answers_errors_outside_the_api_handlers_with_json_under_api_only(db, rf):
    from coderd.views import not_found, server_error

    response = server_error(rf.get("/api/v2/users/me"))
    assert response.status_code == 500
    assert set(json.loads(response.content)) == SHAPE
    assert not server_error(rf.get("/admin/")).get("Content-Type", "").startswith("application/json")
    assert not_found(rf.get("/nothing/here"), None).get("Content-Type", "").startswith("text/html")
