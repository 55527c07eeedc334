"""The admin console's cost with a large deployment: the admin index (the overview rendered in the
page) and the JSON it polls, with the database gauges' counts fresh, as an owner sees them.

    # SQLite (seeds a fresh data folder first: `manage.py seed_metrics_data`, 100,000 workspaces)
    .venv/bin/python bench/bench_console.py --seed
    # PostgreSQL (starts its own server on a free loopback port; stopped by PID at the end)
    .venv/bin/python bench/bench_console.py --seed --postgres
    # an existing data folder or database: the usual CODER_DATA_DIR / CODER_PG_CONNECTION_URL

Requests go through Django's handler in this process (django.test.Client): the time is the server's
work for the page, with no network. Prints medians and 95th percentiles; figures go to
docs/benchmarks.md. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import database, load_average, machine, ms, setup_django

GOAL_MS = 100.0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seed", action="store_true", help="seed a fresh database first")
    parser.add_argument("--postgres", action="store_true", help="on a PostgreSQL server of its own")
    parser.add_argument("--views", type=int, default=40, help="page views measured (default 40)")
    args = parser.parse_args()

    with database(postgres=args.postgres, fresh=args.seed):
        run(args)


def run(args: argparse.Namespace) -> None:
    setup_django(seed=args.seed)
    from django.conf import settings
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from coderd import console
    from coderd.users.models import User, UserStatus
    from metrics import runtime

    owner, _ = User.objects.get_or_create(
        email="bench-owner@example.com",
        defaults={"username": "bench-owner", "roles": ["owner"], "status": UserStatus.ACTIVE},
    )
    state = runtime.build_state(refresh_interval=3600)
    runtime.install(state)
    console.start_sampler()  # as the server runs it: a sample every 10 s in a thread

    client = Client(HTTP_HOST="localhost")  # an allowed host
    client.force_login(owner)

    started = time.perf_counter()
    counts = console.database_counts()  # the first count (the server does it at start-up)
    refresh_s = time.perf_counter() - started

    def measure(url: str) -> tuple[list[float], list[float], int, int]:
        client.get(url)  # warm: templates compiled, the per-state sums cached
        timings, cpu = [], []
        size = 0
        for _ in range(args.views):
            t, c = time.perf_counter(), time.thread_time()
            response = client.get(url)
            # CPU time of this thread: the page's own work, less sensitive to a loaded machine than
            # wall time (it leaves out the database server's side on PostgreSQL).
            cpu.append(time.thread_time() - c)
            timings.append(time.perf_counter() - t)
            assert response.status_code == 200, (url, response.status_code)
            size = len(response.content)
        with CaptureQueriesContext(connection) as queries:
            client.get(url)
        return timings, cpu, size, len(queries)

    results = {url: measure(url) for url in ("/admin/", "/admin/console/overview.json")}
    health = []
    for _ in range(args.views):
        t = time.perf_counter()
        console.health()
        health.append(time.perf_counter() - t)

    print(f"machine: {machine()}")
    print(f"load average: {load_average()}")
    print(f"database: {connection.vendor} ({settings.DATABASES['default']['NAME']})")
    workspaces = sum(console.workspace_states(counts).values())
    print(
        f"data: {workspaces} live workspaces, {sum(counts.users.values())} users, {len(counts.per_template)} per-template rows"
    )
    print(
        f"the database gauges' count (once at start-up, then per refresh interval): {refresh_s * 1000:.0f} ms"
    )
    print(
        f"health queries alone (daemons, jobs, failed builds; counts cached): median {ms(health):.1f} ms, p95 {ms(health, 0.95):.1f} ms"
    )
    for url, (timings, cpu, size, n_queries) in results.items():
        verdict = "under" if ms(timings, 0.95) < GOAL_MS else "OVER"
        print(
            f"GET {url}: median {ms(timings):.1f} ms, p95 {ms(timings, 0.95):.1f} ms over {len(timings)} "
            f"({size / 1024:.0f} KiB, {n_queries} queries; CPU median {ms(cpu):.1f} ms): p95 {verdict} "
            f"the {GOAL_MS:.0f} ms goal"
        )
    subprocess.run(["date", "-u"], check=False)


if __name__ == "__main__":
    main()
