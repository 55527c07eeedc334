"""What the database query metrics (metrics/dbquery.py) and the legacy-off route labels cost.

1. The wrapper alone: `execute_wrapper` around a no-op `execute`, against the no-op called bare,
   with a typical ORM statement, inside a request (route and method from the request) and outside
   one; in one process, and with prometheus_client's multiprocess (mmap) values as under gunicorn.
2. One ORM query (a primary-key lookup on SQLite) with the wrapper on and off, interleaved rounds.
3. The request path: an authenticated `GET /api/v2/users/{user}` through Django's ASGI handler with
   the full middleware, database metrics off / on / on with legacy names off (which also resolves
   the route before the request runs), in short rounds running each configuration twice, mirrored
   (A B C C B A); medians over the rounds of the ratios within each round.

    .venv/bin/python bench/bench_dbquery.py [--rounds 60] [--requests 40] [--queries 300]

Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.bench_requests import one, scope  # noqa: E402

SQL = (
    'SELECT "users_user"."id", "users_user"."password", "users_user"."last_login", "users_user"."username", '
    '"users_user"."email", "users_user"."status" FROM "users_user" WHERE "users_user"."id" = %s LIMIT 21'
)


def best_of(fn, n: int, repeat: int = 5) -> float:
    """µs of CPU per call, best of `repeat` runs of `n` calls (CPU time: the machine is shared)."""
    best = float("inf")
    for _ in range(repeat):
        t = time.process_time()
        for _ in range(n):
            fn()
        best = min(best, (time.process_time() - t) / n)
    return best * 1e6


def wrapper_alone(n: int) -> dict[str, float]:
    from django.test import RequestFactory

    from metrics import dbquery

    def execute(sql, params, many, context):
        return None

    request = RequestFactory().get("/api/v2/users/x")
    request.metrics_method, request.metrics_route = "GET", "/api/v2/users/{user}"
    out = {"bare execute": best_of(lambda: execute(SQL, (1,), False, {}), n)}
    # For comparison: what a query would cost through prometheus_client's own objects (the design
    # metrics/querystats.py replaces), in whichever mode this process is.
    from prometheus_client import CollectorRegistry, Counter, Histogram

    from metrics.registry import DB_QUERY_S_BUCKETS

    registry = CollectorRegistry()
    histogram = Histogram("h", "h", ["query"], buckets=DB_QUERY_S_BUCKETS, registry=registry)
    counter = Counter("c", "c", ["route", "method", "query"], registry=registry)
    h, c = histogram.labels("select users_user"), counter.labels("/r", "GET", "select users_user")

    def stock() -> None:
        start = time.perf_counter()
        execute(SQL, (1,), False, {})
        h.observe(time.perf_counter() - start)
        c.inc()

    out["prometheus_client observe() + inc() instead"] = best_of(stock, n)
    wrapped = dbquery.execute_wrapper
    out["wrapped, outside a request"] = best_of(lambda: wrapped(execute, SQL, (1,), False, {}), n)
    token = dbquery.current_origin.set(request)
    try:
        out["wrapped, in a request"] = best_of(lambda: wrapped(execute, SQL, (1,), False, {}), n)
        # Legacy names on: the route is read from Django's resolution at each query.
        request.metrics_route = None
        from django.urls import resolve

        request.resolver_match = resolve("/api/v2/users/me")
        out["wrapped, in a request (route from Django's match)"] = best_of(
            lambda: wrapped(execute, SQL, (1,), False, {}), n
        )
    finally:
        dbquery.current_origin.reset(token)
    return out


async def middleware_alone(states: dict, path: str, n: int) -> dict[str, float]:
    """µs of CPU per request of our middleware around a trivial async handler, legacy names on and
    off (off: the route is resolved before the handler, a URL resolution of its own)."""
    from django.http import HttpResponse
    from django.test import RequestFactory

    from metrics import runtime
    from metrics.middleware import PrometheusMiddleware

    async def handler(request):
        return HttpResponse("ok")

    chain = PrometheusMiddleware(handler)
    out = {}
    for name in ("none", "legacy on", "legacy off"):
        if name != "none":
            runtime.install(states[name])
        app = handler if name == "none" else chain
        for _ in range(200):
            await app(RequestFactory().get(path))
        best = float("inf")
        for _ in range(5):
            requests = [RequestFactory().get(path) for _ in range(n)]
            t = time.process_time()
            for request in requests:
                await app(request)
            best = min(best, (time.process_time() - t) / n)
        out[name] = best * 1e6
    runtime.install(states["legacy on"])
    return out


def orm_rounds(user_id, rounds: int, n: int) -> dict[str, list[float]]:
    from coderd.users.models import User
    from metrics import dbquery

    query = User.objects.filter(pk=user_id)
    for _ in range(200):
        query.first()
    out: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(rounds):
        got: dict[str, float] = {"off": 0.0, "on": 0.0}
        for name in abba(["off", "on"]):
            (dbquery.install if name == "on" else dbquery.uninstall)()
            t = time.process_time()
            for _ in range(n):
                User.objects.filter(pk=user_id).first()
            got[name] += (time.process_time() - t) / n * 1e6 / 2
        for name, us in got.items():
            out[name].append(us)
    dbquery.install()
    return out


def abba(names: list[str]) -> list[str]:
    """Each configuration twice, mirrored (A B C C B A): a drift of the machine during the round
    weighs on every configuration alike."""
    return names + list(reversed(names))


async def request_rounds(app, s: dict, states: dict, rounds: int, n: int) -> dict[str, list[float]]:
    from asgiref.sync import sync_to_async

    from metrics import dbquery, runtime

    async def configure(name: str) -> None:
        runtime.install(states["legacy off" if name == "db on, legacy off" else "legacy on"])
        # Sync views run in the one thread-sensitive thread: its connection is the one to (un)wrap.
        toggle = dbquery.uninstall if name == "db off" else dbquery.install
        await sync_to_async(toggle, thread_sensitive=True)()

    names = ["db off", "db on", "db on, legacy off"]
    for name in names:
        await configure(name)
        for _ in range(50):
            assert await one(app, s) == 200, name
    out: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(rounds):
        got = dict.fromkeys(names, 0.0)
        for name in abba(names):
            await configure(name)
            t = time.process_time()
            for _ in range(n):
                await one(app, s)
            got[name] += (time.process_time() - t) / n * 1e6 / 2
        for name, us in got.items():
            out[name].append(us)
    await configure("db on")
    return out


def queries_per_request(app, s: dict) -> int:
    # The view's queries run in the thread-sensitive thread; count them there.
    from asgiref.sync import async_to_sync, sync_to_async
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    captured = {}

    def start():
        captured["ctx"] = CaptureQueriesContext(connection)
        captured["ctx"].__enter__()

    def stop():
        captured["ctx"].__exit__(None, None, None)
        return len(captured["ctx"].captured_queries)

    async def run():
        await sync_to_async(start, thread_sensitive=True)()
        await one(app, s)
        return await sync_to_async(stop, thread_sensitive=True)()

    return async_to_sync(run)()


def report(title: str, results: dict[str, list[float]], base: str) -> None:
    """Each round ran every configuration back to back: its ratios to `base` are compared within the
    round (a shared, loaded machine drifts by tens of percent between rounds, far less within one),
    and the median over the rounds is shown."""
    print(f"-- {title} (CPU time; {len(results[base])} rounds, each configuration back to back in each)")
    for name, runs in results.items():
        ratio = statistics.median(on / off for on, off in zip(runs, results[base], strict=True))
        diff = statistics.median(on - off for on, off in zip(runs, results[base], strict=True))
        print(f"{name:>24}: {statistics.median(runs):8.1f} µs  (x {ratio:.3f} of {base}, {diff:+.1f} µs)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--queries", type=int, default=300)
    args = parser.parse_args()

    os.environ.setdefault("CODER_DATA_DIR", tempfile.mkdtemp(prefix="coderd-bench-"))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "coderd.settings")
    import logging

    import django

    django.setup()
    logging.disable(logging.WARNING)
    from django.core.handlers.asgi import ASGIHandler
    from django.core.management import call_command

    from metrics import runtime

    call_command("migrate", verbosity=0)
    from coderd.users.services import create_first_user, issue_api_key

    user = create_first_user("bench@example.com", "bench", "correct-horse-battery")[0]
    token = issue_api_key(user, "token")[1]
    states = {
        "legacy on": runtime.build_state(with_database=False),
        "legacy off": runtime.build_state(with_database=False, legacy=False),
    }
    runtime.install(states["legacy on"])

    machine = f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}"
    print(f"machine: {machine}, Python {platform.python_version()}")

    print("-- the wrapper alone (best of 5 x 20000 calls)")
    alone = wrapper_alone(20000)
    for name, us in alone.items():
        print(f"{name:>50}: {us:6.2f} µs  ({us - alone['bare execute']:+.2f} µs)")
    with tempfile.TemporaryDirectory() as multiproc:
        # prometheus_client picks its value class at import: mmap values need a fresh interpreter.
        import subprocess

        out = subprocess.run(
            [sys.executable, __file__, "--multiprocess-alone"],
            env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": multiproc},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        print(out, end="")

    report(
        f"one ORM query, SQLite, primary key, {args.queries} a round",
        orm_rounds(user.pk, args.rounds, args.queries),
        "off",
    )

    alone = asyncio.run(middleware_alone(states, f"/api/v2/users/{user.username}", 2000))
    print("-- our middleware alone around a trivial async handler (best of 5 x 2000)")
    for name, us in alone.items():
        print(f"{name:>24}: {us:7.1f} µs per request ({us - alone['none']:+.1f} µs)")

    s = scope(f"/api/v2/users/{user.username}", token)
    app = ASGIHandler()
    print(f"GET /api/v2/users/{{user}} with a token: {queries_per_request(app, s)} queries a request")
    report(
        f"the request path, {args.requests} requests a round",
        asyncio.run(request_rounds(app, s, states, args.rounds, args.requests)),
        "db off",
    )
    os.system("date -u")


def multiprocess_alone() -> None:
    os.environ.setdefault("CODER_DATA_DIR", tempfile.mkdtemp(prefix="coderd-bench-"))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "coderd.settings")
    import django

    django.setup()
    from metrics import runtime

    runtime.install(
        runtime.build_state(with_database=False, multiproc_dir=os.environ["PROMETHEUS_MULTIPROC_DIR"])
    )
    alone = wrapper_alone(20000)
    print("-- the same, multiprocess mode (mmap values, as under gunicorn)")
    for name, us in alone.items():
        print(f"{name:>50}: {us:6.2f} µs  ({us - alone['bare execute']:+.2f} µs)")


if __name__ == "__main__":
    if "--multiprocess-alone" in sys.argv:
        multiprocess_alone()
    else:
        main()
