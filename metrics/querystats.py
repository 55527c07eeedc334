"""The database query families' numbers, kept in plain dicts: a query costs a dict update, not a
prometheus_client observe.

Every query of every request is recorded (metrics/dbquery.py), so the cost per query is the budget.
prometheus_client's `Histogram.observe` plus `Counter.inc` take three locks and, under gunicorn
(multiprocess mode), write three values to the mmap file: about 3 µs a query in one process and
13 µs with mmap values on this machine (bench/bench_dbquery.py). Here a query takes one lock and
updates two dicts: the bucket found by `bisect`, the sum, and the count by route.

- One process: `collect()` is a prometheus_client custom collector; a scrape renders the totals as
  a histogram and a counter family, exactly as prometheus_client would have.
- Several processes (gunicorn): prometheus_client merges only what is in the workers' mmap files,
  so each process adds what it recorded since last time into its mmap-backed `Histogram` and
  `Counter` (`publish()`): from a thread once a second, at exit, and before a scrape it serves.
  Not from a thread in gunicorn's master (it forks workers at any time: a fork while that thread
  held prometheus_client's lock would leave the worker's copy locked for good); the master's own
  queries are the refresh's, made by its scrapes, which publish first.
  prometheus_client has no call that adds several observations at once, so `publish()` adds them to
  the histogram child's per-bucket and sum values, the very objects `observe()` increments.
"""

from __future__ import annotations

import atexit
import os
import threading
import weakref
from bisect import bisect_left
from math import inf

from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

LATENCY = "coderd_db_query_latencies_seconds"
COUNTS = "coderd_db_query_counts_total"
PUBLISH_INTERVAL = 1.0


class QueryStats:
    def __init__(
        self,
        bounds: tuple[float, ...],
        help_texts: dict[str, str],
        *,
        latencies=None,
        counts=None,
        publish_interval: float = PUBLISH_INTERVAL,
        publish_in_thread: bool = True,
    ) -> None:
        self.bounds = tuple(bounds)
        self._les = [floatToGoString(b) for b in (*self.bounds, inf)]
        self._help = help_texts
        self._lock = threading.Lock()
        # query -> [observations per bucket (not cumulative), +Inf included..., sum]
        self._latency: dict[str, list] = {}
        # (route, method, query) -> queries
        self._counts: dict[tuple[str, str, str], int] = {}
        # Multiprocess: the mmap-backed metrics the numbers above are added to (then emptied).
        self._sink = (latencies, counts) if latencies is not None else None
        self._interval = publish_interval
        self._threaded = publish_in_thread
        self._thread: threading.Thread | None = None
        if self._sink is not None:
            ref = weakref.ref(self)
            os.register_at_fork(after_in_child=lambda: (s := ref()) and s._forget())
            atexit.register(lambda: (s := ref()) and s.publish())

    def record(self, query: str, route: str, method: str, seconds: float) -> None:
        index = bisect_left(self.bounds, seconds)  # the first bound >= seconds, as observe() does
        key = (route, method, query)
        with self._lock:
            row = self._latency.get(query)
            if row is None:
                row = self._latency[query] = [0] * (len(self.bounds) + 1) + [0.0]
            row[index] += 1
            row[-1] += seconds
            self._counts[key] = self._counts.get(key, 0) + 1
        if self._thread is None and self._threaded and self._sink is not None:
            self._start_publisher()

    # --- one process ---------------------------------------------------------------------------

    def collect(self):
        if self._sink is not None:
            return []  # multiprocess: the files carry these families
        with self._lock:
            latency = {query: list(row) for query, row in self._latency.items()}
            counts = dict(self._counts)
        histogram = HistogramMetricFamily(LATENCY, self._help[LATENCY], labels=["query"])
        for query, row in latency.items():
            acc, buckets = 0, []
            for le, n in zip(self._les, row, strict=False):
                acc += n
                buckets.append((le, acc))
            histogram.add_metric([query], buckets, row[-1])
        counter = CounterMetricFamily(COUNTS, self._help[COUNTS], labels=["route", "method", "query"])
        for key, n in counts.items():
            counter.add_metric(list(key), n)
        return [histogram, counter]

    def describe(self):
        return []

    # --- several processes ----------------------------------------------------------------------

    def publish(self) -> None:
        """Add what was recorded since the last call to the mmap-backed metrics."""
        if self._sink is None:
            return
        with self._lock:
            latency, counts = self._latency, self._counts
            self._latency, self._counts = {}, {}
        histogram, counter = self._sink
        for query, row in latency.items():
            child = histogram.labels(query)
            for bucket, n in zip(child._buckets, row, strict=False):
                if n:
                    bucket.inc(n)
            child._sum.inc(row[-1])
        for key, n in counts.items():
            counter.labels(*key).inc(n)

    def _start_publisher(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            ref = weakref.ref(self)
            interval = self._interval

            def loop() -> None:
                while True:
                    threading.Event().wait(interval)
                    stats = ref()
                    if stats is None or stats._thread is not threading.current_thread():
                        return  # collected, or a forked child's copy: this thread is not its own
                    stats.publish()
                    del stats

            self._thread = threading.Thread(target=loop, name="coderd-db-metrics", daemon=True)
            self._thread.start()

    def _forget(self) -> None:
        # A forked worker inherits its parent's unpublished numbers (the parent publishes them) and
        # not its thread.
        self._lock = threading.Lock()
        self._latency, self._counts = {}, {}
        self._thread = None
        self._threaded = True  # a forked child is a worker, never the master
