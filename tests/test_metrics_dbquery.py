"""Database query metrics: every query timed by a bounded name, counted by the route that made it."""

from __future__ import annotations

import uuid

import pytest
from django.db import connection

from metrics import dbquery
from tests.fixtures import make_user, metrics_installed

LATENCY = "coderd_db_query_latencies_seconds"
COUNTS = "coderd_db_query_counts_total"


@pytest.fixture
def state(db):
    with metrics_installed(with_database=False) as fresh:
        yield fresh


def value(state, name: str, **labels) -> float | None:
    return state.registry.get_sample_value(name, labels)


def series(state, name: str) -> list[dict[str, str]]:
    return [s.labels for f in state.metrics.registry.collect() for s in f.samples if s.name == name]


def test_it_names_a_statement_by_its_kind_and_main_table():
    names = dbquery.QueryNames(frozenset({"users_user", "workspaces_workspace"}))
    assert (
        names('SELECT "users_user"."id" FROM "users_user" WHERE "users_user"."id" = %s')
        == "select users_user"
    )
    assert names('  INSERT INTO "workspaces_workspace" ("id") VALUES (%s)') == "insert workspaces_workspace"
    assert names('UPDATE "users_user" SET "name" = %s') == "update users_user"
    assert names('DELETE FROM "users_user" WHERE "id" IN (%s, %s)') == "delete users_user"
    assert names("select count(*) from users_user") == "select users_user"  # raw, unquoted
    assert names('SAVEPOINT "s140234_x12"') == "savepoint"  # the generated name is left out
    assert names('RELEASE SAVEPOINT "s140234_x12"') == "release"
    assert names("SET LOCAL work_mem = '64MB'") == "set"
    assert names('SELECT * FROM "not_ours"') == "select other"
    assert names("VACUUM") == "other"
    assert names("") == "other"


def test_it_keeps_query_names_bounded_whatever_the_statements():
    names = dbquery.QueryNames(frozenset({"users_user"}))
    seen = set()
    for i in range(5000):
        tag = uuid.uuid4().hex
        seen.add(names(f"SELECT * FROM \"t_{tag}\" WHERE x = '{tag}'"))
        seen.add(names(f'SAVEPOINT "s_{tag}"'))
        seen.add(names(f'{tag[:8]} FROM "users_user"'))
        seen.add(names(f"SELECT * FROM users_user WHERE id IN ({', '.join(['%s'] * (i % 300 + 1))})"))
    assert seen == {"select other", "savepoint", "other", "select users_user"}
    assert len(names._cache) <= 4096


def test_it_times_and_counts_queries_made_outside_a_request(state):
    from coderd.users.models import User

    list(User.objects.filter(username="nobody"))
    assert value(state, LATENCY + "_count", query="select users_user") == 1
    assert value(state, COUNTS, route="", method="", query="select users_user") == 1
    # Django's standard buckets, as Coder's (prometheus.DefBuckets).
    bounds = {s["le"] for s in series(state, LATENCY + "_bucket") if s["query"] == "select users_user"}
    assert bounds == {
        "0.005",
        "0.01",
        "0.025",
        "0.05",
        "0.1",
        "0.25",
        "0.5",
        "1.0",
        "2.5",
        "5.0",
        "10.0",
        "+Inf",
    }


def test_it_counts_a_query_that_fails(state):
    from django.db import DatabaseError

    with pytest.raises(DatabaseError), connection.cursor() as cursor:
        cursor.execute('SELECT * FROM "users_user" WHERE no_such_column = 1')
    assert value(state, COUNTS, route="", method="", query="select users_user") == 1


def test_it_counts_the_queries_of_a_request_under_its_route_and_method(state, owner, asgi_api_as):
    member = make_user(owner, "member")
    client = asgi_api_as(owner)
    before = {k: v for k, v in _counts(state).items() if k[0] == "/api/v2/users/{user}"}
    assert before == {}
    assert client.get(f"users/{member.id}").status_code == 200
    assert client.get(f"users/{member.id}").status_code == 200
    counts = {k: v for k, v in _counts(state).items() if k[0] == "/api/v2/users/{user}"}
    # The token and the user are read from their tables, the same queries for each request.
    assert counts[("/api/v2/users/{user}", "GET", "select users_user")] >= 2
    assert counts[("/api/v2/users/{user}", "GET", "select users_apikey")] >= 2
    assert all(n % 2 == 0 for n in counts.values()), counts
    assert {method for _, method, _ in counts} == {"GET"}


def not_found(request, exception):
    from django.http import HttpResponseNotFound

    from coderd.users.models import User

    User.objects.filter(username="nobody").exists()  # a 404 page that reads the database
    return HttpResponseNotFound("nothing here")


urlpatterns: list = []
handler404 = not_found


@pytest.mark.urls(__name__)
def test_it_counts_queries_of_an_unmatched_request_as_today_coder_labels_them(db):
    from tests.test_metrics_http import request

    with metrics_installed(with_database=False, legacy=False) as off:
        assert request("GET", "/api/v2/no-such-route") == 404
        assert request("GET", "/no-such-page") == 404
        assert value(off, COUNTS, route="UNKNOWN", method="GET", query="select users_user") == 1
        assert value(off, COUNTS, route="STATIC", method="GET", query="select users_user") == 1
    with metrics_installed(with_database=False, legacy=True) as on:
        assert request("GET", "/api/v2/no-such-route") == 404
        assert value(on, COUNTS, route="", method="GET", query="select users_user") == 1


def test_it_creates_no_series_for_requests_with_ever_new_values(state, owner, asgi_api_as):
    client = asgi_api_as(owner)
    client.get(f"users/{uuid.uuid4()}")
    before = len(series(state, COUNTS)), len(series(state, LATENCY + "_count"))
    for _ in range(30):
        client.get(f"users/{uuid.uuid4()}")
        client.get(f"users/u{uuid.uuid4().hex[:20]}")
    assert (len(series(state, COUNTS)), len(series(state, LATENCY + "_count"))) == before


def test_it_stops_and_starts_on_open_connections(state):
    """CODER_PROMETHEUS_COLLECT_DB_METRICS=false leaves `install()` out; the bench toggles it live."""
    from coderd.users.models import User

    dbquery.uninstall()
    try:
        list(User.objects.all())
        assert value(state, COUNTS, route="", method="", query="select users_user") is None
    finally:
        dbquery.install()
    list(User.objects.all())
    assert value(state, COUNTS, route="", method="", query="select users_user") == 1


def _counts(state) -> dict[tuple[str, str, str], float]:
    return {
        (s.labels["route"], s.labels["method"], s.labels["query"]): s.value
        for f in state.metrics.registry.collect()
        for s in f.samples
        if s.name == COUNTS
    }


MULTIPROCESS_SCRIPT = """
import os, sys, threading
from prometheus_client import CollectorRegistry, Histogram
from metrics.registry import DB_QUERY_S_BUCKETS, build_metrics

def publisher():
    return any(t.name == "coderd-db-metrics" for t in threading.enumerate())

# As gunicorn's master: it forks the workers, so no thread of its own writes the files.
m = build_metrics(CollectorRegistry(), multiprocess=True, forking_parent=True)
reference = Histogram("reference", "h", ["query"], buckets=DB_QUERY_S_BUCKETS, registry=CollectorRegistry())
for seconds in (0.001, 0.005, 0.0051, 0.2, 20.0):
    m.observe_query("select users_user", "/api/v2/users/{user}", "GET", seconds)
    reference.labels("select users_user").observe(seconds)
# Recorded, not yet published, when the worker is forked: the parent's to publish, not the child's.
m.observe_query("update users_user", "", "", 0.01)
assert not publisher()
child = os.fork()
if child == 0:
    m.observe_query("update users_user", "", "", 0.02)
    m.query_stats.publish()
    os._exit(0 if publisher() else 3)  # a worker publishes from its thread
_, status = os.waitpid(child, 0)
assert status == 0, status
m.query_stats.publish()
m.query_stats.publish()  # nothing new: adds nothing
"""


def test_it_adds_up_the_query_metrics_of_several_processes_as_prometheus_client_would(tmp_path):
    import subprocess
    import sys

    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    from tests.services import REPO

    env = {"PATH": "/usr/bin:/bin", "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", MULTIPROCESS_SCRIPT], env=env, cwd=REPO, check=True, timeout=60)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(tmp_path))
    families = {f.name: f for f in registry.collect()}
    ours = {
        (s.name.removeprefix(LATENCY), s.labels.get("le")): s.value
        for s in families[LATENCY].samples
        if s.labels["query"] == "select users_user"
    }
    reference = {
        (s.name.removeprefix("reference"), s.labels.get("le")): s.value for s in families["reference"].samples
    }
    assert ours == reference
    assert ours[("_bucket", "0.005")] == 2 and ours[("_count", None)] == 5
    counts = {
        (s.labels["route"], s.labels["method"], s.labels["query"]): s.value
        for s in families["coderd_db_query_counts"].samples
    }
    assert counts[("/api/v2/users/{user}", "GET", "select users_user")] == 5
    assert counts[("", "", "update users_user")] == 2  # the parent's one and the child's one, once each
