"""Process metrics from psutil (Linux, macOS and Windows alike) and the event loop's task count.

prometheus_client's own ProcessCollector reads /proc and so is Linux-only; this one has the same
names (METRICS.md §3). With a root pid it describes the whole server: the root (gunicorn's master,
or the only process) plus its live descendants, with the CPU time of children that have exited
(reaped, so counted in the root's `children_*` times) still included, so the counter never drops.
"""

from __future__ import annotations

import asyncio
import gc
import os
import threading
import weakref

import psutil
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector


class ProcessCollector(Collector):
    def __init__(self, pid: int | None = None, registry: CollectorRegistry | None = None) -> None:
        self.pid = pid
        # A worker that has exited but is not yet reaped has its CPU time in neither place for a
        # moment: the counter reports the highest total seen, so it never goes down.
        self._cpu_floor = 0.0
        self._cpu_lock = threading.Lock()
        if registry is not None:
            registry.register(self)

    def _processes(self) -> tuple[psutil.Process, list[psutil.Process]]:
        root = psutil.Process(self.pid or os.getpid())
        try:
            children = root.children(recursive=True)
        except psutil.Error:
            children = []
        return root, children

    def collect(self):
        try:
            root, children = self._processes()
        except psutil.Error:
            return
        cpu = rss = vms = 0.0
        fds = threads = 0
        have_fds = True
        for i, proc in enumerate([root, *children]):
            try:
                with proc.oneshot():
                    t = proc.cpu_times()
                    mem = proc.memory_info()
                    n_threads = proc.num_threads()
                    try:
                        n_fds = proc.num_fds() if hasattr(proc, "num_fds") else proc.num_handles()
                    except psutil.AccessDenied:
                        n_fds, have_fds = 0, have_fds and i > 0
            except psutil.Error:
                continue  # a child that exited between listing and reading
            cpu += t.user + t.system + getattr(t, "children_user", 0.0) + getattr(t, "children_system", 0.0)
            rss += mem.rss
            vms += mem.vms
            threads += n_threads
            fds += n_fds

        with self._cpu_lock:
            cpu = self._cpu_floor = max(self._cpu_floor, cpu)
        yield _counter("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.", cpu)
        yield _gauge("process_resident_memory_bytes", "Resident memory size in bytes.", rss)
        yield _gauge("process_virtual_memory_bytes", "Virtual memory size in bytes.", vms)
        yield _gauge(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            root.create_time(),
        )
        if have_fds:
            yield _gauge("process_open_fds", "Number of open file descriptors.", fds)
        max_fds = _max_fds(root)
        if max_fds is not None:
            yield _gauge("process_max_fds", "Maximum number of open file descriptors.", max_fds)
        yield _gauge("process_threads", "Number of OS threads in the process.", threads)


def _max_fds(root: psutil.Process) -> float | None:
    try:
        if hasattr(root, "rlimit"):  # Linux
            return float(root.rlimit(psutil.RLIMIT_NOFILE)[0])
        if root.pid == os.getpid():  # macOS: only our own limit is readable
            import resource

            return float(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    except (psutil.Error, ImportError, OSError, ValueError):
        pass
    return None  # Windows has no such limit


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation)
    family.add_metric([], value)
    return family


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation)
    family.add_metric([], value)
    return family


class AsyncioTasksCollector(Collector):
    """`python_asyncio_tasks`: tasks alive on the serving event loops (the nearest thing to Go's
    goroutines). Loops are remembered by the middleware and the websocket wrapper."""

    def __init__(self, loops: weakref.WeakSet) -> None:
        self.loops = loops

    def collect(self):
        total = 0
        for loop in list(self.loops):
            if loop.is_closed():
                continue
            try:
                total += len(asyncio.all_tasks(loop))
            except RuntimeError:  # the set changed size under us too often; skip this loop once
                continue
        yield _gauge("python_asyncio_tasks", "Tasks alive on the server's event loops.", total)


_GC_FAMILIES = (  # prometheus_client's GCCollector: names and HELP texts, per gc.get_stats() key
    ("python_gc_objects_collected", "Objects collected during gc", "collected"),
    ("python_gc_objects_uncollectable", "Uncollectable objects found during GC", "uncollectable"),
    ("python_gc_collections", "Number of times this generation was collected", "collections"),
)
_gc_publishers: weakref.WeakSet = weakref.WeakSet()


def _gc_now() -> list[dict[str, int]]:
    return gc.get_stats() if hasattr(gc, "get_stats") else []


class MultiprocessGCCollector(Collector):
    """`python_gc_*` for the whole server under gunicorn (METRICS.md §3): the master and every worker,
    exited ones included, as prometheus_client's GCCollector gives them for one process.

    Each process adds what its collector ran since it last published to multiprocess counters (its
    own counter file, summed by the scrape, kept after it exits). A forked worker starts from the
    statistics it inherited, which are its parent's to count. A process publishes when it is scraped
    (this collector is registered before the files are read) and, in workers, from the request
    middleware at most once a second.
    """

    def __init__(self, inherited: bool) -> None:
        from prometheus_client import Counter

        private = CollectorRegistry()  # the values live in the mmap files; the scrape reads those
        self._counters = [
            (Counter(name, doc, ["generation"], registry=private), key) for name, doc, key in _GC_FAMILIES
        ]
        self._lock = threading.Lock()
        self._last = self._baseline(inherited)
        for generation in range(len(self._last)):  # every generation shown from the start, at 0
            for counter, _ in self._counters:
                counter.labels(str(generation))
        _gc_publishers.add(self)

    @staticmethod
    def _baseline(inherited: bool) -> list[dict[str, int]]:
        if inherited:
            return _gc_now()
        return [dict.fromkeys([key for _, _, key in _GC_FAMILIES], 0) for _ in _gc_now()]

    def after_fork(self) -> None:
        with self._lock:
            self._last = self._baseline(True)

    def publish(self) -> None:
        with self._lock:
            now = _gc_now()
            for generation, (stats, last) in enumerate(zip(now, self._last, strict=False)):
                for counter, key in self._counters:
                    delta = stats[key] - last[key]
                    if delta > 0:
                        counter.labels(str(generation)).inc(delta)
            self._last = now

    def describe(self):
        return []

    def collect(self):
        self.publish()
        return []


def _gc_after_fork() -> None:
    for publisher in list(_gc_publishers):
        publisher.after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_gc_after_fork)
