"""Scrape cost with a large deployment: one refresh of every database gauge, and scrapes with the
gauges fresh, through the real listener over loopback as Prometheus asks (OpenMetrics, gzip).

    # SQLite (seeds a fresh data folder first: about a minute)
    .venv/bin/python bench/bench_scrape.py --seed
    # PostgreSQL (starts its own server on a free loopback port; stopped by PID at the end)
    .venv/bin/python bench/bench_scrape.py --seed --postgres
    # an existing data folder or database: the usual CODER_DATA_DIR / CODER_PG_CONNECTION_URL
    # --parts: also each query of a refresh alone (where its time goes)
    # --changes N: between two timed refreshes, N workspaces' latest jobs flip between succeeded
    #   and failed (2N label-set changes) and are folded, as the reaper does (default 100)

Prints medians; figures go to docs/benchmarks.md. Not part of the test suite.

Needs a venv made with requirements.txt (with --postgres, PostgreSQL 15's binaries too).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import database, load_average, machine, setup_django

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
    parser.add_argument(
        "--changes",
        type=int,
        default=100,
        help="workspaces changed (and folded) before each refresh after the first",
    )
    args = parser.parse_args()

    with database(postgres=args.postgres, fresh=args.seed):
        run(args)


def run(args: argparse.Namespace) -> None:
    setup_django(seed=args.seed)
    from django.conf import settings
    from django.db import connection

    from metrics import runtime
    from metrics.serving import start_listener

    state = runtime.build_state(refresh_interval=3600)
    runtime.install(state)
    db = state.database

    # The first refresh is the start-up's (every count read); each later one follows a change of
    # `--changes` workspaces and its fold, as a refresh after a stale mark does.
    flips = Flips(args.changes)
    refreshes, folds, cpu = [], [], []
    try:
        t = time.perf_counter()
        db.refresh()
        startup = time.perf_counter() - t
        for _ in range(args.refreshes):
            folds.append(flips.flip_and_fold())
            t, c = time.perf_counter(), time.process_time()
            db.refresh()
            refreshes.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
        counts = db.counts()
        if args.parts:
            time_parts(args.refreshes, flips)
    finally:
        flips.restore()

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
    # Then as in service: changes, a refresh, and the next scrape renders the refreshed families.
    after = []
    try:
        for _ in range(args.refreshes):
            flips.flip_and_fold()
            db.refresh()
            after.append(scrape(prometheus)[0])
    finally:
        flips.restore()
    db.refresh()
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
    print(f"machine: {machine()}")
    print(f"database: {connection.vendor} ({settings.DATABASES['default']['NAME']})")
    print(
        f"data: {sum(counts.users.values())} users, {sum(counts.latest_build.values())} workspaces with a build, "
        f"{len(counts.per_template)} per-template series, {series} series in all"
    )
    print(f"first refresh of all database gauges (start-up): {startup * 1000:.0f} ms")
    print(f"one refresh of all database gauges after {args.changes} workspaces changed and folded: median "
          f"{median_ms(refreshes):.0f} ms (min {min(refreshes) * 1000:.0f}, max {max(refreshes) * 1000:.0f}) "
          f"over {len(refreshes)}; CPU time of this process {median_ms(cpu):.0f} ms")  # fmt: skip
    print(
        f"folding those {2 * args.changes} changes (the reaper's work, not the refresh's): median {median_ms(folds):.0f} ms"
    )
    kept = getattr(db, "kept", None)
    if kept is not None:
        print(f"kept counts: {kept.full_reads} full read(s), {kept.rows_read} count rows read in all")
    print(f"load average: {load_average()}")
    print(f"first scrape after start-up (renders the database families): {first * 1000:.0f} ms")
    print(f"scrape after a refresh following {args.changes} changes (renders the refreshed families), Prometheus: "
          f"median {median_ms(after):.0f} ms (min {min(after) * 1000:.0f}, max {max(after) * 1000:.0f})")  # fmt: skip
    for name, (ms, size) in results.items():
        print(f"scrape, gauges fresh, {name}: median {ms:.1f} ms, {size / 1024:.0f} KiB over {args.scrapes}")
    subprocess.run(["date", "-u"], check=False)


class Flips:
    """`n` live workspaces whose latest job succeeded, flipped to failed and back by their job's
    error (the copy triggers move each to another label set: 2 changes), then folded."""

    def __init__(self, n: int) -> None:
        from django.db import connection

        self.failed = False
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT j.id FROM workspaces_workspace w JOIN workspaces_workspacebuild b ON b.id = w.latest_build_id"
                " JOIN provisioner_provisionerjob j ON j.id = b.job_id"
                " WHERE NOT w.deleted AND w.latest_job_state = 'succeeded' ORDER BY w.id LIMIT %s",
                [n],
            )
            self.jobs = [row[0] for row in cursor.fetchall()]

    def flip(self) -> None:
        from provisioner.models import ProvisionerJob

        self.failed = not self.failed
        ProvisionerJob.objects.filter(id__in=self.jobs).update(error="bench flip" if self.failed else "")

    def flip_and_fold(self) -> float:
        """Flips, and returns the fold's time."""
        from metrics.database import fold_gauge_changes

        self.flip()
        t = time.perf_counter()
        fold_gauge_changes()
        return time.perf_counter() - t

    def restore(self) -> None:
        from metrics.database import fold_gauge_changes

        if self.failed:
            self.flip()
            fold_gauge_changes()


def time_parts(n: int, flips: Flips) -> None:
    """Each query of a refresh alone, medians of `n`: where a refresh's time goes."""
    from datetime import UTC, datetime

    from django.db import connection
    from django.db.models import Count

    from coderd.users.models import APIKey, User
    from metrics import database

    now = datetime.now(UTC)
    sql, params = database.latest_build_sql(now)

    def fetch(query: str, params: list = params) -> list:
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
    }
    prepare = {}
    if hasattr(database, "KeptCounts"):
        kept = database.KeptCounts()
        kept.latest_build(now)
        parts["latest builds: every count read and summed (a full read: start-up)"] = lambda: (
            database._latest_build_rows(now, database.KeptCounts())
        )
        # Before each run, untimed: flip and fold, as between two refreshes.
        parts["latest builds: the counts changed since the last fold read, read (KeptCounts._read)"] = (
            lambda: kept._read(now)
        )
        parts["latest builds: the same, and summed into the families' rows (_latest_build_rows)"] = lambda: (
            database._latest_build_rows(now, kept)
        )
        for name in list(parts)[-2:]:
            prepare[name] = flips.flip_and_fold
        stale = sql.split(" UNION ALL ")[-1]
        parts["latest builds: the stale running jobs alone"] = lambda: fetch(
            f"SELECT COUNT(*) FROM ({stale}) AS s", params[-1:]
        )
    else:
        parts["latest builds: fetched and summed (_latest_build_rows)"] = lambda: database._latest_build_rows(
            now
        )
    for name, run in parts.items():
        ready = prepare.get(name, lambda: None)
        ready()
        run()
        timings = []
        for _ in range(n):
            ready()
            t = time.perf_counter()
            run()
            timings.append(time.perf_counter() - t)
        print(f"part: {name}: median {median_ms(timings):.1f} ms")


if __name__ == "__main__":
    main()
