"""coderd under gunicorn with several uvicorn workers: metrics that add up, workers that die.

Each test starts gunicorn (gunicorn.conf.py) on free loopback ports with its own data folder and
multiprocess directory, and stops it by PID.
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import sys
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
from django.core.checks import Error, Warning
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from coderd.deploy_checks import IN_MEMORY_LAYER, deployment_problems
from tests.services import REPO, Coderd, ServerProcess, http_get, total, wait_for

REDIS_LAYER = "channels_redis.core.RedisChannelLayer"
ME = "/api/v2/users/me"


def gunicorn(tmp_path: Path, redis_url: str, **env: str) -> Coderd:
    return Coderd(tmp_path / "data", workers=2, env={"CODER_REDIS_URL": redis_url, **env})


def counted_in(files: list[str], family_name: str = "coderd_api_requests_processed") -> float:
    """A counter summed over some processes' counter files (by default the requests processed)."""
    return sum(
        s.value
        for family in MultiProcessCollector.merge(files)
        if family.name == family_name
        for s in family.samples
        if s.name == f"{family_name}_total"
    )


@pytest.mark.redis
def test_it_spreads_requests_over_both_workers_and_one_scrape_adds_up(tmp_path, redis_url) -> None:
    multiproc = tmp_path / "multiproc"
    multiproc.mkdir()
    (multiproc / "counter_424242.db").write_bytes(b"left over from another run")
    server = gunicorn(tmp_path, redis_url, PROMETHEUS_MULTIPROC_DIR=str(multiproc))
    try:
        assert not (multiproc / "counter_424242.db").exists()  # emptied at start
        workers = server.worker_pids()
        assert len(workers) == 2

        token = server.first_user()  # POST first (201) + POST login (201)
        sent, refused = 300, 20
        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(lambda _: server.request("GET", ME, token=token)[0], range(sent)))
            codes += list(pool.map(lambda _: server.request("GET", ME)[0], range(refused)))
        assert Counter(codes) == {200: sent, 401: refused}

        before = server.scrape()
        # /healthz once (the readiness probe), the two POSTs, the GETs: every series exactly.
        by_code = Counter()
        for (name, labels), value in before.items():
            if name == "coderd_api_requests_processed_total":
                by_code[dict(labels)["code"], dict(labels)["method"]] += value
        assert by_code == {("200", "GET"): sent + 1, ("201", "POST"): 2, ("401", "GET"): refused}
        assert total(before, "coderd_api_requests_processed_total", path="/healthz") == 1
        everything = sent + refused + 3
        for histogram in ("coderd_api_request_latencies_seconds", "coderd_api_request_latencies_ms"):
            assert total(before, f"{histogram}_count") == everything
            assert total(before, f"{histogram}_bucket", le="+Inf") == everything
        assert before[("coderd_api_concurrent_requests", frozenset())] == 0
        assert before[("coderd_api_concurrent_websockets", frozenset())] == 0
        assert before[("coderd_api_total_user_count", frozenset({("status", "active")}))] == 1

        # Both workers served, and their files add up to the scrape.
        per_worker = {pid: counted_in([str(multiproc / f"counter_{pid}.db")]) for pid in workers}
        assert all(n > 0 for n in per_worker.values()), per_worker
        assert sum(per_worker.values()) == everything

        # The database query metrics too: each worker adds its numbers to its file within a second,
        # and the scrape is their sum (every authenticated GET read the token at least).
        queries = "coderd_db_query_counts_total"

        def query_counts() -> tuple[float, dict[int, float]] | None:
            # Each worker adds its numbers within a second of its own: wait for both, not for a
            # total that one busy worker can reach alone.
            in_files = {
                pid: sum(
                    s.value
                    for family in MultiProcessCollector.merge([str(multiproc / f"counter_{pid}.db")])
                    if family.name == "coderd_db_query_counts"
                    for s in family.samples
                    if s.labels["method"] == "GET"
                )
                for pid in workers
            }
            scraped = total(server.scrape(), queries, method="GET")
            done = (
                scraped >= sent
                and all(n > 0 for n in in_files.values())
                and sum(in_files.values()) == scraped
            )
            return (scraped, in_files) if done else None

        served, in_files = wait_for(query_counts, 10, "both workers' query counts in the scrape")
        assert served >= sent and sum(in_files.values()) == served  # every authenticated GET read the token

        # The database gauges are counted once for the replica: scrapes through either door and any
        # worker reuse the master's count until something changes or the interval passes.
        computed_at = (multiproc / "coderd-db-gauges.json").stat().st_mtime_ns
        headers = {"Coder-Session-Token": token}
        for _ in range(4):  # /metrics of whichever workers take them: the same sum as the listener
            view = server.scrape(server.base + "/metrics", headers)
            for key, value in before.items():
                if key[0] == "coderd_api_requests_processed_total":
                    assert view[key] == value, key
            before = server.scrape()  # the listener, which now also counts that /metrics request
        assert total(before, "coderd_api_requests_processed_total", path="/metrics") == 4
        assert (multiproc / "coderd-db-gauges.json").stat().st_mtime_ns == computed_at

        # Process metrics describe the master and both workers, not the listener's process alone.
        procs = [psutil.Process(server.pid), *(psutil.Process(p) for p in workers)]
        cpu = sum(p.cpu_times().user + p.cpu_times().system for p in procs)
        rss = sum(p.memory_info().rss for p in procs)
        after = server.scrape()
        assert after[("process_cpu_seconds_total", frozenset())] >= cpu
        assert after[("process_resident_memory_bytes", frozenset())] > 0.8 * rss
        assert after[("process_threads", frozenset())] >= 3
        # python_gc_* too: the master (when scraped) and each worker published their own
        # collections, which the scrape adds up.
        gc_counts = [
            counted_in([str(multiproc / f"counter_{pid}.db")], "python_gc_collections")
            for pid in (server.pid, *workers)
        ]
        assert all(n > 0 for n in gc_counts), gc_counts
        assert total(after, "python_gc_collections_total") >= sum(gc_counts)
    finally:
        server.stop()


def counter_samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample that must never go down: counters, and histograms' buckets, counts and sums."""
    out = {}
    for family in text_string_to_metric_families(text):
        if family.type in ("counter", "histogram"):
            for s in family.samples:
                if s.name.endswith(("_total", "_count", "_sum", "_bucket")):
                    out[s.name, frozenset(s.labels.items())] = s.value
    return out


@pytest.mark.redis
def test_it_keeps_counting_when_a_worker_is_killed_mid_load(tmp_path, redis_url) -> None:
    server = gunicorn(tmp_path, redis_url)
    try:
        token = server.first_user()
        daemon_worker = int(re.search(r"worker (\d+) runs the", server.process.log()).group(1))
        stop = threading.Event()
        outcomes: Counter = Counter()
        scrapes: list[tuple[int, str]] = []

        def load() -> None:
            while not stop.is_set():
                try:
                    outcomes[server.request("GET", ME, token=token, timeout=10)[0]] += 1
                except (OSError, http.client.HTTPException):
                    # A connection the killed worker held: refused, reset, or cut mid-body
                    # (IncompleteRead), which would otherwise end this load thread.
                    outcomes["error"] += 1

        def scrape() -> None:
            while not stop.is_set():
                status, _, body = http_get(server.metrics_url)
                scrapes.append((status, body.decode()))

        threads = [threading.Thread(target=load) for _ in range(4)] + [threading.Thread(target=scrape)]
        for t in threads:
            t.start()
        try:
            wait_for(lambda: outcomes[200] >= 150, 60, "load before the kill")
            os.kill(daemon_worker, signal.SIGKILL)
            replaced = wait_for(
                lambda: len(server.worker_pids() - {daemon_worker}) == 2 and server.worker_pids(),
                60,
                "a replacement worker",
            )
            at_replacement = outcomes[200]
            wait_for(lambda: outcomes[200] >= at_replacement + 150, 60, "load after the replacement")
        finally:
            stop.set()
            for t in threads:
                t.join(30)

        assert daemon_worker not in replaced
        assert len(scrapes) >= 10
        failed = [(status, text[:300]) for status, text in scrapes if status != 200]
        assert not failed, f"the listener failed {len(failed)} of {len(scrapes)} scrapes: {failed[0]}"
        previous: dict = {}
        for _, text in scrapes:
            current = counter_samples(text)
            for key, value in previous.items():
                assert key in current, f"{key} vanished"
                assert current[key] >= value, f"{key} went down: {value} -> {current[key]}"
            previous = current

        final = server.scrape()
        assert final[("coderd_api_concurrent_requests", frozenset())] == 0
        assert final[("coderd_api_concurrent_websockets", frozenset())] == 0
        # Every answer the clients got was counted (the count is taken before the response is
        # sent); requests cut by the kill may or may not have been.
        got = outcomes[200]
        counted = total(final, "coderd_api_requests_processed_total", code="200", method="GET")
        assert got <= counted <= got + outcomes["error"] + 4
        assert set(outcomes) <= {200, "error"}
        # The replacement took over the in-process daemons: one worker runs them, never two.
        wait_for(
            lambda: server.scrape()[("coderd_provisionerd_num_daemons", frozenset())] == 3,
            30,
            "the daemons to be taken over",
        )
    finally:
        server.stop()


@pytest.mark.redis
def test_it_hands_the_daemons_over_on_a_reload(tmp_path, redis_url) -> None:
    server = gunicorn(tmp_path, redis_url)
    try:
        old = server.worker_pids()
        os.kill(server.pid, signal.SIGHUP)  # new workers start, then the old ones stop gracefully

        def settled() -> bool:
            # The lock may pass through the other old worker while the old ones stop one by one;
            # in the end a new worker holds it and exactly one set of daemons runs.
            holders = re.findall(r"worker (\d+) runs the", server.process.log())
            workers = server.worker_pids()
            return (
                len(workers) == 2
                and not workers & old
                and int(holders[-1]) in workers
                and server.scrape()[("coderd_provisionerd_num_daemons", frozenset())] == 3
            )

        wait_for(settled, 60, "a new worker to run the daemons")
    finally:
        server.stop()


def test_it_refuses_several_workers_without_redis(tmp_path) -> None:
    env = {
        "CODER_DATA_DIR": str(tmp_path),
        "CODER_WORKERS": "1",
        "CODER_REDIS_URL": "",
        "CODER_HTTP_ADDRESS": "127.0.0.1:0",
    }
    gunicorn_bin = str(Path(sys.executable).parent / "gunicorn")
    # `-w 2` on the command line wins over CODER_WORKERS=1, and the check still sees it.
    process = ServerProcess(
        [gunicorn_bin, "-c", str(REPO / "gunicorn.conf.py"), "-w", "2"], env, name="gunicorn"
    )
    try:
        assert process.popen.wait(timeout=60) == 2
    finally:
        process.stop()
    log = process.log()
    assert "coderd.E101" in log
    assert "CODER_REDIS_URL" in log
    assert "Traceback" not in log


def test_it_says_a_bad_worker_count_in_one_line(tmp_path) -> None:
    env = {"CODER_DATA_DIR": str(tmp_path), "CODER_WORKERS": "two"}
    gunicorn_bin = str(Path(sys.executable).parent / "gunicorn")
    process = ServerProcess([gunicorn_bin, "-c", str(REPO / "gunicorn.conf.py")], env, name="gunicorn")
    try:
        assert process.popen.wait(timeout=60) != 0
    finally:
        process.stop()
    assert "gunicorn: CODER_WORKERS='two' is not an integer" in process.log()
    assert "Traceback" not in process.log()


def test_it_says_in_one_line_that_the_data_folder_cannot_be_made(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    env = {"CODER_DATA_DIR": str(blocker / "data"), "CODER_HTTP_ADDRESS": "127.0.0.1:0"}
    gunicorn_bin = str(Path(sys.executable).parent / "gunicorn")
    process = ServerProcess([gunicorn_bin, "-c", str(REPO / "gunicorn.conf.py")], env, name="gunicorn")
    try:
        assert process.popen.wait(timeout=60) == 2
    finally:
        process.stop()
    assert f"gunicorn: CODER_DATA_DIR={str(blocker / 'data')!r} cannot be created: " in process.log()
    assert "Traceback" not in process.log()


@pytest.mark.parametrize(
    ("environ", "backend", "postgres", "ids"),
    [
        ({}, IN_MEMORY_LAYER, False, []),
        ({"CODER_WORKERS": "1"}, IN_MEMORY_LAYER, False, []),
        ({"CODER_WORKERS": "4"}, IN_MEMORY_LAYER, False, ["coderd.E101"]),
        ({"WEB_CONCURRENCY": "3"}, IN_MEMORY_LAYER, False, ["coderd.E101"]),
        ({"CODER_WORKERS": "4"}, REDIS_LAYER, True, []),
        ({"CODER_REPLICAS": "2"}, IN_MEMORY_LAYER, True, ["coderd.E102"]),
        ({"CODER_REPLICAS": "2"}, REDIS_LAYER, False, ["coderd.E103"]),
        ({"CODER_REPLICAS": "2"}, REDIS_LAYER, True, []),
        ({}, IN_MEMORY_LAYER, True, ["coderd.W101"]),
        ({"CODER_REPLICAS": "1"}, IN_MEMORY_LAYER, True, []),
    ],
)
def test_it_checks_that_workers_and_replicas_have_redis(environ, backend, postgres, ids) -> None:
    problems = deployment_problems(environ, backend, postgres)
    assert [p.id for p in problems] == ids
    for p in problems:
        assert p.hint
        assert isinstance(p, Error if p.id.startswith("coderd.E") else Warning)


def test_it_merges_worker_files_exactly_as_prometheus_client_does(tmp_path) -> None:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.mmap_dict import MmapedDict, mmap_key

    from metrics.multiprocess import CachingMultiProcessCollector

    def write(name: str, entries: list[tuple[str, str, dict[str, str], float]]) -> None:
        f = MmapedDict(str(tmp_path / name))
        for metric, sample, labels, value in entries:
            f.write_value(
                mmap_key(metric, sample, list(labels), list(labels.values()), f"{metric} help"), value, 0.0
            )
        f.close()

    requests = "coderd_api_requests_processed"
    latency = "coderd_api_request_latencies_seconds"
    for pid, scale in ((101, 1.0), (102, 2.5), (103, 0.5)):  # 103: a worker that has exited
        counters = [
            (requests, f"{requests}_total", {"code": c, "method": "GET", "path": p}, scale * i)
            for i, (c, p) in enumerate([("200", "/a"), ("404", ""), ("200", "/b/{id}")], 1)
        ]
        write(f"counter_{pid}.db", counters)
        histogram = []
        for path in ("/a", "/b/{id}"):
            labels = {"method": "GET", "path": path}
            for le in ("0.001", "0.005", "0.1", "+Inf"):
                histogram.append((latency, f"{latency}_bucket", {**labels, "le": le}, scale * len(le)))
            histogram.append((latency, f"{latency}_count", labels, scale * 99))
            histogram.append((latency, f"{latency}_sum", labels, scale * 0.25))
        write(f"histogram_{pid}.db", histogram)
        if pid != 103:
            write(
                f"gauge_livesum_{pid}.db",
                [("coderd_api_concurrent_requests", "coderd_api_concurrent_requests", {}, scale)],
            )

    stock, ours = CollectorRegistry(), CollectorRegistry()
    MultiProcessCollector(stock, path=str(tmp_path))
    cached = CachingMultiProcessCollector(ours, path=str(tmp_path))

    def families(registry) -> dict:
        return {
            f.name: (
                f.type,
                f.documentation,
                sorted((s.name, sorted(s.labels.items()), s.value) for s in f.samples),
            )
            for f in text_string_to_metric_families(generate_latest(registry).decode())
        }

    expected = families(stock)
    # The exited worker's counts stay in the sum: 1 + 2.5 + 0.5 requests of ("200", "/a").
    a = ("coderd_api_requests_processed_total", [("code", "200"), ("method", "GET"), ("path", "/a")], 4.0)
    assert a in expected["coderd_api_requests_processed"][2]
    assert families(ours) == expected
    assert families(ours) == expected  # again, from the key cache
    assert len(cached._keys) > 0
