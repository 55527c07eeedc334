"""Workspace.latest_version_id / latest_version_name / latest_transition / latest_job_state /
owner_username / template_name: the copies of the latest build, its job's status and the label names
that the metrics' refresh reads, kept by database triggers (migration
workspaces 0002) through every writer: the services, the daemons' queue, the reaper, raw update(),
bulk inserts, a save() of a stale instance. Runs on whichever database the suite runs on (SQLite, or
PostgreSQL in .ci/run's PostgreSQL pass)."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db.models import Count, F
from django.utils import timezone

from coderd.workspaces.models import Workspace, WorkspaceBuild
from coderd.workspaces.services import cancel_build, create_build
from metrics.database import query_counts
from provisioner import queue, reaper
from provisioner.jobs import cancel_job
from provisioner.models import HEARTBEAT_STALE_AFTER, JobStatus, ProvisionerJob, status_expression
from tests.fixtures import finish_job, make_echo_template, make_workspace

pytestmark = pytest.mark.django_db(transaction=True)


def truth() -> dict:
    """Each workspace's copies computed from its latest build and job (the heartbeat aside)."""
    out = {}
    for ws in Workspace.objects.select_related("owner", "template"):
        names = (ws.owner.username, ws.template.name)
        build = (
            WorkspaceBuild.objects.select_related("job", "template_version")
            .filter(pk=ws.latest_build_id)
            .first()
        )
        if build is None:
            out[ws.pk] = (None, None, None, None, *names)
            continue
        status = build.job.get_status(build.job.updated_at)  # judged at its own heartbeat: never stale
        out[ws.pk] = (
            build.template_version_id,
            build.transition,
            status,
            build.template_version.name,
            *names,
        )
    return out


COPIES = (
    "latest_version_id",
    "latest_transition",
    "latest_job_state",
    "latest_version_name",
    "owner_username",
    "template_name",
)


def copies() -> dict:
    return {pk: tuple(rest) for pk, *rest in Workspace.objects.values_list("pk", *COPIES)}


def assert_kept() -> dict:
    stored = copies()
    assert stored == truth()
    return stored


def state_of(ws) -> str | None:
    return Workspace.objects.values_list("latest_job_state", flat=True).get(pk=ws.pk)


@pytest.fixture
def ready_template(owner):
    template = make_echo_template(owner, name="tpl")
    ProvisionerJob.objects.filter(type="template_version_import").update(
        started_at=timezone.now(), completed_at=timezone.now()
    )
    return template


def claim_for(daemon, job_id, now):
    job = queue.claim(daemon.id, ["echo"], now)
    assert job is not None and job.id == job_id
    return job


def test_it_copies_a_new_workspace_and_follows_its_job_through_the_queue(owner, ready_template):
    now = timezone.now()
    ws = make_workspace(owner, ready_template, name="w1")
    stored = assert_kept()
    build = ws.latest_build
    assert stored[ws.pk] == (build.template_version_id, "start", "pending", "tpl-v1", "owner", "tpl")

    daemon = queue.register_daemon("d1", ["echo"], now)
    claim_for(daemon, build.job_id, now)
    assert state_of(ws) == "running"
    queue.heartbeat(build.job_id, daemon.id, now + timedelta(seconds=5))  # updated_at only
    assert state_of(ws) == "running"
    queue.complete(build.job_id, now + timedelta(seconds=10), daemon_id=daemon.id)
    assert state_of(ws) == "succeeded"
    assert_kept()

    stop = create_build(owner, ws, "stop")
    assert copies()[ws.pk][:3] == (stop.template_version_id, "stop", "pending")
    claim_for(daemon, stop.job_id, now)
    queue.fail(stop.job_id, now + timedelta(seconds=20), "boom", daemon_id=daemon.id)
    assert state_of(ws) == "failed"
    assert_kept()


def test_it_follows_cancels_the_reaper_and_raw_updates(owner, ready_template):
    now = timezone.now()
    a, b, c = (make_workspace(owner, ready_template, name=n) for n in ("a", "b", "c"))
    cancel_build(owner, a.latest_build, now)  # pending: canceled outright
    assert state_of(a) == "canceled"

    daemon = queue.register_daemon("d1", ["echo"], now)
    claim_for(daemon, b.latest_build.job_id, now)
    cancel_job(b.latest_build.job, now)  # running: canceling until its daemon stops
    assert state_of(b) == "canceling"
    queue.complete(b.latest_build.job_id, now, error="canceled", daemon_id=daemon.id)
    assert state_of(b) == "canceled"

    claim_for(daemon, c.latest_build.job_id, now)
    reaper.run_once(now + timedelta(hours=2), threshold=timedelta(minutes=1))  # no heartbeat: failed
    assert state_of(c) == "failed"
    assert_kept()

    # Writers that bypass the services: update() and a save() of an instance read before a change.
    ProvisionerJob.objects.filter(pk=a.latest_build.job_id).update(canceled_at=None)
    assert state_of(a) == "pending"  # it never started
    ProvisionerJob.objects.filter(pk=a.latest_build.job_id).update(started_at=now)
    assert state_of(a) == "succeeded"
    stale_instance = Workspace.objects.get(pk=c.pk)
    ProvisionerJob.objects.filter(pk=c.latest_build.job_id).update(error="")
    assert state_of(c) == "succeeded"
    stale_instance.name = "renamed"
    stale_instance.save()  # writes the old "failed" back: the trigger recomputes it
    assert state_of(c) == "succeeded"
    WorkspaceBuild.objects.filter(pk=c.latest_build_id).update(transition="delete")
    assert copies()[c.pk][1] == "delete"
    assert_kept()


def test_it_clears_the_copies_when_the_latest_build_goes(owner, ready_template):
    ws = make_workspace(owner, ready_template, name="w")
    first = ws.latest_build
    finish_job(first.job)
    second = create_build(owner, ws, "stop")
    Workspace.objects.filter(pk=ws.pk).update(latest_build=first)  # back to an older build
    assert copies()[ws.pk][:3] == (first.template_version_id, "start", "succeeded")
    Workspace.objects.filter(pk=ws.pk).update(latest_build=None)
    assert copies()[ws.pk] == (None, None, None, None, "owner", "tpl")
    Workspace.objects.filter(pk=ws.pk).update(latest_build=second)
    assert copies()[ws.pk][:3] == (second.template_version_id, "stop", "pending")
    assert_kept()


def test_it_follows_renamed_owners_templates_and_versions(owner, ready_template):
    from coderd.users.models import User
    from coderd.workspaces.models import Template, TemplateVersion

    ws = make_workspace(owner, ready_template, name="w")
    other = make_workspace(owner, ready_template, name="w2")
    User.objects.filter(pk=owner.pk).update(username="renamed-owner")
    Template.objects.filter(pk=ready_template.pk).update(name="renamed-tpl")
    TemplateVersion.objects.filter(pk=ws.latest_build.template_version_id).update(name="v-renamed")
    for w in (ws, other):
        assert copies()[w.pk][3:] == ("v-renamed", "renamed-owner", "renamed-tpl")
    owner.refresh_from_db()
    owner.username = "saved-owner"
    owner.save()  # a model save, as the API's PATCH does
    assert copies()[ws.pk][4] == "saved-owner"
    assert_kept()


def test_it_copies_bulk_inserted_data_and_counts_exactly_what_the_joins_count(db):
    # The seed inserts workspaces before their builds (foreign keys checked at commit): the build's
    # insert fills its workspace in.
    call_command("seed_metrics_data", users=40, workspaces=200, templates=3, no_progress=True, stdout=None)
    # Heartbeats: some running jobs fresh, some stale (failed when counted).
    now = timezone.now()
    running = ProvisionerJob.objects.filter(
        started_at__isnull=False, completed_at__isnull=True, canceled_at=None
    )
    ids = list(running.values_list("pk", flat=True))
    assert len(ids) >= 2
    ProvisionerJob.objects.filter(pk__in=ids[::2]).update(updated_at=now)
    ProvisionerJob.objects.filter(pk__in=ids[1::2]).update(updated_at=now - 2 * HEARTBEAT_STALE_AFTER)
    # Some deleted workspaces too, never one with a running job: which 7 would be left to UUID order
    # (random), and deleting the fresh running ones would leave no "running" row to check (it did).
    gone = Workspace.objects.exclude(latest_build__job_id__in=ids).values_list("pk", flat=True)[:7]
    Workspace.objects.filter(pk__in=list(gone)).update(deleted=True)
    assert_kept()

    # The reference: the joins to the latest build and job, the status rule as SQL.
    joined = (
        Workspace.objects.filter(deleted=False, latest_build__isnull=False)
        .values(
            t=F("template__name"),
            v=F("latest_build__template_version__name"),
            o=F("owner__username"),
            tr=F("latest_build__transition"),
            s=status_expression(now, prefix="latest_build__job__"),
        )
        .annotate(n=Count("id"))
        .order_by()
    )
    expected = Counter({(r["s"], r["t"], r["v"], r["o"], r["tr"]): r["n"] for r in joined})
    counts = query_counts(now)
    got = Counter({tuple(row[:5]): row[5] for row in counts.per_template})
    assert len(got) == len(counts.per_template)  # each label set once
    assert got == expected
    assert sum(1 for k in got if k[0] == JobStatus.RUNNING) >= 1
    assert counts.latest_build == {
        s: sum(n for k, n in expected.items() if k[0] == s) for s in counts.latest_build
    }


def test_it_turns_the_garbage_collector_back_on_after_counting(owner, ready_template, monkeypatch):
    import gc

    from metrics import database

    make_workspace(owner, ready_template, name="w")
    seen = []
    real = database._latest_build_rows

    def spy(now, kept):
        seen.append(gc.isenabled())
        return real(now, kept)

    monkeypatch.setattr(database, "_latest_build_rows", spy)
    counts = query_counts(timezone.now())
    assert seen == [False] and gc.isenabled()
    assert counts.latest_build["pending"] == 1

    def broken(now, kept):
        raise RuntimeError("database gone")

    monkeypatch.setattr(database, "_latest_build_rows", broken)
    with pytest.raises(RuntimeError):
        query_counts(timezone.now())
    assert gc.isenabled()
