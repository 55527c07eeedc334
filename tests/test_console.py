"""The admin as an operator console: the overview's numbers and who sees them, workspaces as Coder
shows them (state, builds, start/stop/delete), times people read, daemon rows that stay true, the
admin's session on the log-following websocket. The browser drives the same pages in
tests/test_console_browser.py."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from django.test import Client
from django.utils import timezone
from prometheus_client.samples import Sample

from coderd import console
from coderd.admin import format_seconds, when
from coderd.users.models import User
from coderd.workspaces.models import Workspace, WorkspaceBuild
from coderd.workspaces.status import workspace_status
from provisioner import queue, reaper
from provisioner.models import ProvisionerDaemon, ProvisionerJob
from tests.fixtures import PASSWORD, finish_job, metrics_installed, token_for

pytestmark = pytest.mark.django_db

OVERVIEW = "/admin/console/overview.json"
WORKSPACES = "/admin/workspaces/workspace/"


def client_for(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def fresh_metrics() -> Any:
    with metrics_installed(refresh_interval=60.0) as state:
        yield state


# --- the overview ----------------------------------------------------------------------------------


def test_it_shows_the_overview_to_owners_and_auditors_only(
    fresh_metrics: Any, owner: Any, auditor: Any, member: Any, template_admin: Any, workspace_for: Any
) -> None:
    workspace_for(member, name="secret-ws")
    for user in (owner, auditor):
        client = client_for(user)
        page = client.get("/admin/")
        assert page.status_code == 200
        assert 'id="coderd-overview"' in page.content.decode()
        data = client.get(OVERVIEW).json()
        assert data["workspaces"]["pending"] == 1
    for user in (member, template_admin):
        client = client_for(user)
        assert client.get("/admin/").status_code == 302  # the admin's login: not staff
        response = client.get(OVERVIEW)
        assert response.status_code == 302 and "secret-ws" not in response.content.decode()
    assert Client().get(OVERVIEW).status_code == 302
    assert client_for(owner).post(OVERVIEW).status_code == 405


def test_it_lets_auditors_read_and_change_nothing(auditor: Any, member: Any, workspace_for: Any) -> None:
    workspace = workspace_for(member, name="dev")
    client = client_for(auditor)
    assert client.get(WORKSPACES).status_code == 200
    page = client.get(f"{WORKSPACES}{workspace.pk}/change/").content.decode()
    assert "dev" in page and ">Stop</button>" not in page  # not theirs to change
    assert client.get("/admin/users/user/add/").status_code == 403
    response = client.post(f"{WORKSPACES}{workspace.pk}/build/stop/")
    assert response.status_code == 403
    assert workspace.builds.count() == 1


def test_it_counts_what_the_api_says(
    fresh_metrics: Any, owner: Any, member: Any, workspace_for: Any, api_as: Any
) -> None:
    running = workspace_for(member, name="up")
    finish_job(running.latest_build.job)
    failed = workspace_for(member, name="broken")
    finish_job(failed.latest_build.job, error="terraform apply: exit status 1")
    workspace_for(owner, name="waiting")
    gone = workspace_for(owner, name="gone")
    finish_job(gone.latest_build.job)
    stop = client_for(owner).post(f"{WORKSPACES}{gone.pk}/build/delete/")
    assert stop.status_code == 302
    finish_job(Workspace.objects.get(pk=gone.pk).latest_build.job)

    data = client_for(owner).get(OVERVIEW).json()
    api = api_as(owner).get("/api/v2/workspaces").json()
    by_api: dict[str, int] = {}
    for w in api["workspaces"]:
        build = w["latest_build"]
        state = workspace_status(build["transition"], build["job"]["status"])
        by_api[state] = by_api.get(state, 0) + 1
    assert (
        {k: v for k, v in data["workspaces"].items() if v}
        == by_api
        == {
            "running": 1,
            "failed": 1,
            "pending": 1,
        }
    )
    assert data["jobs"]["pending"] == ProvisionerJob.objects.pending().count() == 2  # a build, an import
    oldest = ProvisionerJob.objects.pending().order_by("created_at").first().created_at
    assert data["jobs"]["oldest_pending_at"] == oldest.isoformat()
    assert 0 <= data["jobs"]["oldest_wait_seconds"] < 60
    assert data["failed_builds"]["count"] == 1
    [failure] = data["failed_builds"]["newest"]
    assert failure["workspace"] == "broken" and failure["owner"] == "member"
    assert failure["error"] == "terraform apply: exit status 1"
    assert failure["url"] == f"/admin/workspaces/workspacebuild/{failed.latest_build.pk}/change/"


def test_it_recounts_after_a_change_but_not_at_every_view(
    fresh_metrics: Any, owner: Any, workspace_for: Any
) -> None:
    calls = []
    real_query = fresh_metrics.database.query
    fresh_metrics.database.query = lambda now: calls.append(now) or real_query(now)
    client = client_for(owner)
    assert sum(client.get(OVERVIEW).json()["workspaces"].values()) == 0
    client.get(OVERVIEW)
    assert len(calls) == 1  # the second view read the cached counts
    workspace_for(owner, name="new")  # marks the counts stale
    counts = fresh_metrics.database.store.load()
    counts.computed_at -= console.RECOUNT_AT_MOST_EVERY  # as if the last count were old enough
    assert client.get(OVERVIEW).json()["workspaces"]["pending"] == 1
    assert len(calls) == 2


def test_it_lists_failed_builds_newest_first_within_the_hour(
    fresh_metrics: Any, owner: Any, workspace_for: Any, monkeypatch: Any
) -> None:
    now = timezone.now()
    old = workspace_for(owner, name="old")
    finish_job(old.latest_build.job, error="old failure", now=now - timedelta(hours=2))
    first = workspace_for(owner, name="first")
    finish_job(first.latest_build.job, error="first failure", now=now - timedelta(minutes=5))
    second = workspace_for(owner, name="second")
    finish_job(second.latest_build.job, error="second failure", now=now - timedelta(minutes=1))
    data = console.health(now)
    assert data["failed_builds"]["count"] == 2
    assert [b["workspace"] for b in data["failed_builds"]["newest"]] == ["second", "first"]
    monkeypatch.setattr(console, "FAILED_BUILDS_SHOWN", 1)
    data = console.health(now)
    assert data["failed_builds"]["count"] == 2  # counted, not the length of the list
    assert [b["workspace"] for b in data["failed_builds"]["newest"]] == ["second"]


def test_it_tells_online_from_stale_daemons(fresh_metrics: Any, owner: Any) -> None:
    now = timezone.now()
    ProvisionerDaemon.objects.create(name="live", last_seen_at=now)
    ProvisionerDaemon.objects.create(name="silent", last_seen_at=now - timedelta(minutes=5))
    ProvisionerDaemon.objects.create(name="stopped", last_seen_at=now, stopped_at=now)
    ProvisionerDaemon.objects.create(name="ancient", last_seen_at=now - timedelta(days=3))
    assert console.health(now)["daemons"] == {"online": 1, "stale": 2}


# --- traffic ---------------------------------------------------------------------------------------


class _Family:
    def __init__(self, *samples: Sample) -> None:
        self.samples = list(samples)


def _reading(t: float, requests: float, errors: float, fast: float, slow: float) -> console.Sample:
    """`fast` requests under 10 ms, `slow` ones between 100 and 500 ms (cumulative)."""
    lat = "coderd_api_request_latencies_seconds_bucket"
    return console.read_sample(
        [
            _Family(
                Sample("coderd_api_requests_processed_total", {"code": "200"}, requests - errors),
                Sample("coderd_api_requests_processed_total", {"code": "503"}, errors),
            ),
            _Family(
                Sample(lat, {"le": "0.01", "path": "/a"}, fast),
                Sample(lat, {"le": "0.1", "path": "/a"}, fast),
                Sample(lat, {"le": "0.5", "path": "/a"}, fast + slow),
                Sample(lat, {"le": "+Inf", "path": "/a"}, fast + slow),
            ),
            _Family(Sample("coderd_api_concurrent_websockets", {}, 3)),
        ],
        t,
    )


def test_it_turns_counters_into_rates_and_quantiles() -> None:
    history = console.TrafficHistory(size=3)
    history.record(_reading(100.0, requests=10, errors=0, fast=10, slow=0))
    history.record(_reading(110.0, requests=110, errors=5, fast=100, slow=10))
    [point] = history.points()
    assert point["rps"] == pytest.approx(10.0)
    assert point["errors_per_second"] == pytest.approx(0.5)
    assert point["error_ratio"] == pytest.approx(0.05)
    assert point["p50_ms"] < 10  # 90 of the 100 new requests were fast
    assert 100 < point["p95_ms"] <= 500
    assert point["websockets"] == 3
    assert point["job_mean_s"] is None  # no job ended: no value rather than zero
    for t in (120.0, 130.0):
        history.record(_reading(t, requests=110, errors=5, fast=100, slow=10))
    assert len(history.samples()) == 3  # a ring: the oldest fell out
    assert history.points()[-1]["rps"] == 0 and history.points()[-1]["p50_ms"] is None


def test_it_samples_the_served_metrics(fresh_metrics: Any, owner: Any) -> None:
    history = console.TrafficHistory()
    console.take_sample(history, t=1.0)
    client = client_for(owner)
    for _ in range(3):
        client.get("/healthz")
    client.get("/api/v2/no-such-route")
    console.take_sample(history, t=11.0)
    [point] = history.points()
    assert point["rps"] == pytest.approx(0.4)  # 4 requests in 10 s
    assert point["p95_ms"] is not None


def test_it_serves_the_traffic_points_in_the_overview(
    fresh_metrics: Any, owner: Any, monkeypatch: Any
) -> None:
    history = console.TrafficHistory()
    history.record(_reading(100.0, requests=0, errors=0, fast=0, slow=0))
    history.record(_reading(110.0, requests=20, errors=0, fast=20, slow=0))
    monkeypatch.setattr(console, "HISTORY", history)
    points = client_for(owner).get(OVERVIEW).json()["traffic"]["points"]
    assert [p["rps"] for p in points] == [2.0]


# --- workspaces as Coder shows them ---------------------------------------------------------------


def test_it_hides_deleted_workspaces_unless_asked(owner: Any, workspace_for: Any) -> None:
    live = workspace_for(owner, name="live")
    gone = workspace_for(owner, name="gone")
    Workspace.objects.filter(pk=gone.pk).update(deleted=True)
    client = client_for(owner)

    def names(**query: str) -> list[str]:
        return [w.name for w in client.get(WORKSPACES, query).context["cl"].result_list]

    assert names() == [live.name]
    assert names(deleted="yes") == ["gone"]
    assert sorted(names(deleted="all")) == ["gone", "live"]
    finish_job(gone.latest_build.job)  # its state is now "running": asking for it by state finds it
    assert names(state="running") == []  # still hidden: deleted
    assert names(state="running", deleted="all") == ["gone"]


def test_it_follows_only_logs_still_being_written(owner: Any, workspace_for: Any) -> None:
    workspace = workspace_for(owner, name="dev")
    build, version = workspace.latest_build, workspace.template.active_version
    client = client_for(owner)

    def follow(url: str) -> str | None:
        page = client.get(url).content.decode()
        marker = 'data-follow="'
        return page.split(marker, 1)[1].split('"', 1)[0].replace("&amp;", "&") if marker in page else None

    build_page = f"/admin/workspaces/workspacebuild/{build.pk}/change/"
    version_page = f"/admin/workspaces/templateversion/{version.pk}/change/"
    assert follow(build_page) == f"/api/v2/workspacebuilds/{build.pk}/logs?follow&after=0"
    assert follow(version_page) == f"/api/v2/templateversions/{version.pk}/logs?follow&after=0"
    finish_job(build.job)
    finish_job(version.job)
    assert follow(build_page) is None and follow(version_page) is None


def test_it_lists_newest_first(owner: Any, workspace_for: Any) -> None:
    names = [f"ws{i}" for i in range(4)]
    for i, name in enumerate(names):
        w = workspace_for(owner, name=name)
        Workspace.objects.filter(pk=w.pk).update(created_at=timezone.now() + timedelta(seconds=i))
    client = client_for(owner)
    listed = [w.name for w in client.get(WORKSPACES).context["cl"].result_list]
    assert listed == names[::-1]
    builds = client.get("/admin/workspaces/workspacebuild/").context["cl"].result_list
    assert [b.created_at for b in builds] == sorted((b.created_at for b in builds), reverse=True)


def test_it_shows_a_workspaces_builds_and_builds_from_its_page(
    owner: Any, member: Any, workspace_for: Any
) -> None:
    workspace = workspace_for(member, name="dev")
    finish_job(workspace.latest_build.job)
    client = client_for(owner)
    page_url = f"{WORKSPACES}{workspace.pk}/change/"
    page = client.get(page_url).content.decode()
    assert 'class="coderd-builds"' in page and "#1</a>" in page and "running</span>" in page
    assert ">Start</button>" in page and ">Stop</button>" in page

    response = client.post(f"{WORKSPACES}{workspace.pk}/build/stop/")
    stop = WorkspaceBuild.objects.get(workspace=workspace, build_number=2)
    assert response.status_code == 302
    assert response["Location"] == f"/admin/workspaces/workspacebuild/{stop.pk}/change/"
    assert stop.transition == "stop" and stop.initiator == owner
    page = client.get(page_url).content.decode()
    assert "#2</a>" in page and "pending</span>" in page

    # A refusal from the service (a build is already running) is a message, not an error page.
    response = client.post(f"{WORKSPACES}{workspace.pk}/build/start/", follow=True)
    assert response.status_code == 200
    assert any("dev" in str(m) for m in response.context["messages"])
    assert workspace.builds.count() == 2


def test_it_asks_before_deleting_a_workspace(owner: Any, workspace_for: Any) -> None:
    workspace = workspace_for(owner, name="doomed")
    finish_job(workspace.latest_build.job)
    client = client_for(owner)
    confirm = client.get(f"{WORKSPACES}{workspace.pk}/build/delete/")
    assert confirm.status_code == 200 and "Yes, delete it" in confirm.content.decode()
    assert workspace.builds.count() == 1  # asking changed nothing
    client.post(f"{WORKSPACES}{workspace.pk}/build/delete/")
    assert workspace.builds.order_by("-build_number").first().transition == "delete"
    assert client.post(f"{WORKSPACES}{workspace.pk}/build/explode/").status_code == 403


def test_it_keeps_a_members_workspace_from_other_members(
    member: Any, other_member: Any, workspace_for: Any
) -> None:
    workspace = workspace_for(member, name="mine")
    client = client_for(other_member)
    assert client.post(f"{WORKSPACES}{workspace.pk}/build/stop/").status_code == 302  # to the login
    assert workspace.builds.count() == 1


# --- times ------------------------------------------------------------------------------------------


def test_it_says_how_long_ago_with_the_exact_time_on_hover() -> None:
    moment = timezone.now() - timedelta(minutes=3, seconds=2)
    html = when(moment)
    assert "3\xa0minutes ago" in html
    assert f'title="{moment.strftime("%Y-%m-%d %H:%M:%S")} UTC"' in html
    assert when(None) == "-"


def test_it_writes_durations_for_people() -> None:
    assert [format_seconds(s) for s in (0.25, 12.44, 185, 7620)] == [
        "250 ms",
        "12.4 s",
        "3 m 05 s",
        "2 h 07 m",
    ]


def test_it_shows_seconds_and_durations_on_pages(owner: Any, workspace_for: Any) -> None:
    workspace = workspace_for(owner, name="timed")
    job = workspace.latest_build.job
    start = timezone.now() - timedelta(seconds=75)
    ProvisionerJob.objects.filter(pk=job.pk).update(started_at=start)
    finish_job(ProvisionerJob.objects.get(pk=job.pk), now=start + timedelta(seconds=65))
    client = client_for(owner)
    page = client.get(
        f"/admin/workspaces/workspacebuild/{workspace.latest_build.pk}/change/"
    ).content.decode()
    assert "1 m 05 s" in page
    created = workspace.latest_build.created_at
    assert created.strftime("%Y-%m-%d %H:%M:%S") in page  # a readonly field, to the second
    listing = client.get(WORKSPACES).content.decode()
    assert "<time datetime=" in listing


def test_it_shows_last_seen_once_a_user_logged_in(owner: Any, member: Any) -> None:
    assert User.objects.get(pk=member.pk).last_seen_at is None
    token_for(member, login_type="password")
    seen = User.objects.get(pk=member.pk).last_seen_at
    assert seen is not None and timezone.now() - seen < timedelta(seconds=5)
    listing = client_for(owner).get("/admin/users/user/").context["cl"].result_list
    assert next(u for u in listing if u.pk == member.pk).last_seen_at == seen


# --- daemon rows ------------------------------------------------------------------------------------


def test_it_reuses_a_daemons_row_when_it_restarts_at_once(db: Any) -> None:
    now = timezone.now()
    first = queue.register_daemon("host-0", ["echo"], now)
    queue.daemon_gone(first.id, now + timedelta(seconds=1))
    again = queue.register_daemon("host-0", ["echo"], now + timedelta(seconds=2))
    assert again.id == first.id and again.stopped_at is None
    # Two live daemons under one name (two processes on one host) still get a row each.
    twin = queue.register_daemon("host-0", ["echo"], now + timedelta(seconds=3))
    assert twin.id != first.id
    assert ProvisionerDaemon.objects.count() == 2


def test_it_forgets_daemons_silent_for_a_day(owner: Any, workspace_for: Any) -> None:
    now = timezone.now()
    old = ProvisionerDaemon.objects.create(name="retired", last_seen_at=now - timedelta(days=2))
    workspace = workspace_for(owner)
    ProvisionerJob.objects.filter(pk=workspace.latest_build.job_id).update(worker=old)
    recent = ProvisionerDaemon.objects.create(name="recent", last_seen_at=now - timedelta(hours=2))
    reaper.run_once(now)
    assert list(ProvisionerDaemon.objects.values_list("name", flat=True)) == [recent.name]
    assert ProvisionerJob.objects.get(pk=workspace.latest_build.job_id).worker is None  # history kept


def test_it_lists_daemons_seen_lately_by_default(owner: Any) -> None:
    now = timezone.now()
    ProvisionerDaemon.objects.create(name="now", last_seen_at=now)
    ProvisionerDaemon.objects.create(name="stopped", last_seen_at=now, stopped_at=now)
    ProvisionerDaemon.objects.create(name="long-gone", last_seen_at=now - timedelta(days=2))
    client = client_for(owner)

    def names(**query: str) -> set[str]:
        cl = client.get("/admin/provisioner/provisionerdaemon/", query).context["cl"]
        return {d.name for d in cl.result_list}

    assert names() == {"now", "stopped"}
    assert names(seen="online") == {"now"}
    assert names(seen="all") == {"now", "stopped", "long-gone"}


# --- the admin's session on the follow websocket ------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_it_follows_logs_with_the_admin_session(
    owner: Any, member: Any, other_member: Any, workspace_for: Any
) -> None:
    from coderd.asgi import application

    build = workspace_for(member, name="dev").latest_build
    path = f"/api/v2/workspacebuilds/{build.pk}/logs?follow"

    def session_cookie(user: Any) -> bytes:
        client = Client()
        assert client.login(username=user.email, password=PASSWORD)
        return f"sessionid={client.cookies['sessionid'].value}".encode()

    async def connects(cookie: bytes, origin: bytes = b"http://localhost") -> bool:
        headers = [(b"origin", origin), (b"host", b"localhost"), (b"cookie", cookie)]
        comm = WebsocketCommunicator(application, path, headers=headers)
        connected, _ = await comm.connect(timeout=5)
        await comm.disconnect()
        return connected

    owner_cookie = session_cookie(owner)
    assert async_to_sync(connects)(owner_cookie)
    assert not async_to_sync(connects)(owner_cookie, origin=b"http://evil.example")
    assert not async_to_sync(connects)(session_cookie(other_member))  # not their workspace
    assert not async_to_sync(connects)(b"sessionid=forged")
    User.objects.filter(pk=owner.pk).update(status="suspended")
    assert not async_to_sync(connects)(owner_cookie)
