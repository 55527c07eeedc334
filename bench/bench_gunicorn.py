"""coderd under gunicorn: 1 and 2 workers, multiprocess metrics on and off, what each request costs.

Starts, side by side on free loopback ports (embedded SQLite each, one Redis for all, no in-process
daemons so nothing polls in the background):
    1w-on   gunicorn, 1 worker,  metrics on  (multiprocess mode)
    2w-on   gunicorn, 2 workers, metrics on  (multiprocess mode)
    2w-off  gunicorn, 2 workers, metrics off (the middleware still counts, in plain memory)
and loads each in interleaved rounds with `wrk -t1`, 8 connections a worker (one thread: on 2 cores
the load generator must leave the workers the cores) on an authenticated API GET
(`/api/v2/users/me` with a session token). Each round also reads, from /proc, the CPU time of the server's workers and master
and of wrk itself (its rusage), and the machine's idle time. Figures are medians of the rounds:
- req/s, and the server's CPU time a request (workers + master);
- the cores the server and wrk used, and those left idle: 2 workers go only as far as the cores
  they get (wrk's own share, and the machine's other work);
- 2 workers against 1 (medians of same-round ratios): throughput, req/s per core used, and CPU
  time a request (equal means the workers do not slow each other down: no lock, SQLite or
  metrics-file contention; that would show as more CPU a request, or as idle cores);
- multiprocess metrics: CPU time a request, 2w-on against 2w-off (same-round ratios).
Then, in this process, where the machine's load weighs alike on both sides: the metric writes of one
request (the in-flight gauge up and down, the counter, the two latency histograms) with
prometheus_client's multiprocess (mmap) values against plain ones, in CPU time, and where the
difference goes (cProfile); and the whole GET through coderd's ASGI application, metrics on
multiprocess values against plain ones, interleaved rounds. Then, on 2w-on, one URL of each
of 100 route patterns is requested and the master's listener scraped as Prometheus asks
(OpenMetrics), timed end to end; and the same scrape's work (merge the worker files, render) done
by prometheus_client alone and by coderd's path, interleaved, as a ratio.

    apt-get install -y wrk
    flock /tmp/bench.lock .venv/bin/python bench/bench_gunicorn.py [--rounds 5] [--seconds 4] [--connections 8]
    .venv/bin/python bench/bench_gunicorn.py --scrape-only     # the scrape part alone (no wrk)

Everything started is stopped by PID at the end. Not part of the test suite. Needs a venv made with
requirements.txt (its servers are started by tests/services.py, which does not need pytest), `wrk`
and `redis-server`.
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


def server_cpu(server: Coderd) -> tuple[float, float]:
    """CPU seconds (user + system) of the server's live workers, and of its master (with the workers
    it reaped: a worker that exited is counted there)."""
    master = psutil.Process(server.pid)
    workers = 0.0
    for child in master.children(recursive=True):
        try:
            workers += sum(child.cpu_times()[:2])
        except psutil.Error:
            pass
    return workers, sum(master.cpu_times()[:4])


def idle_seconds() -> float:
    """Idle CPU seconds of the whole machine so far (all cores, from /proc/stat)."""
    times = psutil.cpu_times()
    return times.idle + getattr(times, "iowait", 0.0)


def wrk(url: str, token: str, seconds: float, connections: int) -> tuple[float, int, float]:
    """(requests per second, requests, wrk's own CPU seconds) of one `wrk -t1` run."""
    process = subprocess.Popen(
        ["wrk", "-t1", f"-c{connections}", f"-d{int(seconds)}s", "-H", f"Coder-Session-Token: {token}", url],
        stdout=subprocess.PIPE,
        text=True,
    )
    out = process.stdout.read()  # type: ignore[union-attr]
    process.stdout.close()  # type: ignore[union-attr]
    _, status, usage = os.wait4(process.pid, 0)  # its rusage: what the load generator itself cost
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"wrk failed ({process.returncode}):\n{out}")
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non_2xx:
        raise SystemExit(f"wrk saw {non_2xx.group(1)} error answers from {url}:\n{out}")
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    return rate, requests, usage.ru_utime + usage.ru_stime


def django_here() -> None:
    """Django in this process, on a data folder of its own (migrated), for the in-process parts."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "coderd.settings")
    os.environ.setdefault("CODER_DATA_DIR", tempfile.mkdtemp(prefix="coderd-bench-"))
    import logging

    import django

    django.setup()
    logging.disable(logging.WARNING)
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def route_urls() -> list[str]:
    """A concrete URL for every route pattern of the project (HTTP ones: api, admin, healthz)."""
    django_here()
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
    parser.add_argument("--connections", type=int, default=8, help="wrk connections per worker")
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


class Round:
    """One wrk run against one server: what it reached and what it cost."""

    def __init__(self, server: Coderd, token: str, seconds: float, connections: int) -> None:
        workers, master = server_cpu(server)
        idle, wall = idle_seconds(), time.perf_counter()
        self.rate, self.requests, wrk_cpu = wrk(server.base + "/api/v2/users/me", token, seconds, connections)
        wall = time.perf_counter() - wall
        workers_after, master_after = server_cpu(server)
        self.workers_us = (workers_after - workers) / self.requests * 1e6
        self.master_us = (master_after - master) / self.requests * 1e6
        self.cpu_us = self.workers_us + self.master_us
        self.server_cores = (workers_after - workers + master_after - master) / wall
        self.wrk_cores = wrk_cpu / wall
        self.idle_cores = (idle_seconds() - idle) / wall
        self.per_core = self.rate / self.server_cores


def throughput(args: argparse.Namespace, servers: dict[str, Coderd], tokens: dict[str, str]) -> None:
    rounds: dict[str, list[Round]] = {name: [] for name in servers}
    names = list(servers)
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate who goes first
            connections = args.connections * len(servers[name].worker_pids())  # the same per worker
            rounds[name].append(Round(servers[name], tokens[name], args.seconds, connections))

    def median(name: str, field: str) -> float:
        return statistics.median(getattr(x, field) for x in rounds[name])

    print(
        f"\nauthenticated GET /api/v2/users/me, wrk -t1 -c{args.connections} per worker, {args.rounds} rounds of "
        f"{args.seconds:g}s each, interleaved; medians. CPU time a request from /proc (workers + master)."
    )
    print(
        f"  {'':7} {'req/s':>7} {'CPU/request':>12} {'(master)':>9} {'server':>7} {'wrk':>5} {'idle':>5}  rounds (req/s)"
    )
    for name in names:
        print(
            f"  {name:7} {median(name, 'rate'):7.0f} {median(name, 'cpu_us'):9.0f} µs {median(name, 'master_us'):6.0f} µs "
            f"{median(name, 'server_cores'):7.2f} {median(name, 'wrk_cores'):5.2f} {median(name, 'idle_cores'):5.2f}  "
            + " ".join(f"{x.rate:.0f}" for x in rounds[name])
        )
    print("  (server, wrk, idle: cores used by each, and left idle on the machine, during the rounds)")

    def ratio(a: str, b: str, field: str) -> float:
        """The median over the rounds of a's figure over b's in the same round (both met the same load)."""
        return statistics.median(
            getattr(x, field) / getattr(y, field) for x, y in zip(rounds[a], rounds[b], strict=True)
        )

    rate_ratio, core_ratio = ratio("2w-on", "1w-on", "rate"), ratio("2w-on", "1w-on", "server_cores")
    print("  (ratios: medians over the rounds of the two servers' figures in the same round)")
    print(
        f"  2 workers / 1 worker, throughput:          {rate_ratio:.2f}x (the server got {core_ratio:.2f}x the cores)"
    )
    print(f"  2 workers / 1 worker, req/s per core used: {ratio('2w-on', '1w-on', 'per_core'):.2f}")
    print(
        f"  2 workers / 1 worker, CPU time a request:  {(ratio('2w-on', '1w-on', 'cpu_us') - 1) * 100:+.1f} % "
        "(contention between the workers would raise it)"
    )
    cost = ratio("2w-on", "2w-off", "cpu_us") - 1
    print(f"  multiprocess metrics, CPU time a request, 2w-on / 2w-off: {cost * 100:+.1f} %")
    print(f"  load average after the rounds: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    metric_writes(median("2w-on", "cpu_us"))
    whole_request(args.rounds * 2, 300)


def metric_writes(request_us: float, n: int = 20_000) -> None:
    """The metric writes of one request, multiprocess (mmap) values against plain ones, in CPU time."""
    import cProfile
    import io
    import pstats

    from prometheus_client import CollectorRegistry, values

    from metrics.registry import build_metrics

    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="coderd-bench-mp-")

    def build(value_class, multiprocess: bool):
        values.ValueClass = value_class
        metrics = build_metrics(CollectorRegistry(), multiprocess=multiprocess)
        one_request(metrics)  # its children made now, with this value class
        return metrics

    def one_request(metrics) -> None:
        gauge = metrics.request_gauge("GET", "")
        gauge.inc()
        gauge.dec()
        metrics.observe_request("GET", "/api/v2/users/me", 200, 0.0012)

    def per_request(metrics) -> float:
        start = time.process_time()
        for _ in range(n):
            one_request(metrics)
        return (time.process_time() - start) / n * 1e6

    try:
        mmap_values = build(values.get_value_class(), True)
        plain = build(values.MutexValue, False)
    finally:
        shutil.rmtree(os.environ.pop("PROMETHEUS_MULTIPROC_DIR"), ignore_errors=True)
        values.ValueClass = values.get_value_class()  # this process's own again
    timings: dict[str, list[float]] = {"multiprocess": [], "plain": []}
    for _ in range(7):
        timings["multiprocess"].append(per_request(mmap_values))
        timings["plain"].append(per_request(plain))
    on, off = (statistics.median(timings[k]) for k in ("multiprocess", "plain"))
    print(
        f"\none request's metric writes in this process (gauge up and down, counter, 2 histograms), CPU time, "
        f"medians of 7 x {n}:\n  multiprocess (mmap) {on:.1f} µs, plain {off:.1f} µs: +{on - off:.1f} µs a request, "
        f"{(on - off) / request_us * 100:.2f} % of 2w-on's {request_us:.0f} µs"
    )
    profile = cProfile.Profile()
    profile.runcall(per_request, mmap_values)
    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(6)
    lines = [line for line in text.getvalue().splitlines() if "/" in line or "{" in line][:6]
    print("  where the multiprocess writes go (cProfile, own time):")
    for line in lines:
        print("   ", re.sub(r"\S*site-packages/", "", line.strip()))


def whole_request(n_rounds: int, n_requests: int) -> None:
    """The whole authenticated GET through coderd's ASGI application in this process, its metrics on
    prometheus_client's multiprocess (mmap) values as in a worker, against plain ones: CPU time of this
    process (every thread) a request, interleaved rounds, median of the rounds' ratios. The same
    comparison as 2w-on / 2w-off without the machine's load in it."""
    import asyncio

    from bench.bench_requests import one, scope

    django_here()
    from prometheus_client import values

    from coderd.users.services import create_first_user, issue_api_key
    from metrics import runtime

    user = create_first_user("bench@example.com", "bench", "correct-horse-battery")[0]
    request = scope("/api/v2/users/me", issue_api_key(user, "token")[1])
    multiproc_dir = tempfile.mkdtemp(prefix="coderd-bench-mp-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = multiproc_dir
    previous = runtime._state
    states = {}
    try:
        for name, value_class in (("multiprocess", values.get_value_class()), ("plain", values.MutexValue)):
            values.ValueClass = value_class  # the metric objects made from now on write through it
            if name == "multiprocess":
                states[name] = runtime.build_state(with_database=False, multiproc_dir=multiproc_dir)
            else:
                states[name] = runtime.build_state(with_database=False)
            runtime.install(states[name])
            asyncio.run(_requests(one, request, 100))  # their labelled children made now

        cpu: dict[str, list[float]] = {name: [] for name in states}
        for r in range(n_rounds):
            for name in list(states)[:: 1 if r % 2 else -1]:
                runtime.install(states[name])
                start = time.process_time()
                asyncio.run(_requests(one, request, n_requests))
                cpu[name].append((time.process_time() - start) / n_requests * 1e6)
    finally:
        runtime.install(previous)
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR")
        values.ValueClass = values.get_value_class()
        shutil.rmtree(multiproc_dir, ignore_errors=True)
    on, off = (statistics.median(cpu[n]) for n in ("multiprocess", "plain"))
    ratio = statistics.median(a / b for a, b in zip(cpu["multiprocess"], cpu["plain"], strict=True))
    print(
        f"\nthe whole GET /api/v2/users/me in this process (coderd's ASGI application, {n_rounds} interleaved "
        f"rounds of {n_requests}), CPU time a request:\n  metrics on multiprocess values {on:.0f} µs, on plain "
        f"values {off:.0f} µs: {(ratio - 1) * 100:+.1f} % (median of the rounds' ratios)"
    )


async def _requests(one, request: dict, n: int) -> None:
    from coderd.asgi import application

    for _ in range(n):
        assert await one(application, request) == 200


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
