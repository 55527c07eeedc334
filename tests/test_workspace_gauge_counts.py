"""WorkspaceGaugeCount: live workspaces per label set of coderd_workspace_latest_build_status, kept
from the changes the workspace triggers append (migration workspaces 0004), folded in by the
reaper, and read by each process's refresh since the last fold it read (workspaces 0005). Runs on whichever database the suite runs on (SQLite, or PostgreSQL in .ci/run's
PostgreSQL pass, where the concurrent builds below would deadlock or double-count if the folding
were wrong)."""

from __future__ import annotations

import random
import secrets
from collections import Counter
from datetime import timedelta

import pytest
from django.db.models import Count
from django.utils import timezone

from coderd.users.models import User
from coderd.workspaces.models import (
    Template,
    TemplateVersion,
    Workspace,
    WorkspaceGaugeChange,
    WorkspaceGaugeCount,
    WorkspaceGaugeFold,
)
from coderd.workspaces.services import cancel_build, create_build
from metrics import database
from metrics.database import KeptCounts, fold_gauge_changes, query_counts
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
    assert all(n >= 0 for n in counts.values())  # a label set fallen to 0 is kept a while at 0
    return +counts


def refreshed(kept: KeptCounts | None = None) -> Counter:
    """What a refresh counts (no fold: only the reaper folds), running jobs judged fresh; with
    `kept`, a process's copy read since its last fold, else every count."""
    counts = query_counts(timezone.now() - timedelta(days=1), kept)
    got = Counter({tuple(row[:5]): row[5] for row in counts.per_template})
    assert len(got) == len(counts.per_template) and all(n > 0 for n in got.values())
    assert counts.latest_build == {
        s: sum(n for k, n in got.items() if k[0] == s) for s in database.JOB_STATUSES
    }
    return got


@pytest.fixture(autouse=True)
def fold_zero(db):
    # Workspaces 0005 records fold 0 in every database it migrates, but a transaction=True test run
    # earlier in the same worker flushes every table, that row with them: put it back, so that each
    # test starts from the state every deployment is in (without it the first refresh finds no fold
    # to remember and the next one reads every count again).
    WorkspaceGaugeFold.objects.get_or_create(number=0, defaults={"token": secrets.randbits(62)})


@pytest.fixture
def ready_template(owner):
    template = make_echo_template(owner, name="tpl")
    ProvisionerJob.objects.filter(type="template_version_import").update(
        started_at=timezone.now(), completed_at=timezone.now()
    )
    return template


def test_it_equals_a_recount_through_random_builds_deletions_and_renames(owner, ready_template, monkeypatch):
    # Two processes' copies: one refreshing often (always within the folds kept: it never reads
    # every count again), one seldom (further behind than the folds kept: it reads them all).
    monkeypatch.setattr(database, "FOLDS_KEPT", 4)
    monkeypatch.setattr(KeptCounts, "COMPACT_AFTER", 1)  # the copy's rows at 0 dropped now and then
    often, seldom = KeptCounts(), KeptCounts()
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
        if step % 3 == 0:
            assert refreshed(often) == recount()
        if step % 37 == 0:
            assert refreshed(seldom) == recount()
        if step % 7 == 0:
            assert folded() == recount()
    expected = recount()
    assert folded() == expected
    assert refreshed(often) == refreshed(seldom) == expected
    assert len(expected) >= 3 and sum(expected.values()) >= 5  # the walk did reach several label sets
    # The often-refreshed copy read every count once, then only the counts changed since each fold;
    # the seldom one fell behind the folds kept and read them all again.
    assert often.full_reads == 1
    assert seldom.full_reads > 1
    assert often.compactions > 0
    assert WorkspaceGaugeFold.objects.count() <= 4  # the folds kept, no more


def test_it_counts_a_soft_deleted_workspace_out_and_an_undeleted_one_back_in(owner, ready_template):
    ws = make_workspace(owner, ready_template, name="w")
    assert folded() == Counter({("pending", "tpl", "tpl-v1", "owner", "start"): 1})
    Workspace.objects.filter(pk=ws.pk).update(deleted=True)
    assert folded() == Counter()
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

    kept = KeptCounts()
    refreshed(kept)

    def read():
        # A refresh between folds sees a fold whole or not at all (one statement, one snapshot).
        for _ in range(5):
            refreshed(kept)
        return "ok"

    results = race(*(build(ws) for ws in spaces), fold, fold, read)
    assert results == ["ok"] * (len(spaces) + 3)
    expected = recount()
    assert sum(expected.values()) == len(spaces)
    assert folded() == expected
    assert refreshed(kept) == expected
    assert kept.full_reads == 1


def test_it_folds_at_each_reaper_pass_with_metrics_off_too(owner, ready_template):
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


def test_it_reads_only_the_counts_changed_since_the_last_fold_it_read(owner, ready_template):
    people = [owner] + [make_user(owner, f"user{i}") for i in range(4)]
    spaces = [make_workspace(p, ready_template, name="w") for p in people]
    fold_gauge_changes()
    kept = KeptCounts()
    assert refreshed(kept) == recount()
    assert (kept.full_reads, kept.rows_read) == (1, 5)  # the first refresh reads every count
    assert refreshed(kept) == recount()
    assert (kept.full_reads, kept.rows_read) == (1, 5)  # nothing folded since: nothing read
    finish_job(spaces[0].latest_build.job)
    fold_gauge_changes()
    assert refreshed(kept) == recount()
    # The owner's workspace left one label set (now at 0) for another: two counts read, not five.
    assert (kept.full_reads, kept.rows_read) == (1, 7)
    assert ("pending", "tpl", "tpl-v1", "owner", "start") not in refreshed(kept)


def test_it_keeps_a_count_fallen_to_zero_for_the_folds_kept_then_deletes_it(
    owner, ready_template, monkeypatch
):
    monkeypatch.setattr(database, "FOLDS_KEPT", 3)
    ws = make_workspace(owner, ready_template, name="w")
    fold_gauge_changes()
    kept = KeptCounts()
    assert sum(refreshed(kept).values()) == 1
    Workspace.objects.filter(pk=ws.pk).update(deleted=True)
    fold_gauge_changes()
    # Still there at 0: a reader that read before the fall must see it fall.
    assert list(WorkspaceGaugeCount.objects.values_list("workspace_owner", "n")) == [("owner", 0)]
    for i in range(3):
        make_workspace(owner, ready_template, name=f"x{i}")
        fold_gauge_changes()
    assert WorkspaceGaugeCount.objects.filter(n=0).count() == 0
    # Three folds later than the fall (the folds kept): gone, and the reader, behind by more than
    # the folds kept, read every count again.
    assert refreshed(kept) == recount() == Counter({("pending", "tpl", "tpl-v1", "owner", "start"): 3})
    assert kept.full_reads == 2


def test_it_reads_every_count_again_after_a_fold_it_read_was_rolled_back(owner, ready_template):
    # The same fold number, other counts (a rollback, or a database restored from a backup): the
    # token of the fold the copy read differs, so the copy is not trusted.
    from django.db import transaction

    make_workspace(owner, ready_template, name="a")
    fold_gauge_changes()
    kept = KeptCounts()
    refreshed(kept)

    class Undo(Exception):
        pass

    with pytest.raises(Undo), transaction.atomic():
        make_workspace(owner, ready_template, name="b")
        fold_gauge_changes()
        assert sum(refreshed(kept).values()) == 2
        raise Undo
    finish_job(Workspace.objects.get(name="a").latest_build.job)
    fold_gauge_changes()  # the number the rolled-back fold had
    assert refreshed(kept) == recount() == Counter({("succeeded", "tpl", "tpl-v1", "owner", "start"): 1})
    assert kept.full_reads == 2


def test_it_writes_nothing_when_there_is_nothing_to_fold(owner, ready_template):
    make_workspace(owner, ready_template, name="w")
    fold_gauge_changes()
    folds = list(WorkspaceGaugeFold.objects.values_list("number", "token"))
    fold_gauge_changes()
    fold_gauge_changes()
    assert list(WorkspaceGaugeFold.objects.values_list("number", "token")) == folds


def test_it_refreshes_the_collector_from_its_own_copy(owner, ready_template):
    from metrics.database import DatabaseCollector

    make_workspace(owner, ready_template, name="w")
    fold_gauge_changes()
    collector = DatabaseCollector(interval=60)
    collector.refresh()
    make_workspace(owner, ready_template, name="v")
    fold_gauge_changes()
    counts = collector.refresh()
    assert counts.per_template == [("pending", "tpl", "tpl-v1", "owner", "start", 2)]
    assert (collector.kept.full_reads, collector.kept.rows_read) == (1, 2)


def test_it_reads_every_count_again_at_least_once_an_hour(owner, ready_template, monkeypatch):
    # A count changed without a fold number (as workspaces 0004's fold, still running in an older
    # replica during a rolling upgrade, writes them) is not seen by reading since the last fold;
    # the hourly full read puts the copy right again.
    make_workspace(owner, ready_template, name="w")
    fold_gauge_changes()
    kept = KeptCounts()
    refreshed(kept)
    WorkspaceGaugeCount.objects.update(n=5)
    assert sum(refreshed(kept).values()) == 1  # within the hour: not seen
    monkeypatch.setattr(KeptCounts, "FULL_READ_EVERY", 0.0)
    assert sum(refreshed(kept).values()) == 5
    assert kept.full_reads == 2
