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
listener is scraped as Prometheus asks (OpenMetrics), timed end to end; and, side by side in this
process on that server's multiprocess directory, the same scrape's work (merge the worker files,
render) done by prometheus_client alone (`MultiProcessCollector` + its encoder) and by coderd's
path (`metrics.multiprocess` + `metrics.serving.CachedEncoder`), interleaved, as a ratio.

    apt-get install -y wrk
    .venv/bin/python bench/bench_gunicorn.py [--rounds 5] [--seconds 4] [--connections 32]
    .venv/bin/python bench/bench_gunicorn.py --scrape-only     # the scrape part alone (no wrk)

Everything started is stopped by PID at the end. Not part of the test suite.

Needs a venv made with requirements-dev.txt (it starts its servers with tests/services.py, which
imports pytest), and `wrk`.
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
    parser.add_argument("--scrape-only", action="store_true", help="only the 2-worker scrape figures")
    args = parser.parse_args()
    if shutil.which("wrk") is None and not args.scrape_only:
        raise SystemExit("bench_gunicorn: wrk is missing (apt-get install -y wrk)")

    print(f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; {machine()}")
    redis = Redis.start()
    root = Path(tempfile.mkdtemp(prefix="coderd-bench-"))
    servers: dict[str, Coderd] = {}
    try:
        common = {"CODER_REDIS_URL": redis.url, "CODER_PROVISIONER_DAEMONS": "0", "CODER_LOG_LEVEL": "error"}
        configs = {"1w-on": (1, True), "2w-on": (2, True), "2w-off": (2, False)}
        if args.scrape_only:
            configs = {"2w-on": configs["2w-on"]}
        multiproc_dir = root / "2w-on-metrics"  # read by this process too, for the side by side
        for name, (workers, metrics) in configs.items():
            env = {**common, "PROMETHEUS_MULTIPROC_DIR": str(multiproc_dir)} if name == "2w-on" else common
            servers[name] = Coderd(root / name, workers=workers, env=env, metrics=metrics)
        tokens = {name: s.first_user() for name, s in servers.items()}
        if not args.scrape_only:
            throughput(args, servers, tokens)
        scrape(args, servers["2w-on"], tokens["2w-on"], multiproc_dir)
    finally:
        for s in servers.values():
            s.stop()
        redis.stop()
        shutil.rmtree(root, ignore_errors=True)


def throughput(args: argparse.Namespace, servers: dict[str, Coderd], tokens: dict[str, str]) -> None:
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


def scrape(args: argparse.Namespace, server: Coderd, token: str, multiproc_dir: Path) -> None:
    """Every route pattern in use, in both workers, then the master's listener; then side by side."""
    urls = route_urls()[: args.routes]
    for url in urls:
        for _ in range(4):  # so that both workers have most label sets in their own files
            server.request("GET", url, token=token)
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
    side_by_side(multiproc_dir, args.scrapes)


def side_by_side(multiproc_dir: Path, scrapes: int) -> None:
    """Merge + render of the same worker files, prometheus_client alone against coderd's path."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.exposition import choose_encoder
    from prometheus_client.multiprocess import MultiProcessCollector

    from metrics.multiprocess import CachingMultiProcessCollector
    from metrics.serving import CachedEncoder

    stock, ours = CollectorRegistry(), CollectorRegistry()
    MultiProcessCollector(stock, path=str(multiproc_dir))
    CachingMultiProcessCollector(ours, path=str(multiproc_dir))
    print(
        f"\nthe same work in this process, on the server's {len(list(multiproc_dir.glob('*.db')))} worker files:"
    )
    for label, accept in (("OpenMetrics", PROMETHEUS_ACCEPT), ("text 0.0.4", None)):
        encoder, _ = choose_encoder(accept)
        cached = CachedEncoder(encoder)
        assert cached(ours) == encoder(ours), (
            "the cached rendering must be prometheus_client's, byte for byte"
        )
        times: dict[str, list[float]] = {"prometheus_client": [], "coderd": []}
        for _ in range(scrapes):
            for name, render, registry in (("prometheus_client", encoder, stock), ("coderd", cached, ours)):
                start = time.perf_counter()
                render(registry)
                times[name].append(time.perf_counter() - start)
        old, new = (statistics.median(times[n]) * 1000 for n in ("prometheus_client", "coderd"))
        print(
            f"  {label:11}  prometheus_client alone {old:6.1f} ms   coderd {new:5.1f} ms   "
            f"ratio {old / new:4.1f}x  (medians of {scrapes}, interleaved)"
        )


if __name__ == "__main__":
    main()
