"""The API's hot reads made lean (coderd/fastjson.py, coderd/rawsql.py): the same bytes ninja would
send, the token check as one hand-written query, lists in a fixed number of queries."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from ninja.responses import NinjaJSONEncoder

from coderd.users.models import APIKey, User
from coderd.users.schemas import UserOut
from coderd.users.services import api_key_for_token
from coderd.workspaces.responses import BuildOut, JobOut, WorkspacesList
from provisioner.models import ProvisionerDaemon, ProvisionerJob
from tests.fixtures import finish_job, token_for

pytestmark = pytest.mark.django_db


def as_ninja_sends(schema: Any, body: bytes) -> bytes:
    """What ninja would send for the same data: validated by `schema`, dumped, encoded. A field
    missing, extra, out of order or of the wrong type changes these bytes."""
    return json.dumps(schema.model_validate(json.loads(body)).model_dump(), cls=NinjaJSONEncoder).encode()


@pytest.fixture
def states(owner: Any, member: Any, workspace_for: Any) -> list[Any]:
    """Workspaces of the member in every state a list shows: pending (two, queued), running on a
    daemon, succeeded, failed, canceled."""
    daemon = ProvisionerDaemon.objects.create(name="d-1", provisioners=["echo"])
    made = [workspace_for(member, name=f"ws-{i}") for i in range(6)]
    now = timezone.now()
    jobs = [w.latest_build.job for w in made]
    ProvisionerJob.objects.filter(pk=jobs[2].pk).update(started_at=now, updated_at=now, worker=daemon)
    finish_job(jobs[3])
    finish_job(jobs[4], error="the script failed")
    ProvisionerJob.objects.filter(pk=jobs[5].pk).update(canceled_at=now, completed_at=now, updated_at=now)
    return made


def test_it_sends_a_workspace_list_as_ninja_would(
    states: list[Any], member: Any, owner: Any, api_as: Any
) -> None:
    for user in (member, owner):
        r = api_as(user).get("workspaces")
        assert r.status_code == 200
        assert r["Content-Type"] == "application/json; charset=utf-8"
        assert r.content == as_ninja_sends(WorkspacesList, r.content)
    listed = r.json()["workspaces"]
    statuses = sorted(w["latest_build"]["status"] for w in listed)
    assert statuses == sorted(["pending", "pending", "starting", "running", "failed", "canceled"])
    queued = sorted(w["latest_build"]["job"]["queue_position"] for w in listed)
    # The two pending builds, oldest first, behind the template's import (pending too: no daemon).
    assert queued == [0, 0, 0, 0, 2, 3]
    assert {w["latest_build"]["job"]["queue_size"] for w in listed} == {0, 3}


def test_it_sends_builds_and_jobs_as_ninja_would(
    states: list[Any], member: Any, owner: Any, api_as: Any
) -> None:
    builds = api_as(member).get(f"workspaces/{states[0].id}/builds")
    assert builds.status_code == 200
    assert [b["job"]["queue_position"] for b in builds.json()] == [2]
    jobs = api_as(owner).get(f"organizations/{states[0].organization_id}/provisionerjobs")
    assert jobs.status_code == 200
    for body, schema in ((builds.content, BuildOut), (jobs.content, JobOut)):
        assert [
            json.loads(as_ninja_sends(schema, json.dumps(x).encode())) for x in json.loads(body)
        ] == json.loads(body)


def test_it_sends_a_user_as_ninja_would(owner: Any, member: Any, api_as: Any) -> None:
    for user, path in ((owner, "users/me"), (owner, f"users/{member.username}"), (member, "users/me")):
        r = api_as(user).get(path)
        assert r.status_code == 200
        assert r.content == as_ninja_sends(UserOut, r.content)
    assert r.json()["organization_ids"] == [str(member.memberships.get().organization_id)]


def test_it_lists_one_or_fifty_workspaces_in_the_same_number_of_queries(
    owner: Any, member: Any, workspace_for: Any, api_as: Any
) -> None:
    client = api_as(member)
    workspace_for(member, name="ws-0")
    client.get("workspaces")  # the token's last use written: not counted below
    with CaptureQueriesContext(connection) as one:
        assert len(client.get("workspaces").json()["workspaces"]) == 1
    for i in range(1, 50):
        workspace_for(member, name=f"ws-{i}")  # each with a pending build: 50 queue positions
    with CaptureQueriesContext(connection) as fifty:
        assert len(client.get("workspaces").json()["workspaces"]) == 50
    assert len(one) == len(fifty), [q["sql"] for q in fifty.captured_queries]
    # The token and its user, the caller's organizations... then the page, its count, the queue.
    assert len(fifty) <= 5, [q["sql"] for q in fifty.captured_queries]


def test_it_checks_a_token_in_one_query(owner: Any) -> None:
    token = token_for(owner)
    api_key_for_token(token, timezone.now())  # writes last_used once a minute: not counted below
    with CaptureQueriesContext(connection) as queries:
        key = api_key_for_token(token, timezone.now())
    assert len(queries) == 1
    expected = APIKey.objects.select_related("user").get(pk=key.pk)
    for field in APIKey._meta.concrete_fields:
        assert getattr(key, field.attname) == getattr(expected, field.attname), field.name
    for field in User._meta.concrete_fields:
        assert getattr(key.user, field.attname) == getattr(expected.user, field.attname), field.name
    with CaptureQueriesContext(connection) as queries:
        assert key.user.has_role("owner") and key.user.is_active
    assert len(queries) == 0


def test_it_refuses_a_wrong_secret_or_an_unknown_key(owner: Any) -> None:
    token = token_for(owner)
    key_id, _, secret = token.partition("-")
    assert api_key_for_token(f"{key_id}-{secret}x", timezone.now()) is None
    assert api_key_for_token(f"{'z' * len(key_id)}-{secret}", timezone.now()) is None
    assert api_key_for_token(token, timezone.now()) is not None


def test_it_encodes_uuids_and_datetimes_as_ninjas_encoder_does() -> None:
    import datetime as dt
    import uuid

    from coderd.fastjson import Encoder

    values = [
        uuid.uuid4(),
        dt.datetime(2026, 12, 1, 14, 5, 6, 789123, tzinfo=dt.UTC),
        dt.datetime(2026, 12, 1, 14, 5, 6, tzinfo=dt.UTC),
        dt.datetime(2026, 12, 1, 14, 5, 6, 1000, tzinfo=dt.timezone(dt.timedelta(hours=2))),
        dt.datetime(2026, 12, 1, 14, 5, 6),
        dt.date(2026, 12, 1),
        {"nested": [uuid.UUID(int=0), None, 1.5, "x"]},
    ]
    assert json.dumps(values, cls=Encoder) == json.dumps(values, cls=NinjaJSONEncoder)


def test_it_counts_the_workspaces_beyond_a_full_page(member: Any, workspace_for: Any, api_as: Any) -> None:
    for i in range(5):
        workspace_for(member, name=f"ws-{i}")
    client = api_as(member)
    pages = {
        "workspaces": (5, 5),  # short page: the count is the page's length, no count query
        "workspaces?limit=2": (2, 5),  # full page: counted
        "workspaces?limit=2&offset=4": (1, 5),  # the last, short page: offset + length
        "workspaces?offset=9": (0, 5),  # past the end: counted
        "workspaces?limit=5": (5, 5),  # exactly full: counted
    }
    for path, (length, count) in pages.items():
        body = client.get(path).json()
        assert (len(body["workspaces"]), body["count"]) == (length, count), path


def _as_model_instances_render(user: Any, path: str) -> bytes:
    """What the list sent before it read plain rows: workspace_json over the ORM's model instances."""
    from urllib.parse import parse_qs, urlparse

    from coderd.fastjson import json_response
    from coderd.pagination import Page
    from coderd.workspaces.api import _filter_workspaces
    from coderd.workspaces.responses import WORKSPACE_LIST_ONLY, queue_positions, workspace_json

    args = {k: v[0] for k, v in parse_qs(urlparse(path).query).items()}
    page = Page(limit=int(args.get("limit", 100)), offset=int(args.get("offset", 0)))
    workspaces = _filter_workspaces(user, args.get("q", ""))
    rows = list(page.apply(workspaces.only(*WORKSPACE_LIST_ONLY)))
    now = timezone.now()
    queue = queue_positions((w.latest_build.job for w in rows if w.latest_build), now)
    body = {
        "workspaces": [workspace_json(w, queue, now) for w in rows],
        "count": page.count(workspaces, rows),
    }
    return json_response(body).content


def test_it_lists_workspaces_with_the_bytes_model_instances_gave(
    states: list[Any], member: Any, owner: Any, workspace_for: Any, api_as: Any
) -> None:
    from datetime import timedelta

    from coderd.workspaces.models import Template, WorkspaceBuild

    long_ago = timezone.now() - timedelta(minutes=5)
    # A running job whose heartbeat stopped (failed), timestamps on a whole second and under a
    # millisecond, a build whose initiator is gone, a workspace of another owner.
    ProvisionerJob.objects.filter(pk=states[2].latest_build.job_id).update(updated_at=long_ago)
    ProvisionerJob.objects.filter(pk=states[3].latest_build.job_id).update(
        created_at=long_ago.replace(microsecond=0), completed_at=long_ago.replace(microsecond=500)
    )
    # A job whose input lacks what the list shows of it, and one with non-ASCII names in it.
    ProvisionerJob.objects.filter(pk=states[1].latest_build.job_id).update(input={})
    job = ProvisionerJob.objects.get(pk=states[0].latest_build.job_id)
    ProvisionerJob.objects.filter(pk=job.pk).update(input={**job.input, "workspace_name": "été ☃"})
    WorkspaceBuild.objects.filter(pk=states[4].latest_build_id).update(initiator=None)
    ProvisionerJob.objects.filter(pk=states[4].latest_build.job_id).update(initiator=None)
    workspace_for(owner, name="theirs")
    paths = (
        "workspaces",
        "workspaces?limit=2&offset=1",
        "workspaces?q=status:failed",
        "workspaces?q=owner:me%20name:ws",
        "workspaces?q=deleted:true",
    )
    for user in (member, owner):
        client = api_as(user)
        for path in paths:
            r = client.get(path)
            assert r.status_code == 200, path
            assert r.content == _as_model_instances_render(user, path), (user.username, path)
    assert "failed" in [w["latest_build"]["status"] for w in r.json()["workspaces"]]
    # No active version (Coder's zero UUID) makes every workspace outdated.
    Template.objects.update(active_version=None)
    r = api_as(owner).get("workspaces")
    assert r.content == _as_model_instances_render(owner, "workspaces")
    assert {w["outdated"] for w in r.json()["workspaces"]} == {True}


def test_it_lists_each_members_own_workspaces_from_the_kept_query(
    member: Any, other_member: Any, owner: Any, workspace_for: Any, api_as: Any
) -> None:
    workspace_for(member, name="mine")
    workspace_for(member, name="mine-too")
    workspace_for(other_member, name="theirs")
    clients = {member.username: api_as(member), other_member.username: api_as(other_member)}
    expected = {member.username: ["mine", "mine-too"], other_member.username: ["theirs"]}
    for _ in range(2):  # the second time round, each list comes from the SQL the first one kept
        for name, client in clients.items():
            for path, shown in (
                ("workspaces", 50),
                ("workspaces?limit=1", 1),
                ("workspaces?offset=0&limit=50", 50),
            ):
                body = client.get(path).json()
                assert [w["name"] for w in body["workspaces"]] == expected[name][:shown], (name, path)
                # A full page (limit=1) is counted, from the count's kept SQL: each its own.
                assert body["count"] == len(expected[name]), (name, path)
        assert sorted(w["name"] for w in api_as(owner).get("workspaces").json()["workspaces"]) == [
            "mine",
            "mine-too",
            "theirs",
        ]
        assert api_as(owner).get("workspaces?limit=1").json()["count"] == 3


@pytest.fixture
def finished(member: Any, workspace_for: Any) -> list[Any]:
    """Three workspaces of the member whose builds have finished (one failed, with an error that
    JSON must escape)."""
    made = [workspace_for(member, name=f"done-{i}") for i in range(3)]
    for ws in made[:2]:
        finish_job(ws.latest_build.job)
    finish_job(made[2].latest_build.job, error='exit 1: "apply" failed\n\tat line 3')
    return made


def test_it_writes_an_unchanged_workspace_only_once(
    finished: list[Any], member: Any, api_as: Any, monkeypatch: Any
) -> None:
    from coderd.workspaces import listing

    written: list[int] = []
    render = listing._render

    def counting(rows: list[tuple], now: Any) -> Any:
        written.append(len(rows))
        return render(rows, now)

    monkeypatch.setattr(listing, "_render", counting)
    client = api_as(member)
    first = client.get("workspaces")
    again = client.get("workspaces")
    assert again.content == first.content == _as_model_instances_render(member, "workspaces")
    # The first list writes the three rows (another test may have left nothing of them behind: their
    # ids are new), the second finds each as it was.
    assert written == [3]


def test_it_lists_a_changed_workspace_with_its_new_values(
    finished: list[Any], member: Any, owner: Any, api_as: Any
) -> None:
    from coderd.users.models import Organization, User
    from coderd.workspaces.models import Template, TemplateVersion, Workspace
    from provisioner.models import ProvisionerDaemon

    ws = finished[0]
    client = api_as(owner)
    changes = [
        lambda: Template.objects.filter(pk=ws.template_id).update(display_name="Échos"),
        lambda: Template.objects.filter(pk=ws.template_id).update(name="renamed"),
        lambda: TemplateVersion.objects.filter(pk=ws.latest_build.template_version_id).update(name="v-next"),
        lambda: Template.objects.filter(pk=ws.template_id).update(active_version=None),
        lambda: User.objects.filter(pk=member.pk).update(username="member-renamed"),
        lambda: Organization.objects.filter(pk=ws.organization_id).update(name="org-renamed"),
        lambda: ProvisionerJob.objects.filter(pk=ws.latest_build.job_id).update(
            worker=ProvisionerDaemon.objects.create(name="d-9", provisioners=["echo"])
        ),
        lambda: ProvisionerDaemon.objects.update(name="d-10"),
        lambda: Workspace.objects.filter(pk=ws.pk).update(name="done-renamed"),
        lambda: Workspace.objects.filter(pk=ws.pk).update(deleted=True),
    ]
    for i, change in enumerate(changes):
        before = client.get("workspaces?q=deleted:true" if i == len(changes) - 1 else "workspaces").content
        change()
        for path in ("workspaces", "workspaces?q=deleted:true"):
            after = client.get(path).content
            assert after == _as_model_instances_render(owner, path), (i, path)
        assert after != before, i


def test_it_moves_a_pending_jobs_queue_position_while_its_row_stays(
    member: Any, workspace_for: Any, api_as: Any
) -> None:
    made = [workspace_for(member, name=f"queued-{i}") for i in range(2)]
    client = api_as(member)

    def positions() -> dict[str, tuple[int, int]]:
        r = client.get("workspaces")
        assert r.content == _as_model_instances_render(member, "workspaces")
        jobs = {w["name"]: w["latest_build"]["job"] for w in r.json()["workspaces"]}
        return {name: (job["queue_position"], job["queue_size"]) for name, job in jobs.items()}

    # Behind the template's import, pending too (no daemon).
    assert positions() == {"queued-0": (2, 3), "queued-1": (3, 3)}
    # The import runs: the builds' rows are unchanged, their places in the queue are not.
    ProvisionerJob.objects.filter(pk=made[0].template.active_version.job_id).update(started_at=timezone.now())
    assert positions() == {"queued-0": (1, 2), "queued-1": (2, 2)}


def test_it_fails_a_running_build_whose_heartbeat_stops_while_its_row_stays(
    member: Any, workspace_for: Any, api_as: Any
) -> None:
    from datetime import timedelta

    import time_machine

    ws = workspace_for(member, name="busy")
    t0 = timezone.now()
    ProvisionerJob.objects.filter(pk=ws.latest_build.job_id).update(started_at=t0, updated_at=t0)
    client = api_as(member)

    def status() -> tuple[str, str]:
        r = client.get("workspaces")
        assert r.content == _as_model_instances_render(member, "workspaces")
        build = r.json()["workspaces"][0]["latest_build"]
        return build["status"], build["job"]["status"]

    with time_machine.travel(t0 + timedelta(seconds=5), tick=False) as clock:
        assert status() == ("starting", "running")
        clock.move_to(t0 + timedelta(seconds=31))
        assert status() == ("failed", "failed")


def test_it_reads_a_page_of_everyones_workspaces_in_the_indexs_order(
    owner: Any, member: Any, workspace_for: Any
) -> None:
    from coderd.pagination import Page
    from coderd.workspaces.api import _filter_workspaces
    from coderd.workspaces.listing import _select

    for i in range(3):
        workspace_for(member, name=f"ws-{i}")
    for q in ("", "name:ws"):
        sql, params = _select(
            Page(limit=2, offset=0).apply(_filter_workspaces(owner, q))
        ).query.sql_with_params()
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                cursor.execute("SET LOCAL enable_sort = off")  # tiny tables: it would sort them anyway
                cursor.execute(f"EXPLAIN {sql}", params)
                plan = "\n".join(r[0] for r in cursor.fetchall())
                assert "Sort" not in plan and "workspace_list_order" in plan, plan
            else:
                cursor.execute(f"EXPLAIN QUERY PLAN {sql}", params)
                plan = "\n".join(r[-1] for r in cursor.fetchall())
                assert "TEMP B-TREE" not in plan and "workspace_list_order" in plan, plan
