"""Process metrics from psutil: the whole server (root and live children), CPU of reaped children
kept, and the event loop's task count."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import weakref

from prometheus_client import CollectorRegistry

from metrics.process import AsyncioTasksCollector, ProcessCollector


def _values(registry: CollectorRegistry) -> dict[str, float]:
    return {s.name: s.value for f in registry.collect() for s in f.samples}


def test_it_reports_every_process_family():
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    values = _values(registry)
    assert set(values) == {
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_start_time_seconds",
        "process_open_fds",
        "process_max_fds",
        "process_threads",
    }
    assert values["process_resident_memory_bytes"] > 0
    assert values["process_threads"] >= 1
    assert values["process_open_fds"] >= 3


def test_it_adds_live_children_and_keeps_the_cpu_of_exited_ones():
    registry = CollectorRegistry()
    ProcessCollector(pid=os.getpid(), registry=registry)
    before = _values(registry)
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        with_child = _values(registry)
        assert with_child["process_threads"] >= before["process_threads"] + 1
    finally:
        child.communicate(b"")
    burner = "n = 0\nfor i in range(6_000_000):\n    n += i\n"
    subprocess.run([sys.executable, "-c", burner], check=True)  # exits and is reaped
    after = _values(registry)
    assert after["process_cpu_seconds_total"] >= before["process_cpu_seconds_total"] + 0.1


def test_it_counts_the_tasks_of_the_serving_loops():
    loops: weakref.WeakSet = weakref.WeakSet()
    registry = CollectorRegistry()
    registry.register(AsyncioTasksCollector(loops))

    async def main() -> float:
        loops.add(asyncio.get_running_loop())
        gate = asyncio.Event()
        tasks = [asyncio.create_task(gate.wait()) for _ in range(5)]
        await asyncio.sleep(0)
        count = _values(registry)["python_asyncio_tasks"]
        gate.set()
        await asyncio.gather(*tasks)
        return count

    assert asyncio.run(main()) == 6  # five waiting tasks and main itself


def test_it_never_reports_less_cpu_when_a_child_vanishes_between_two_scrapes():
    # A worker that exits and is not reaped yet has its CPU time neither in its own entry (it is
    # gone from the listing) nor in the parent's children_* times: the counter must not dip.
    child = subprocess.Popen([sys.executable, "-c", "sum(range(3_000_000)); input()"], stdin=subprocess.PIPE)
    try:
        import psutil

        collector = ProcessCollector(pid=os.getpid())
        root, proc = psutil.Process(os.getpid()), psutil.Process(child.pid)
        while proc.cpu_times().user < 0.02:
            pass  # let the child burn a little CPU
        collector._processes = lambda: (root, [proc])
        with_child = _values_of(collector)["process_cpu_seconds_total"]
        collector._processes = lambda: (root, [])
        assert _values_of(collector)["process_cpu_seconds_total"] >= with_child
    finally:
        child.stdin.close()
        child.wait()


def _values_of(collector) -> dict[str, float]:
    return {s.name: s.value for f in collector.collect() for s in f.samples}


GC_UNDER_FORK = r"""
import gc, json, os, sys
from metrics.process import MultiprocessGCCollector
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

collector = MultiprocessGCCollector(inherited=False)  # the master: its whole life is its own
for _ in range(3):
    gc.collect()
read, write = os.pipe()
pid = os.fork()
if pid == 0:  # a worker: only what it runs after the fork is its own
    at_fork = gc.get_stats()
    for _ in range(5):
        gc.collect()
    collector.publish()
    mine = [s["collections"] - f["collections"] for s, f in zip(gc.get_stats(), at_fork)]
    os.write(write, json.dumps(mine).encode())
    os._exit(0)
os.waitpid(pid, 0)
worker = json.loads(os.read(read, 1000))
registry = CollectorRegistry()
registry.register(collector)  # publishes the master's counts when scraped, before the files are read
MultiProcessCollector(registry, path=os.environ["PROMETHEUS_MULTIPROC_DIR"])
master = [s["collections"] for s in gc.get_stats()]
scraped = {s.labels["generation"]: s.value for f in registry.collect() for s in f.samples
           if s.name == "python_gc_collections_total"}
print(json.dumps({"master": master, "worker": worker, "scraped": scraped, "files": sorted(os.listdir(os.environ["PROMETHEUS_MULTIPROC_DIR"]))}))
"""


def test_it_sums_gc_counts_of_the_master_and_forked_workers_without_counting_twice(tmp_path):
    """python_gc_* under gunicorn: each process publishes its own collections; a forked worker does
    not count again the ones it inherited from the master."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", GC_UNDER_FORK], env=env, capture_output=True, text=True, check=True
    )
    got = json.loads(out.stdout)
    assert got["worker"][2] == 5  # five full collections in the worker, after the fork
    assert len(got["files"]) == 2  # the master's counter file and the worker's
    expected = {
        str(g): float(m + w) for g, (m, w) in enumerate(zip(got["master"], got["worker"], strict=True))
    }
    assert got["scraped"] == expected
