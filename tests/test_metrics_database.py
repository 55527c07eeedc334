"""Database gauges (counted, cached, marked stale) and the job metrics the daemons report."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from coderd.users.models import APIKey, User
from metrics import runtime
from metrics.database import JOB_STATUSES, DatabaseCollector
from metrics.observer import MetricsJobObserver
from provisioner.models import ProvisionerJob
from provisioner.observer import BuildInfo
from tests.fixtures import (
    finish_job,
    make_echo_template,
    make_user,
    make_workspace,
    metrics_installed,
    token_for,
)


class Clock:
    def __init__(self) -> None:
        self.now = timezone.now().timestamp()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def state(db):
    with metrics_installed(refresh_interval=60.0) as fresh:
        yield fresh


@pytest.fixture
def clock(state):
    c = Clock()
    state.database.clock = c
    return c


def value(state, name: str, **labels) -> float | None:
    return state.registry.get_sample_value(name, labels)


def latest(state) -> dict[str, float]:
    return {s: value(state, "coderd_api_workspace_latest_build", status=s) for s in JOB_STATUSES}


def test_it_reports_every_status_as_zero_on_an_empty_database(state, clock):
    assert latest(state) == dict.fromkeys(JOB_STATUSES, 0.0)
    assert value(state, "coderd_api_workspace_latest_build_total", status="canceling") == 0.0
    for status in ("active", "dormant", "suspended"):
        assert value(state, "coderd_api_total_user_count", status=status) == 0.0
    assert value(state, "coderd_api_active_users_duration_hour") == 0.0


def test_it_counts_workspaces_by_their_latest_build_status(state, clock, owner):
    template = make_echo_template(owner, name="tpl")
    ws = [make_workspace(owner, template, name=f"ws{i}") for i in range(6)]
    now = timezone.now()
    finish_job(ws[0].latest_build.job)
    finish_job(ws[1].latest_build.job)
    finish_job(ws[2].latest_build.job, error="boom")
    ProvisionerJob.objects.filter(pk=ws[3].latest_build.job_id).update(started_at=now, updated_at=now)
    # A running job whose daemon stopped heart-beating a minute ago counts as failed.
    stale = now - timedelta(minutes=1)
    ProvisionerJob.objects.filter(pk=ws[4].latest_build.job_id).update(started_at=stale, updated_at=stale)
    ProvisionerJob.objects.filter(pk=ws[5].latest_build.job_id).update(canceled_at=now, completed_at=now)
    state.database.mark_stale()

    expected = {"pending": 0, "running": 1, "succeeded": 2, "canceling": 0, "canceled": 1, "failed": 2}
    assert latest(state) == {k: float(v) for k, v in expected.items()}
    for status, n in expected.items():
        assert value(state, "coderd_api_workspace_latest_build_total", status=status) == n
    labels = dict(template_name="tpl", template_version="tpl-v1", workspace_owner="owner")
    status = "coderd_workspace_latest_build_status"
    assert value(state, status, status="succeeded", workspace_transition="start", **labels) == 2
    assert value(state, status, status="failed", workspace_transition="start", **labels) == 2
    assert value(state, status, status="pending", workspace_transition="start", **labels) is None


def test_it_counts_users_by_status_and_active_users_in_the_last_hour(state, clock, owner):
    a, b, c = (make_user(owner, name) for name in ("alice", "bob", "carol"))
    User.objects.filter(pk=b.pk).update(status="dormant")
    User.objects.filter(pk=c.pk).update(status="suspended")
    for user in (owner, a, a):
        token_for(user)  # a fresh key: used now
    token_for(b)
    APIKey.objects.filter(user=b).update(last_used=timezone.now() - timedelta(hours=2))
    state.database.mark_stale()
    assert value(state, "coderd_api_total_user_count", status="active") == 2
    assert value(state, "coderd_api_total_user_count", status="dormant") == 1
    assert value(state, "coderd_api_total_user_count", status="suspended") == 1
    assert value(state, "coderd_api_active_users_duration_hour") == 2


def test_it_serves_cached_counts_until_the_interval_passes(state, clock, owner):
    assert value(state, "coderd_api_total_user_count", status="active") == 1
    make_user(owner, "dave")
    # update() sends no signal: only the interval brings the change.
    User.objects.filter(username="dave").update(status="dormant")
    state.database.store._generation = state.database.store.load().generation
    assert value(state, "coderd_api_total_user_count", status="dormant") == 0
    clock.now += 59
    assert value(state, "coderd_api_total_user_count", status="dormant") == 0
    clock.now += 2
    assert value(state, "coderd_api_total_user_count", status="dormant") == 1


def test_it_recounts_at_the_next_scrape_after_a_signal(state, clock, owner):
    assert value(state, "coderd_api_total_user_count", status="active") == 1
    make_user(owner, "erin")  # post_save on User marks the gauges stale
    assert value(state, "coderd_api_total_user_count", status="active") == 2
    template = make_echo_template(owner, name="tpl2")
    make_workspace(owner, template, name="w")  # builds and jobs too
    assert value(state, "coderd_api_workspace_latest_build", status="pending") == 1


def test_it_queries_once_per_family_per_refresh(state, clock, owner):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as refresh:
        state.database.refresh()
    # Four aggregates: the latest-build families are sums of the per-template one; workspaces
    # created is the fourth. (SQLite also gets a PRAGMA, PostgreSQL a SET LOCAL.)
    selects = [q["sql"] for q in refresh.captured_queries if q["sql"].lstrip().upper().startswith("SELECT")]
    assert len(selects) == 4
    assert all("COUNT(" in sql.upper() for sql in selects)
    with CaptureQueriesContext(connection) as scrape:
        list(state.database.collect())
    assert scrape.captured_queries == []


def test_it_refreshes_once_at_start_up(db, settings, owner):
    from metrics import serving

    fresh = runtime.build_state()
    previous = runtime._state
    runtime.install(fresh)
    calls = []
    original = fresh.database.query
    fresh.database.query = lambda now: calls.append(now) or original(now)
    try:
        serving.refresh_database_gauges()
        assert len(calls) == 1
        list(fresh.database.collect())  # fresh: no second query
        assert len(calls) == 1
    finally:
        runtime.install(previous)


def test_it_counts_jobs_and_builds_from_the_observer(state):
    observer = MetricsJobObserver(state.metrics, on_change=None)
    build = BuildInfo("alice", "dev", "docker", "v1", "start")
    with observer.running("echo"):
        assert value(state, "coderd_provisionerd_jobs_current", provisioner="echo") == 1
    with pytest.raises(RuntimeError), observer.running("echo"):
        raise RuntimeError("the job crashed")
    assert value(state, "coderd_provisionerd_jobs_current", provisioner="echo") == 0
    observer.job_finished("echo", True, 12.0, build)
    observer.job_finished("echo", False, 0.5, BuildInfo("alice", "dev", "docker", "v1", "delete"))
    observer.job_finished("echo", True, 2.0, None)  # a template import: no build labels

    def hist(name, **labels):
        return value(state, name + "_count", **labels), value(state, name + "_sum", **labels)

    assert hist("coderd_provisionerd_job_timings_seconds", provisioner="echo", status="success") == (2, 14.0)
    assert hist("coderd_provisionerd_job_timings_ms", provisioner="echo", status="success") == (2, 14000.0)
    assert hist("coderd_provisionerd_job_timings_seconds", provisioner="echo", status="failed") == (1, 0.5)
    builds = "coderd_workspace_builds_total"
    common = dict(
        workspace_owner="alice", workspace_name="dev", template_name="docker", template_version="v1"
    )
    assert value(state, builds, workspace_transition="START", status="success", **common) == 1
    assert value(state, builds, workspace_transition="DESTROY", status="failed", **common) == 1
    timings = "coderd_provisionerd_workspace_build_timings_seconds_count"
    labels = dict(template_name="docker", template_version="v1")
    # As coderd_workspace_builds_total (and Coder's provisionerdserver): START, STOP, DESTROY.
    assert value(state, timings, workspace_transition="START", status="success", **labels) == 1
    assert value(state, timings, workspace_transition="DESTROY", status="failed", **labels) == 1
    assert value(state, timings, workspace_transition="start", status="success", **labels) is None
    observer.daemon_started()
    observer.daemon_started()
    observer.daemon_stopped()
    assert value(state, "coderd_provisionerd_num_daemons") == 1


def test_it_counts_builds_that_daemons_run_to_success_and_failure(state, clock, owner, tmp_path):
    from provisioner.daemon import Daemon

    good = make_echo_template(owner, name="good")
    bad = make_echo_template(
        owner, name="bad", source={"start": {"duration_ms": 1, "logs": ["x"], "fail": True}}
    )
    make_workspace(owner, good, name="g1")
    make_workspace(owner, good, name="g2")
    make_workspace(owner, bad, name="b1")
    daemon = Daemon("metrics-test", observer=MetricsJobObserver(), data_dir=tmp_path)
    while daemon.run_once(timezone.now()):
        pass

    builds = "coderd_workspace_builds_total"
    common = dict(workspace_owner="owner", workspace_transition="START")
    assert value(state, builds, workspace_name="g1", template_name="good", template_version="good-v1",
                 status="success", **common) == 1  # fmt: skip
    assert value(state, builds, workspace_name="b1", template_name="bad", template_version="bad-v1",
                 status="failed", **common) == 1  # fmt: skip
    # Two template imports and two builds succeeded, one build failed.
    assert (
        value(state, "coderd_provisionerd_job_timings_seconds_count", provisioner="echo", status="success")
        == 4
    )
    assert (
        value(state, "coderd_provisionerd_job_timings_seconds_count", provisioner="echo", status="failed")
        == 1
    )
    assert value(state, "coderd_provisionerd_jobs_current", provisioner="echo") == 0
    # The observer marked the gauges stale: this scrape recounts.
    assert value(state, "coderd_api_workspace_latest_build", status="succeeded") == 2
    assert value(state, "coderd_api_workspace_latest_build", status="failed") == 1


def test_it_shares_one_refresh_between_processes_through_the_directory(db, owner, tmp_path):
    from metrics.database import FileCacheStore

    calls: list[object] = []
    collectors = []
    for _ in range(2):  # two workers of one replica
        c = DatabaseCollector(interval=60, store=FileCacheStore(tmp_path), clock=lambda: 1000.0)
        original = c.query
        c.query = lambda now, original=original: calls.append(now) or original(now)
        collectors.append(c)
    first = collectors[0].counts()
    second = collectors[1].counts()
    assert len(calls) == 1 and first == second
    collectors[1].mark_stale()  # a signal in the second worker
    collectors[0].counts()
    assert len(calls) == 2


def test_it_renders_the_per_template_series_as_the_encoder_does_encoding_only_new_label_sets():
    # No database: the counts are given. Label values the encoders escape (quotes, backslashes,
    # newlines) or that end like a value, and counts that come and go between refreshes.
    from prometheus_client.exposition import generate_latest
    from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

    from metrics.database import PER_TEMPLATE, DatabaseCounts, _Families

    rounds = [
        [
            ("running", "tpl", "v1", "alice", "start", 2),
            ("failed", 'q"uo\\te', "v\n2", "bob 5.0", "stop", 10**7),
        ],
        [("running", "tpl", "v1", "alice", "start", 3), ("succeeded", "tplé", "v1", "carol", "start", 1)],
        [("failed", 'q"uo\\te', "v\n2", "bob 5.0", "stop", 1), ("running", "tpl", "v1", "alice", "start", 3)],
        [],
    ]
    now = [0]

    def query(when):
        return DatabaseCounts(latest_build={"running": 1}, users={"active": 2}, per_template=rounds[now[0]])

    for generate in (generate_latest, generate_openmetrics):
        encoded = []  # per-template series each call of the encoder formats

        def encoder(registry, generate=generate, encoded=encoded):
            families = list(registry.collect())
            encoded.extend(s for f in families if f.name == PER_TEMPLATE for s in f.samples)
            return generate(_Families(families))

        collector = DatabaseCollector(interval=0.5, clock=lambda: float(now[0]), query=query)
        for i in range(len(rounds)):
            now[0] = i
            encoded.clear()
            expected = generate(_Families(collector._families(collector.counts())))
            text = collector.rendered("type", encoder).text
            assert text + (b"# EOF\n" if generate is generate_openmetrics else b"") == expected
            assert len(encoded) == [2, 1, 0, 0][i]  # only label sets not seen before


def test_it_shares_the_per_template_rows_between_processes_as_tuples(tmp_path):
    import gc

    from metrics.database import DatabaseCounts, FileCacheStore

    counts = DatabaseCounts(
        active_users=3,
        latest_build={"running": 2},
        users={"active": 3},
        per_template=[
            ("running", "tpl", "v1", "alice", "start", 2),
            ("failed", "tplé", "v\n2", 'b"ob', "stop", 1),
        ],
        created=[("org", "tpl", "", 4)],
        computed_at=12.5,
        generation=7,
    )
    FileCacheStore(tmp_path).save(counts)
    loaded = FileCacheStore(tmp_path).load()  # another process's store
    assert loaded == counts
    assert all(type(row) is tuple for row in loaded.per_template + loaded.created)
    assert gc.isenabled()
