"""Request overhead of the metrics middleware: an authenticated API GET through Django's ASGI
handler with our metrics on, with them off, and with django-prometheus's middleware pair instead.

The three handlers run side by side in one process, in interleaved rounds, so that whatever else
the machine does weighs on all three alike; the figures are medians of the rounds, as ratios. Each
round is timed in CPU time of this process (every thread: Django's sync hops included) as well as
wall time: on a shared machine the CPU figure is the steadier one.

    .venv/bin/python bench/bench_requests.py [--rounds 15] [--requests 300]

Not part of the test suite. Needs a venv made with requirements.txt (django-prometheus is a runtime
dependency).
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

OURS = "metrics.middleware.PrometheusMiddleware"
DP_BEFORE = "django_prometheus.middleware.PrometheusBeforeMiddleware"
DP_AFTER = "django_prometheus.middleware.PrometheusAfterMiddleware"


def scope(path: str, token: str) -> dict:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1"), (b"coder-session-token", token.encode())],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 3000),
    }


async def one(app, s: dict) -> int:
    status = 0
    done = asyncio.Event()

    async def receive():
        if not done.is_set():
            done.set()
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()

    async def send(message):
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(s, receive, send)
    return status


async def rounds(apps: dict, s: dict, n_rounds: int, n_requests: int) -> dict[str, list[tuple[float, float]]]:
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in apps}
    for name, app in apps.items():  # warm up each
        for _ in range(50):
            assert await one(app, s) == 200, name
    for r in range(n_rounds):
        order = list(apps.items())
        if r % 2:
            order.reverse()
        for name, app in order:
            t, cpu = time.perf_counter(), time.process_time()
            for _ in range(n_requests):
                await one(app, s)
            wall, cpu = time.perf_counter() - t, time.process_time() - cpu
            results[name].append((n_requests / cpu, n_requests / wall))
    return results


async def middleware_alone(n: int) -> dict[str, float]:
    """µs per request of each middleware stack around a trivial async handler (no view, no DB):
    the cost of the metrics code and of the thread hops a sync-only middleware makes."""
    from django.http import HttpResponse
    from django.test import RequestFactory
    from django.utils.module_loading import import_string

    async def handler(request):
        return HttpResponse("ok")

    def stack(paths: list[str]):
        chain = handler
        for path in reversed(paths):
            mw = import_string(path)
            # Django adapts a sync-only middleware to an async chain with a thread hop each way.
            from asgiref.sync import async_to_sync, sync_to_async

            if getattr(mw, "async_capable", False):
                chain = mw(chain)
            else:
                chain = sync_to_async(mw(async_to_sync(chain)), thread_sensitive=True)
        return chain

    request = RequestFactory().get("/api/v2/buildinfo")
    out = {}
    for name, paths in {"none": [], "ours": [OURS], "django-prometheus": [DP_BEFORE, DP_AFTER]}.items():
        chain = stack(paths)
        for _ in range(200):
            await chain(request)
        best = float("inf")
        for _ in range(5):
            t = time.perf_counter()
            for _ in range(n):
                await chain(request)
            best = min(best, (time.perf_counter() - t) / n)
        out[name] = best * 1e6
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()

    os.environ.setdefault("CODER_DATA_DIR", tempfile.mkdtemp(prefix="coderd-bench-"))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "coderd.settings")
    import logging

    import django

    django.setup()
    logging.disable(logging.WARNING)
    from django.conf import settings
    from django.core.handlers.asgi import ASGIHandler
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from coderd.users.services import create_first_user, issue_api_key

    user = create_first_user("bench@example.com", "bench", "correct-horse-battery")[0]
    token = issue_api_key(user, "token")[1]

    base = [m for m in settings.MIDDLEWARE if m != OURS]
    configs = {
        "metrics off": base,
        "ours": [OURS, *base],
        "django-prometheus": [DP_BEFORE, *base, DP_AFTER],
    }
    apps = {}
    for name, middleware in configs.items():
        settings.MIDDLEWARE = middleware
        apps[name] = ASGIHandler()
    s = scope(f"/api/v2/users/{user.username}", token)

    results = asyncio.run(rounds(apps, s, args.rounds, args.requests))
    machine = f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores"
    print(f"machine: {machine}, Python {platform.python_version()}")
    print(f"GET /api/v2/users/{{user}} with a token, {args.rounds} interleaved rounds of {args.requests}")
    for index, clock in ((0, "CPU"), (1, "wall")):
        med = {name: statistics.median([v[index] for v in runs]) for name, runs in results.items()}
        off = med["metrics off"]
        print(f"-- {clock} time")
        for name, rps in med.items():
            cost = off / rps - 1
            us = (1 / rps - 1 / off) * 1e6
            print(f"{name:>18}: {rps:8.0f} req/s  ({cost * 100:+.1f}% time per request, {us:+.0f} µs)")
        ours = off / med["ours"] - 1
        theirs = off / med["django-prometheus"] - 1
        print(
            f"ours costs {ours * 100:.1f}%; django-prometheus {theirs * 100:.1f}%; ours/theirs {ours / theirs:.2f}"
        )
    alone = asyncio.run(middleware_alone(2000))
    print("-- the middleware alone around a trivial async handler (best of 5 x 2000)")
    for name, us in alone.items():
        print(f"{name:>18}: {us:7.1f} µs per request ({us - alone['none']:+.1f} µs)")
    os.system("date -u")


if __name__ == "__main__":
    main()
