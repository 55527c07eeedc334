"""The metrics of this process, and the seam for prometheus_client's multiprocess mode.

One `MetricsState` per process: the live metric objects (`metrics`, from `build_metrics`), the
registry that scrapes serve (`registry`), and the database collector (`database`). The middleware,
the websocket wrapper, the job observer, the listener and the `/metrics` view all read `current()`;
tests `install()` a fresh state built on a fresh registry and restore the previous one.

Single process (`manage.py server`, `runserver`, daphne, uvicorn): the live objects are registered
on the served registry itself, beside the database, process and asyncio-task collectors.

Several processes (gunicorn; issue 5). The caller must, in the master, before prometheus_client is
imported anywhere (gunicorn.conf.py at its top):

    os.environ["PROMETHEUS_MULTIPROC_DIR"] = <a directory>
    os.environ["CODER_METRICS_ROOT_PID"] = str(os.getpid())   # process metrics cover master+workers
    metrics.runtime.prepare_multiprocess_dir(<dir>)            # emptied at every start

then in `when_ready` (master, after django.setup()): `metrics.serving.start_metrics()` (listener
once, from the master; first database refresh), and in `child_exit`:
`metrics.runtime.mark_process_dead(worker.pid)`.

In that mode every process's live objects write to its own mmap files and the served registry is
a `MultiProcessCollector` over the directory (counters and histograms summed, 'livesum' gauges
summed over live workers), so the master's listener and any worker's `/metrics` show the same sum.
The database gauges are computed at most once per refresh interval per replica: the collector keeps
its result in a file in the same directory, refreshed under a file lock by whichever process
scrapes first, and signals in any worker mark it stale by touching a file there.
"""

from __future__ import annotations

import asyncio
import glob
import os
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector

from metrics.database import DatabaseCollector, FileCacheStore, MemoryCacheStore
from metrics.process import AsyncioTasksCollector, MultiprocessGCCollector, ProcessCollector
from metrics.registry import CoderMetrics, build_metrics

ROOT_PID_ENV = "CODER_METRICS_ROOT_PID"


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


@dataclass
class MetricsState:
    metrics: CoderMetrics
    registry: CollectorRegistry  # what the listener and /metrics serve: live + database
    live_registry: CollectorRegistry  # everything but the database gauges
    database: DatabaseCollector | None
    multiprocess: bool = False
    loops: weakref.WeakSet = field(default_factory=weakref.WeakSet)
    # Multiprocess only: this worker's event-loop task count, summed over live workers.
    asyncio_tasks_gauge: Gauge | None = None
    # Multiprocess only: publishes this process's `python_gc_*` counts to the shared files.
    gc_collector: MultiprocessGCCollector | None = None
    _tasks_updated_at: float = 0.0

    def note_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Remember the serving event loop (for `python_asyncio_tasks`); called once per loop."""
        self.loops.add(loop)


def build_state(
    *,
    legacy: bool = True,
    refresh_interval: float = 60.0,
    with_database: bool = True,
    multiproc_dir: str | None = None,
    root_pid: int | None = None,
    django_db_metrics: bool = False,
) -> MetricsState:
    """A complete metrics state on fresh registries (the server's, an external daemon's, a test's)."""
    live = CollectorRegistry()  # everything but the database gauges
    if multiproc_dir:
        from metrics.multiprocess import CachingMultiProcessCollector

        # The live objects go to this process's mmap files; the served registry reads every file.
        metrics = build_metrics(
            CollectorRegistry(), legacy=legacy, multiprocess=True, forking_parent=root_pid == os.getpid()
        )
        # Registered first, so that a scrape publishes the scraping process's own GC counts before
        # the files are read; a worker that builds its state itself inherited its parent's counts.
        gc_collector = MultiprocessGCCollector(inherited=root_pid is not None and root_pid != os.getpid())
        live.register(gc_collector)
        CachingMultiProcessCollector(live, path=multiproc_dir)
        store = FileCacheStore(Path(multiproc_dir))
        tasks_gauge = Gauge(
            "python_asyncio_tasks",
            "Tasks alive on the server's event loops.",
            registry=CollectorRegistry(),
            multiprocess_mode="livesum",
        )
    else:
        metrics = build_metrics(live, legacy=legacy)
        store = MemoryCacheStore()
        tasks_gauge = None
        gc_collector = None
    if django_db_metrics and not multiproc_dir:
        # Multiprocess mode finds them in the workers' files like every other metric.
        live.register(DjangoDatabaseCollector())
    ProcessCollector(pid=root_pid, registry=live)
    PlatformCollector(registry=live)
    if gc_collector is None:
        GCCollector(registry=live)
    served = CollectorRegistry()
    served.register(_Union(live))
    database = None
    if with_database:
        database = DatabaseCollector(legacy=legacy, interval=refresh_interval, store=store)
        served.register(database)
    state = MetricsState(
        metrics=metrics,
        registry=served,
        live_registry=live,
        database=database,
        multiprocess=bool(multiproc_dir),
        asyncio_tasks_gauge=tasks_gauge,
        gc_collector=gc_collector,
    )
    if tasks_gauge is None:
        live.register(AsyncioTasksCollector(state.loops))
    return state


class DjangoDatabaseCollector:
    """django-prometheus's `django_db_*` metrics (its database wrappers write them to prometheus_client's
    default registry, which nothing here serves): CODER_PROMETHEUS_DJANGO_DB_METRICS."""

    def collect(self):
        from django_prometheus.db import metrics as db

        for metric in (
            db.connections_total,
            db.connection_errors_total,
            db.execute_total,
            db.execute_many_total,
            db.errors_total,
            db.query_duration_seconds,
        ):
            yield from metric.collect()


class _Union:
    """The live registry as one collector of the served registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self):
        return self.registry.collect()


_lock = threading.Lock()
_state: MetricsState | None = None


def _from_settings() -> MetricsState:
    from django.conf import settings

    root = os.environ.get(ROOT_PID_ENV)
    return build_state(
        legacy=settings.PROMETHEUS_LEGACY_METRICS,
        refresh_interval=settings.PROMETHEUS_REFRESH_INTERVAL,
        multiproc_dir=multiprocess_dir(),
        root_pid=int(root) if root and root.isdigit() else None,
        django_db_metrics=settings.PROMETHEUS_DJANGO_DB_METRICS,
    )


def current() -> MetricsState:
    """This process's state, built from settings on first use."""
    state = _state
    if state is None:
        with _lock:
            state = _state
            if state is None:
                state = install(_from_settings())
    return state


def install(state: MetricsState | None) -> MetricsState | None:
    """Make `state` this process's (tests; None rebuilds from settings on next use); returns it."""
    global _state
    _state = state
    return state


def get_metrics() -> CoderMetrics:
    return current().metrics


def mark_database_stale() -> None:
    """Database rows the gauges count have changed: the next scrape recounts (signals call this)."""
    state = _state
    if state is not None and state.database is not None:
        state.database.mark_stale()
    elif multiprocess_dir():
        FileCacheStore(Path(multiprocess_dir())).mark_stale()


def prepare_multiprocess_dir(path: str | os.PathLike) -> None:
    """Create the multiprocess directory or empty it: files of a previous run must not be summed."""
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    for name in glob.glob(str(directory / "*.db")) + glob.glob(str(directory / "coderd-*")):
        os.remove(name)


def mark_process_dead(pid: int) -> None:
    """gunicorn's child_exit: the worker's live gauges vanish, its counters stay."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)
