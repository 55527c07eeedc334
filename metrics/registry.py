"""Every live metric object of coderd, built by one function from a registry passed in.

`build_metrics(registry, legacy=...)` is the only place a metric is declared: the middleware, the
websocket wrapper, the job observer and the listener all receive the `CoderMetrics` it returns, and
tests build one on a fresh `CollectorRegistry` and read it with `registry.get_sample_value(...)`.

Names, types, HELP texts, label names and buckets are the contract of METRICS.md §1 and §2 (the seed
set as Coder's November 2022 scrape shows it, and today's Coder set beside it). The database-derived
gauges are not here: they are computed at scrape time by `metrics.database.DatabaseCollector`.

In prometheus_client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR set before prometheus_client is
imported) each object writes to this process's mmap files; `multiprocess_mode` below says how the
gauges of several workers add up ('livesum': a dead worker's in-flight count vanishes).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

from metrics.querystats import QueryStats

# Go's client emits no `_created` series; the seed scrape has none, and they would add a gauge
# family per counter and histogram.
disable_created_metrics()

REQUEST_LATENCY_MS_BUCKETS = (1, 5, 10, 25, 50, 100, 500, 1000, 5000, 10000, 30000)
WEBSOCKET_DURATION_MS_BUCKETS = (1, 1000, 60000, 3.6e06, 5.4e07, 1.08e08)
JOB_TIMING_MS_BUCKETS = (1000, 10000, 30000, 60000, 300000, 600000, 1.8e06, 3.6e06)


def _seconds(buckets_ms: tuple[float, ...]) -> tuple[float, ...]:
    return tuple(b / 1000 for b in buckets_ms)


REQUEST_LATENCY_S_BUCKETS = _seconds(REQUEST_LATENCY_MS_BUCKETS)
WEBSOCKET_DURATION_S_BUCKETS = _seconds(WEBSOCKET_DURATION_MS_BUCKETS)
JOB_TIMING_S_BUCKETS = _seconds(JOB_TIMING_MS_BUCKETS)
# coderd/provisionerdserver/metrics.go's jobQueueWait.
QUEUE_WAIT_S_BUCKETS = (0.1, 0.5, 1, 5, 10, 30, 60, 120, 300, 600, 900, 1800)
# prometheus.DefBuckets, which coderd/database/dbmetrics/querymetrics.go uses.
DB_QUERY_S_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

# HELP texts, exactly as Coder writes them (the two provisionerd ones as Coder filled them in).
HELP = {
    "coderd_api_active_users_duration_hour": "The number of users that have been active within the last hour.",
    "coderd_api_concurrent_requests": "The number of concurrent API requests",
    "coderd_api_concurrent_websockets": "The total number of concurrent API websockets",
    "coderd_api_request_latencies_ms": "Latency distribution of requests in milliseconds",
    "coderd_api_request_latencies_seconds": "Latency distribution of requests in seconds.",
    "coderd_api_requests_processed_total": "The total number of processed API requests",
    "coderd_api_websocket_durations_ms": "Websocket duration distribution of requests in milliseconds",
    "coderd_api_websocket_durations_seconds": "Websocket duration distribution of requests in seconds.",
    "coderd_api_workspace_latest_build_total": "The latest workspace builds with a status.",
    # Today's Coder's texts (coderd/prometheusmetrics/prometheusmetrics.go); the _total twin keeps 2022's.
    "coderd_api_workspace_latest_build": (
        "The current number of workspace builds by status for all non-deleted workspaces."
    ),
    "coderd_api_total_user_count": "The total number of registered users, partitioned by status.",
    "coderd_provisionerd_jobs_current": "The number of currently running provisioner jobs.",
    "coderd_provisionerd_job_timings_ms": "The provisioner job time duration.",
    "coderd_provisionerd_job_timings_seconds": "The provisioner job time duration in seconds.",
    "coderd_provisionerd_num_daemons": "The number of provisioner daemons.",
    "coderd_workspace_builds_total": "The number of workspaces started, updated, or deleted.",
    "coderd_workspace_latest_build_status": (
        "The current workspace statuses by template, transition, and owner for all non-deleted workspaces."
    ),
    "coderd_provisionerd_workspace_build_timings_seconds": "The time taken for a workspace to build.",
    "coderd_provisioner_job_queue_wait_seconds": "Time from job creation to acquisition by a provisioner daemon.",
    "coderd_workspace_creation_total": (
        "Total regular (non-prebuilt) workspace creations by organization, template, and preset."
    ),
    "coderd_db_query_latencies_seconds": "Latency distribution of queries in seconds.",
    "coderd_db_query_counts_total": "Total number of queries labelled by HTTP route, method, and query name.",
    "promhttp_metric_handler_requests_in_flight": "Current number of scrapes being served.",
    "promhttp_metric_handler_requests_total": "Total number of scrapes by HTTP status code.",
}

# Today's Coder (legacy names off) labels the two concurrency gauges, and ends their HELP with a period.
CURRENT_HELP = {
    "coderd_api_concurrent_requests": "The number of concurrent API requests.",
    "coderd_api_concurrent_websockets": "The total number of concurrent API websockets.",
}

# The families of METRICS.md §1 that `--prometheus-legacy-metrics=false` turns off.
LEGACY_ONLY = frozenset(
    {
        "coderd_api_request_latencies_ms",
        "coderd_api_websocket_durations_ms",
        "coderd_provisionerd_job_timings_ms",
        "coderd_api_workspace_latest_build_total",
    }
)

# Coder's transition names in the builds counter are upper case, DELETE is DESTROY (terraform's word).
BUILD_TRANSITION_LABEL = {"start": "START", "stop": "STOP", "delete": "DESTROY"}


@dataclass
class CoderMetrics:
    """The live metric objects of one process. `*_ms` members are None when legacy metrics are off."""

    registry: CollectorRegistry
    legacy: bool
    concurrent_requests: Gauge
    concurrent_websockets: Gauge
    requests_processed: Counter
    request_latencies_seconds: Histogram
    request_latencies_ms: Histogram | None
    websocket_durations_seconds: Histogram
    websocket_durations_ms: Histogram | None
    jobs_current: Gauge
    job_timings_seconds: Histogram
    job_timings_ms: Histogram | None
    num_daemons: Gauge
    workspace_builds: Counter
    workspace_build_timings_seconds: Histogram
    scrapes: Counter
    scrapes_in_flight: Gauge
    job_queue_wait: Histogram
    query_stats: QueryStats  # coderd_db_query_latencies_seconds, coderd_db_query_counts_total

    # (code, method, path) -> the three children it updates. `labels()` takes a lock and builds a
    # key at each call; the set of keys is bounded by routes x methods x codes.
    _request_children: dict = field(default_factory=dict, repr=False)
    # Legacy off: (method, path) / path -> the concurrency gauge's child.
    _concurrent_children: dict = field(default_factory=dict, repr=False)

    def request_gauge(self, method: str, path: str):
        """What an HTTP request in flight raises: the bare gauge (legacy names), else its child."""
        if self.legacy:
            return self.concurrent_requests
        child = self._concurrent_children.get((method, path))
        if child is None:
            child = self._concurrent_children[(method, path)] = self.concurrent_requests.labels(method, path)
        return child

    def websocket_gauge(self, path: str):
        """What an open websocket raises: the bare gauge (legacy names), else its child."""
        if self.legacy:
            return self.concurrent_websockets
        child = self._concurrent_children.get(path)
        if child is None:
            child = self._concurrent_children[path] = self.concurrent_websockets.labels(path)
        return child

    def observe_query(self, query: str, route: str, method: str, seconds: float) -> None:
        """One database query: its latency by name, its count by the HTTP route that made it."""
        self.query_stats.record(query, route, method, seconds)

    def observe_request(self, method: str, path: str, code: int, seconds: float) -> None:
        """One finished HTTP request (the middleware's whole bookkeeping after the handler)."""
        children = self._request_children.get((code, method, path))
        if children is None:
            children = (
                self.requests_processed.labels(str(code), method, path),
                self.request_latencies_seconds.labels(method, path),
                self.request_latencies_ms.labels(method, path) if self.request_latencies_ms else None,
            )
            self._request_children[(code, method, path)] = children
        total, latency_s, latency_ms = children
        total.inc()
        latency_s.observe(seconds)
        if latency_ms is not None:
            latency_ms.observe(seconds * 1000.0)

    def observe_websocket(self, path: str, code: int, seconds: float | None) -> None:
        """One finished websocket: counted once as a GET; its lifetime when it was accepted."""
        self.requests_processed.labels(str(code), "GET", path).inc()
        if seconds is not None:
            self.websocket_durations_seconds.labels(path).observe(seconds)
            if self.websocket_durations_ms is not None:
                self.websocket_durations_ms.labels(path).observe(seconds * 1000.0)


def _query_stats(registry: CollectorRegistry, multiprocess: bool, publish_in_thread: bool) -> QueryStats:
    help_texts = {
        name: HELP[name] for name in ("coderd_db_query_latencies_seconds", "coderd_db_query_counts_total")
    }
    if not multiprocess:
        stats = QueryStats(DB_QUERY_S_BUCKETS, help_texts)
        registry.register(stats)
        return stats
    # The workers' files carry them: prometheus_client's own objects, which the stats add to.
    latencies = Histogram(
        "coderd_db_query_latencies_seconds",
        help_texts["coderd_db_query_latencies_seconds"],
        ("query",),
        buckets=DB_QUERY_S_BUCKETS,
        registry=registry,
    )
    counts = Counter(
        "coderd_db_query_counts_total",
        help_texts["coderd_db_query_counts_total"],
        ("route", "method", "query"),
        registry=registry,
    )
    return QueryStats(
        DB_QUERY_S_BUCKETS,
        help_texts,
        latencies=latencies,
        counts=counts,
        publish_in_thread=publish_in_thread,
    )


def build_metrics(
    registry: CollectorRegistry,
    *,
    legacy: bool = True,
    multiprocess: bool = False,
    forking_parent: bool = False,
) -> CoderMetrics:
    """Create every live metric object of METRICS.md on `registry` and return them together.

    `multiprocess`: the objects write to prometheus_client's mmap files (PROMETHEUS_MULTIPROC_DIR);
    `forking_parent`: this process forks the others (gunicorn's master), so it runs no thread that
    writes them (see metrics/querystats.py)."""

    def histogram(name: str, labels: tuple[str, ...], buckets: tuple[float, ...]) -> Histogram:
        return Histogram(name, HELP[name], labels, buckets=buckets, registry=registry)

    def gauge(name: str, labels: tuple[str, ...] = ()) -> Gauge:
        # livesum: under several workers the sum over live ones; a dead worker's share vanishes.
        help_text = HELP[name] if legacy else CURRENT_HELP.get(name, HELP[name])
        return Gauge(name, help_text, labels, registry=registry, multiprocess_mode="livesum")

    def legacy_histogram(name: str, labels: tuple[str, ...], buckets: tuple[float, ...]) -> Histogram | None:
        return histogram(name, labels, buckets) if legacy else None

    build_labels = ("template_name", "template_version", "workspace_transition", "status")
    metrics = CoderMetrics(
        registry=registry,
        legacy=legacy,
        # Today's Coder labels them (coderd/httpmw/prometheus.go); the 2022 scrape has none.
        concurrent_requests=gauge("coderd_api_concurrent_requests", () if legacy else ("method", "path")),
        concurrent_websockets=gauge("coderd_api_concurrent_websockets", () if legacy else ("path",)),
        requests_processed=Counter(
            "coderd_api_requests_processed_total",
            HELP["coderd_api_requests_processed_total"],
            ("code", "method", "path"),
            registry=registry,
        ),
        request_latencies_seconds=histogram(
            "coderd_api_request_latencies_seconds", ("method", "path"), REQUEST_LATENCY_S_BUCKETS
        ),
        request_latencies_ms=legacy_histogram(
            "coderd_api_request_latencies_ms", ("method", "path"), REQUEST_LATENCY_MS_BUCKETS
        ),
        websocket_durations_seconds=histogram(
            "coderd_api_websocket_durations_seconds", ("path",), WEBSOCKET_DURATION_S_BUCKETS
        ),
        websocket_durations_ms=legacy_histogram(
            "coderd_api_websocket_durations_ms", ("path",), WEBSOCKET_DURATION_MS_BUCKETS
        ),
        jobs_current=gauge("coderd_provisionerd_jobs_current", ("provisioner",)),
        job_timings_seconds=histogram(
            "coderd_provisionerd_job_timings_seconds", ("provisioner", "status"), JOB_TIMING_S_BUCKETS
        ),
        job_timings_ms=legacy_histogram(
            "coderd_provisionerd_job_timings_ms", ("provisioner", "status"), JOB_TIMING_MS_BUCKETS
        ),
        num_daemons=gauge("coderd_provisionerd_num_daemons"),
        workspace_builds=Counter(
            "coderd_workspace_builds_total",
            HELP["coderd_workspace_builds_total"],
            (
                "workspace_owner",
                "workspace_name",
                "template_name",
                "template_version",
                "workspace_transition",
                "status",
            ),
            registry=registry,
        ),
        workspace_build_timings_seconds=histogram(
            "coderd_provisionerd_workspace_build_timings_seconds", build_labels, JOB_TIMING_S_BUCKETS
        ),
        scrapes=Counter(
            "promhttp_metric_handler_requests_total",
            HELP["promhttp_metric_handler_requests_total"],
            ("code",),
            registry=registry,
        ),
        scrapes_in_flight=gauge("promhttp_metric_handler_requests_in_flight"),
        job_queue_wait=histogram(
            "coderd_provisioner_job_queue_wait_seconds",
            ("provisioner_type", "job_type", "transition", "build_reason"),
            QUEUE_WAIT_S_BUCKETS,
        ),
        query_stats=_query_stats(registry, multiprocess, publish_in_thread=not forking_parent),
    )
    # As Go's promhttp: the three codes exist from the start, so rate() and alerts see 0, not nothing.
    for code in ("200", "500", "503"):
        metrics.scrapes.labels(code)
    return metrics
