"""coderd under gunicorn: throughput with 1 and 2 workers, multiprocess metrics on and off, scrape cost.

Starts, side by side on free loopback ports (embedded SQLite each, one Redis for all, no in-process
daemons so nothing polls in the background):
    1w-on   gunicorn, 1 worker,  metrics on  (multiprocess mode)
    2w-on   gunicorn, 2 workers, metrics on  (multiprocess mode)
    2w-off  gunicorn, 2 workers, metrics off (the middleware still counts, in plain memory)
and loads each in interleaved rounds with `wrk` (its own process) on an authenticated API GET
(`/api/v2/users/me` with a session token), so that whatever else the machine does weighs on all
alike; figures are medians of the rounds, compared as ratios. Then, on 2w-on, one URL of each of
100 route patterns is requested (GET, each a new label set) and the master's
listener is scraped as Prometheus asks (OpenMetrics), timed end to end.

    apt-get install -y wrk
    .venv/bin/python bench/bench_gunicorn.py [--rounds 5] [--seconds 4] [--connections 32]

Everything started is stopped by PID at the end. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.services import Coderd, Redis, http_get, parse_samples  # noqa: E402

PROMETHEUS_ACCEPT = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
CONVERTER = re.compile(r"<(?:([^>:]+):)?([^>]+)>")


def server_cpu(server: Coderd) -> float:
    """CPU seconds of the server: its master and workers (and exited workers, reaped by the master)."""
    master = psutil.Process(server.pid)
    total = sum(master.cpu_times()[:4])  # user, system, and the reaped children's
    for child in master.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.Error:
            pass
    return total


def wrk(url: str, token: str, seconds: float, connections: int) -> tuple[float, int]:
    """(requests per second, requests) wrk reaches (2 threads: the machine's 2 cores are shared)."""
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{int(seconds)}s", "-H", f"Coder-Session-Token: {token}", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non_2xx:
        raise SystemExit(f"wrk saw {non_2xx.group(1)} error answers from {url}:\n{out}")
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), requests


def route_urls() -> list[str]:
    """A concrete URL for every route pattern of the project (HTTP ones: api, admin, healthz)."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "coderd.settings")
    os.environ.setdefault("CODER_DATA_DIR", tempfile.mkdtemp(prefix="coderd-bench-"))
    import django

    django.setup()
    from django.urls import URLResolver, get_resolver

    def walk(resolver, prefix: str):
        for p in resolver.url_patterns:
            if isinstance(p, URLResolver):
                yield from walk(p, prefix + str(p.pattern))
            else:
                yield prefix + str(p.pattern)

    def concrete(route: str) -> str:
        def value(m: re.Match) -> str:
            kind = m.group(1) or "str"
            return {"int": "1", "uuid": str(uuid.uuid4()), "uuidstr": str(uuid.uuid4())}.get(kind, "x")

        return "/" + CONVERTER.sub(value, route)

    urls = []
    for route in dict.fromkeys(walk(get_resolver(), "")):
        if "(?P<" in route or route.startswith("^"):
            continue  # regex routes (the admin's catch-all): covered by the others
        urls.append(concrete(route))
    return urls


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=4)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--scrapes", type=int, default=50)
    parser.add_argument("--routes", type=int, default=100, help="route patterns to put in use")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("bench_gunicorn: wrk is missing (apt-get install -y wrk)")

    print(f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; {machine()}")
    redis = Redis.start()
    root = Path(tempfile.mkdtemp(prefix="coderd-bench-"))
    servers: dict[str, Coderd] = {}
    try:
        common = {"CODER_REDIS_URL": redis.url, "CODER_PROVISIONER_DAEMONS": "0", "CODER_LOG_LEVEL": "error"}
        configs = {"1w-on": (1, True), "2w-on": (2, True), "2w-off": (2, False)}
        for name, (workers, metrics) in configs.items():
            servers[name] = Coderd(root / name, workers=workers, env=common, metrics=metrics)
        tokens = {name: s.first_user() for name, s in servers.items()}

        results: dict[str, list[float]] = {name: [] for name in servers}
        cpu_per_request: dict[str, list[float]] = {name: [] for name in servers}
        names = list(servers)
        for r in range(args.rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate who goes first
                url = servers[name].base + "/api/v2/users/me"
                cpu = server_cpu(servers[name])
                rate, requests = wrk(url, tokens[name], args.seconds, args.connections)
                results[name].append(rate)
                cpu_per_request[name].append((server_cpu(servers[name]) - cpu) / requests)
        median = {name: statistics.median(v) for name, v in results.items()}
        cpu_median = {name: statistics.median(v) for name, v in cpu_per_request.items()}
        print(
            f"\nauthenticated GET /api/v2/users/me, wrk -t2 -c{args.connections}, {args.rounds} rounds of {args.seconds:g}s"
        )
        for name in names:
            rounds = " ".join(f"{v:.0f}" for v in results[name])
            print(
                f"  {name:7} {median[name]:8.0f} req/s (rounds: {rounds}); "
                f"server CPU {cpu_median[name] * 1e6:.0f} µs a request"
            )
        print(f"  2 workers / 1 worker (metrics on):     {median['2w-on'] / median['1w-on']:.2f}x")
        print(f"  2 workers, metrics on / metrics off:   {median['2w-on'] / median['2w-off']:.3f}")
        cost = cpu_median["2w-on"] / cpu_median["2w-off"] - 1
        print(f"  multiprocess metrics, server CPU a request: {cost * 100:+.1f} % against metrics off")

        # Scrape cost: every route pattern in use, in both workers, then the master's listener.
        server = servers["2w-on"]
        urls = route_urls()[: args.routes]
        for url in urls:
            for _ in range(4):  # so that both workers have most label sets in their own files
                server.request("GET", url, token=tokens["2w-on"])
        text = http_get(server.metrics_url)[2].decode()
        samples = parse_samples(text)
        label_sets = {
            (dict(labels)["method"], dict(labels)["path"])
            for (n, labels), _ in samples.items()
            if n == "coderd_api_request_latencies_seconds_count"
        }
        master = psutil.Process(server.pid)
        cpu_before = sum(master.cpu_times()[:2])
        times = []
        for _ in range(args.scrapes):
            start = time.perf_counter()
            status, _, body = http_get(server.metrics_url, {"Accept": PROMETHEUS_ACCEPT})
            times.append(time.perf_counter() - start)
            assert status == 200
        cpu_per_scrape = (sum(master.cpu_times()[:2]) - cpu_before) / args.scrapes
        times.sort()
        print(
            f"\nscrape of the master's listener, 2 workers, {len({p for _, p in label_sets})} route patterns "
            f"({len(label_sets)} method+route label sets), {len(samples)} samples, {len(body) // 1024} KiB:"
        )
        print(
            f"  median {statistics.median(times) * 1000:.1f} ms, p90 {times[int(len(times) * 0.9)] * 1000:.1f} ms "
            f"over {args.scrapes} scrapes; CPU time of the master per scrape {cpu_per_scrape * 1000:.1f} ms"
        )
        print(f"  load average during the run: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    finally:
        for s in servers.values():
            s.stop()
        redis.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
