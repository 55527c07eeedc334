"""WorkspaceGaugeCount: live workspaces per label set of coderd_workspace_latest_build_status, kept
from the changes the workspace triggers append (migration workspaces 0004) and folded in by the
metrics' refresh. Runs on whichever database the suite runs on (SQLite, or PostgreSQL in .ci/run's
PostgreSQL pass, where the concurrent builds below would deadlock or double-count if the folding
were wrong)."""

from __future__ import annotations

import random
from collections import Counter
from datetime import timedelta

import pytest
from django.db.models import Count
from django.utils import timezone

from coderd.users.models import User
from coderd.workspaces.models import Template, TemplateVersion, Workspace, WorkspaceGaugeCount
from coderd.workspaces.services import cancel_build, create_build
from metrics.database import fold_gauge_changes, query_counts
from provisioner.models import ProvisionerJob
from tests.fixtures import finish_job, make_echo_template, make_user, make_workspace
from tests.test_api_races import race

pytestmark = pytest.mark.django_db(transaction=True)

LABELS = ("latest_job_state", "template_name", "latest_version_name", "owner_username", "latest_transition")


def recount() -> Counter:
    """The live workspaces grouped by their copies, as the refresh used to count them."""
    rows = (
        Workspace.objects.filter(deleted=False, latest_job_state__isnull=False)
        .values(*LABELS)
        .annotate(n=Count("id"))
        .order_by()
    )
    return Counter({tuple(r[k] for k in LABELS): r["n"] for r in rows})


def folded() -> Counter:
    fold_gauge_changes()
    rows = WorkspaceGaugeCount.objects.values_list(
        "status", "template_name", "template_version", "workspace_owner", "workspace_transition", "n"
    )
    counts = Counter({tuple(r[:5]): r[5] for r in rows})
    assert all(n > 0 for n in counts.values())  # no label set left at 0
    return counts


def refreshed() -> Counter:
    """What a refresh counts (no fold: only the reaper folds), running jobs judged fresh."""
    counts = query_counts(timezone.now() - timedelta(days=1))
    return Counter({tuple(row[:5]): row[5] for row in counts.per_template})


@pytest.fixture
def ready_template(owner):
    template = make_echo_template(owner, name="tpl")
    ProvisionerJob.objects.filter(type="template_version_import").update(
        started_at=timezone.now(), completed_at=timezone.now()
    )
    return template


def test_it_equals_a_recount_through_random_builds_deletions_and_renames(owner, ready_template):
    rng = random.Random(11)
    alice = make_user(owner, "alice")
    people = [owner, alice]
    workspaces = []
    for step in range(120):
        live = [w for w in workspaces if not w.deleted]
        action = rng.choice(
            ["create", "build", "finish", "fail", "cancel", "delete", "rename"] if live else ["create"]
        )
        if action == "create":
            workspaces.append(make_workspace(rng.choice(people), ready_template, name=f"w{step}"))
        elif action == "build":
            ws = rng.choice(live)
            ws.refresh_from_db()
            if ws.latest_build.job.completed_at is not None:
                create_build(ws.owner, ws, rng.choice(["start", "stop"]))
        elif action in ("finish", "fail"):
            ws = rng.choice(live)
            ws.refresh_from_db()
            job = ws.latest_build.job
            if job.completed_at is None and job.canceled_at is None:
                finish_job(job, error="boom" if action == "fail" else "")
        elif action == "cancel":
            ws = rng.choice(live)
            ws.refresh_from_db()
            if ws.latest_build.job.completed_at is None and ws.latest_build.job.canceled_at is None:
                cancel_build(ws.owner, ws.latest_build, timezone.now())
        elif action == "delete":
            ws = rng.choice(live)
            Workspace.objects.filter(pk=ws.pk).update(deleted=True)
            ws.deleted = True
        else:
            target = rng.choice(["user", "template", "version"])
            if target == "user":
                User.objects.filter(pk=alice.pk).update(username=f"alice{step}")
            elif target == "template":
                Template.objects.filter(pk=ready_template.pk).update(name=f"tpl{step}")
            else:
                TemplateVersion.objects.filter(template=ready_template).update(name=f"v{step}")
        if step % 5 == 0:
            # The refresh between folds: the counts plus the changes not folded yet.
            assert refreshed() == recount()
        if step % 7 == 0:
            assert folded() == recount()
    expected = recount()
    assert folded() == expected
    assert len(expected) >= 3 and sum(expected.values()) >= 5  # the walk did reach several label sets


def test_it_counts_a_soft_deleted_workspace_out_and_an_undeleted_one_back_in(owner, ready_template):
    ws = make_workspace(owner, ready_template, name="w")
    assert folded() == Counter({("pending", "tpl", "tpl-v1", "owner", "start"): 1})
    Workspace.objects.filter(pk=ws.pk).update(deleted=True)
    assert folded() == Counter()
    assert not WorkspaceGaugeCount.objects.exists()  # the label set at 0 is gone, not kept at 0
    Workspace.objects.filter(pk=ws.pk).update(deleted=False)
    assert folded() == recount() == Counter({("pending", "tpl", "tpl-v1", "owner", "start"): 1})


def test_it_folds_the_changes_of_concurrent_builds_exactly_once(owner, ready_template):
    # Several owners' builds, and folds, all at once: builds only append changes, so none waits on
    # another (a deadlock would come back as an exception here on PostgreSQL), and each change is
    # added once whichever fold's snapshot saw it.
    people = [owner] + [make_user(owner, f"racer{i}") for i in range(3)]
    spaces = [make_workspace(p, ready_template, name=f"w{i}") for p in people for i in range(2)]
    for ws in spaces:
        finish_job(ws.latest_build.job)
    fold_gauge_changes()

    def build(ws):
        def run():
            for transition in ("stop", "start", "stop"):
                b = create_build(ws.owner, ws, transition)
                finish_job(b.job)
            return "ok"

        return run

    def fold():
        for _ in range(5):
            fold_gauge_changes()
        return "ok"

    results = race(*(build(ws) for ws in spaces), fold, fold)
    assert results == ["ok"] * (len(spaces) + 2)
    expected = recount()
    assert sum(expected.values()) == len(spaces)
    assert folded() == expected


def test_it_folds_at_each_reaper_pass_with_metrics_off_too(owner, ready_template):
    from coderd.workspaces.models import WorkspaceGaugeChange
    from provisioner import reaper

    make_workspace(owner, ready_template, name="w")
    assert WorkspaceGaugeChange.objects.exists()
    reaper.run_once(timezone.now())
    assert not WorkspaceGaugeChange.objects.exists()
    assert list(WorkspaceGaugeCount.objects.values_list("status", "workspace_owner", "n")) == [
        ("pending", "owner", 1)
    ]


def test_it_fills_the_counts_from_the_workspaces_already_there(owner, ready_template):
    # What migrating an existing database does (workspaces 0004's FILL), on counts emptied first.
    import importlib

    from django.db import connection

    from coderd.workspaces.models import WorkspaceGaugeChange

    migration = importlib.import_module("coderd.workspaces.migrations.0004_gauge_counts")
    for name in ("a", "b", "c"):
        make_workspace(owner, ready_template, name=name)
    finish_job(Workspace.objects.get(name="a").latest_build.job)
    Workspace.objects.filter(name="c").update(deleted=True)
    WorkspaceGaugeChange.objects.all().delete()
    WorkspaceGaugeCount.objects.all().delete()
    with connection.cursor() as cursor:
        cursor.execute(migration.FILL)
    assert (
        folded()
        == recount()
        == Counter(
            {
                ("succeeded", "tpl", "tpl-v1", "owner", "start"): 1,
                ("pending", "tpl", "tpl-v1", "owner", "start"): 1,
            }
        )
    )
