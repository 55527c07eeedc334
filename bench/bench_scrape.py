"""Scrape cost with a large deployment: one refresh of every database gauge, and scrapes with the
gauges fresh, through the real listener over loopback as Prometheus asks (OpenMetrics, gzip).

    # SQLite (seeds a fresh data folder first: about a minute)
    .venv/bin/python bench/bench_scrape.py --seed
    # PostgreSQL (starts its own server on a free loopback port; stopped by PID at the end)
    .venv/bin/python bench/bench_scrape.py --seed --postgres
    # an existing data folder or database: the usual CODER_DATA_DIR / CODER_PG_CONNECTION_URL
    # --parts: also each query of a refresh alone (where its time goes)

Prints medians; figures go to docs/benchmarks.md. Not part of the test suite.

Needs a venv made with requirements.txt; with --postgres, requirements-dev.txt (the server is
started by tests/services.py, which imports pytest).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seed", action="store_true", help="seed a fresh database first")
    parser.add_argument("--postgres", action="store_true", help="on a PostgreSQL server of its own")
    parser.add_argument("--refreshes", type=int, default=7)
    parser.add_argument("--scrapes", type=int, default=50)
    parser.add_argument("--parts", action="store_true", help="also time each query of a refresh alone")
    args = parser.parse_args()

    pg = None
    if args.postgres:
        from tests.services import Postgres

        pg = Postgres.start()
        os.environ["CODER_PG_CONNECTION_URL"] = pg.create_database("bench")
    elif args.seed:
        os.environ["CODER_DATA_DIR"] = tempfile.mkdtemp(prefix="coderd-bench-")
    try:
        run(args)
    finally:
        if pg is not None:
            pg.stop()


def run(args: argparse.Namespace) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "coderd.settings")
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection

    call_command("migrate", verbosity=0)
    if args.seed:
        started = time.perf_counter()
        call_command("seed_metrics_data")
        print(f"seeded in {time.perf_counter() - started:.1f} s")
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("ANALYZE")

    from metrics import runtime
    from metrics.serving import start_listener

    state = runtime.build_state(refresh_interval=3600)
    runtime.install(state)
    db = state.database

    refreshes = []
    for _ in range(args.refreshes):
        t = time.perf_counter()
        db.refresh()
        refreshes.append(time.perf_counter() - t)
    counts = db.counts()
    if args.parts:
        time_parts(args.refreshes)

    listener = start_listener("127.0.0.1", 0, state)
    host, port = listener.address
    url = f"http://{host}:{port}/metrics"

    def scrape(headers: dict[str, str]) -> tuple[float, int]:
        request = urllib.request.Request(url, headers=headers)
        t = time.perf_counter()
        with urllib.request.urlopen(request) as response:
            body = response.read()
        return time.perf_counter() - t, len(body)

    prometheus = {"Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": "gzip"}
    first, _ = scrape(prometheus)  # renders the database families once for this format
    results = {}
    for name, headers in {
        "Prometheus (OpenMetrics, gzip)": prometheus,
        "plain text, gzip": {"Accept-Encoding": "gzip"},
        "plain text, uncompressed": {},
    }.items():
        scrape(headers)
        timings, size = [], 0
        for _ in range(args.scrapes):
            seconds, size = scrape(headers)
            timings.append(seconds)
        results[name] = (median_ms(timings), size)
    listener.stop()

    series = sum(len(f.samples) for f in state.registry.collect())
    print(
        f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print(f"database: {connection.vendor} ({settings.DATABASES['default']['NAME']})")
    print(
        f"data: {sum(counts.users.values())} users, {sum(counts.latest_build.values())} workspaces with a build, "
        f"{len(counts.per_template)} per-template series, {series} series in all"
    )
    print(f"one refresh of all database gauges (3 aggregate queries): median {median_ms(refreshes):.0f} ms "
          f"(min {min(refreshes) * 1000:.0f}, max {max(refreshes) * 1000:.0f}) over {len(refreshes)}")  # fmt: skip
    print(f"first scrape after a refresh (renders the database families): {first * 1000:.0f} ms")
    for name, (ms, size) in results.items():
        print(f"scrape, gauges fresh, {name}: median {ms:.1f} ms, {size / 1024:.0f} KiB over {args.scrapes}")
    subprocess.run(["date", "-u"], check=False)


def time_parts(n: int) -> None:
    """Each query of a refresh alone, medians of `n`: where a refresh's time goes."""
    from datetime import UTC, datetime

    from django.db import connection
    from django.db.models import Count

    from coderd.users.models import APIKey, User
    from metrics import database

    now = datetime.now(UTC)
    sql, params = database.latest_build_sql(now)

    def fetch(query: str) -> list:
        with connection.cursor() as cursor:
            cursor.execute(query, params)
            return cursor.fetchall()

    parts = {
        "active users": lambda: APIKey.objects.filter(
            last_used__gte=now - database.ACTIVE_USER_WINDOW
        ).aggregate(n=Count("user_id", distinct=True)),
        "users by status": lambda: list(
            User.objects.filter(deleted=False).values("status").annotate(n=Count("id")).order_by()
        ),
        "workspaces created, by template": database._created_rows,
        "latest builds: folding the label changes (none waiting)": database.fold_gauge_changes,
        "latest builds: the counts read (COUNT over them)": lambda: fetch(
            f"SELECT COUNT(*) FROM ({sql}) AS g"
        ),
        "latest builds: its rows fetched": lambda: fetch(sql),
        "latest builds: fetched and summed (_latest_build_rows)": lambda: database._latest_build_rows(now),
    }
    for name, run in parts.items():
        run()
        timings = []
        for _ in range(n):
            t = time.perf_counter()
            run()
            timings.append(time.perf_counter() - t)
        print(f"part: {name}: median {median_ms(timings):.0f} ms")


if __name__ == "__main__":
    main()
