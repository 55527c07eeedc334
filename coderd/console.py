"""The operator's console on the admin index: health from the database, traffic from the metrics.

Health reads what is already cheap: the database gauges' cached counts (`metrics.database`, the same
numbers a scrape serves: workspaces by latest build, users active in the last hour) and a few
queries that each walk one small partial index (pending and running jobs, builds that failed in the
last hour) or a table of a handful of rows (daemons). Nothing here scans the workspaces.

Traffic is a ring buffer this process keeps (`TrafficHistory`): every SAMPLE_SECONDS a thread reads
the live metrics (under gunicorn the merged view of every worker's files, the very families the
listener serves) and keeps the cumulative counters; rates and quantiles are worked out between
consecutive samples when the page asks. No Prometheus is needed for an hour of history.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db.models import F, Func, IntegerField
from django.urls import reverse
from django.utils import timezone

SAMPLE_SECONDS = 10.0
# One hour of samples, plus one so that the first rate also covers a whole interval.
HISTORY_SAMPLES = 361
# A stale mark (a workspace changed) makes the console recount at most this often: under a stream of
# changes, every page view would otherwise be a full recount.
RECOUNT_AT_MOST_EVERY = 2.0
FAILED_BUILDS_SHOWN = 10
FAILED_WINDOW = timedelta(hours=1)
# A daemon silent for longer is not listed at all (its row is removed by the reaper after that too).
DAEMON_FORGOTTEN_AFTER = timedelta(days=1)
CONSOLE_ROLES = ("owner", "auditor")


# --- traffic ---------------------------------------------------------------------------------------


@dataclass
class Sample:
    """Cumulative values read from the metrics at time `t` (time.time())."""

    t: float
    requests: float = 0.0
    errors: float = 0.0  # 5xx answers
    latency: dict[float, float] = field(default_factory=dict)  # le -> cumulative count, every route
    websockets: float = 0.0
    jobs_running: float = 0.0
    job_count: float = 0.0
    job_sum: float = 0.0
    job_buckets: dict[float, float] = field(default_factory=dict)


def read_sample(families: Iterable[Any], t: float) -> Sample:
    """Add up the families the console charts (prometheus_client Metric objects) into one Sample."""
    s = Sample(t=t)
    for family in families:
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, sample.value
            if name == "coderd_api_requests_processed_total":
                s.requests += value
                if labels.get("code", "").startswith("5"):
                    s.errors += value
            elif name == "coderd_api_request_latencies_seconds_bucket":
                le = float(labels["le"])
                s.latency[le] = s.latency.get(le, 0.0) + value
            elif name == "coderd_api_concurrent_websockets":
                s.websockets += value
            elif name == "coderd_provisionerd_jobs_current":
                s.jobs_running += value
            elif name == "coderd_provisionerd_job_timings_seconds_bucket":
                le = float(labels["le"])
                s.job_buckets[le] = s.job_buckets.get(le, 0.0) + value
            elif name == "coderd_provisionerd_job_timings_seconds_count":
                s.job_count += value
            elif name == "coderd_provisionerd_job_timings_seconds_sum":
                s.job_sum += value
    return s


def quantile(q: float, before: dict[float, float], after: dict[float, float]) -> float | None:
    """Prometheus' histogram_quantile over the increase between two cumulative bucket readings:
    linear within the bucket, the highest finite bound when it lands in +Inf. None without data."""
    bounds = sorted(after)
    if not bounds:
        return None
    counts = [max(0.0, after[b] - before.get(b, 0.0)) for b in bounds]
    total = counts[-1]
    if total <= 0:
        return None
    rank = q * total
    i = bisect.bisect_left(counts, rank)
    i = min(i, len(bounds) - 1)
    upper = bounds[i]
    if math.isinf(upper):
        finite = [b for b in bounds if not math.isinf(b)]
        return finite[-1] if finite else None
    lower = bounds[i - 1] if i > 0 else 0.0
    below = counts[i - 1] if i > 0 else 0.0
    in_bucket = counts[i] - below
    if in_bucket <= 0:
        return upper
    return lower + (upper - lower) * (rank - below) / in_bucket


def point(prev: Sample, cur: Sample) -> dict[str, Any]:
    """One chart point: what happened between two samples."""
    dt = max(cur.t - prev.t, 1e-9)
    requests = max(0.0, cur.requests - prev.requests)
    errors = max(0.0, cur.errors - prev.errors)
    jobs = max(0.0, cur.job_count - prev.job_count)
    return {
        "t": round(cur.t, 3),
        "rps": requests / dt,
        "errors_per_second": errors / dt,
        "error_ratio": errors / requests if requests else 0.0,
        "p50_ms": _ms(quantile(0.5, prev.latency, cur.latency)),
        "p95_ms": _ms(quantile(0.95, prev.latency, cur.latency)),
        "websockets": cur.websockets,
        "jobs_running": cur.jobs_running,
        "jobs_finished": jobs,
        "job_mean_s": (cur.job_sum - prev.job_sum) / jobs if jobs else None,
        "job_p95_s": quantile(0.95, prev.job_buckets, cur.job_buckets),
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000.0


class TrafficHistory:
    """The last HISTORY_SAMPLES samples of this process, oldest first."""

    def __init__(self, size: int = HISTORY_SAMPLES) -> None:
        self._samples: deque[Sample] = deque(maxlen=size)
        self._lock = threading.Lock()

    def record(self, sample: Sample) -> None:
        with self._lock:
            if self._samples and sample.t <= self._samples[-1].t:
                return  # a clock step back: keep the series monotonic
            self._samples.append(sample)

    def samples(self) -> list[Sample]:
        with self._lock:
            return list(self._samples)

    def points(self) -> list[dict[str, Any]]:
        samples = self.samples()
        return [point(a, b) for a, b in zip(samples, samples[1:], strict=False)]


def _metric_families(state: Any) -> Iterable[Any]:
    if state.multiprocess:
        # This process's objects only see its own requests: the merged files are the server's view.
        return state.live_registry.collect()
    m = state.metrics
    parts = (
        m.requests_processed,
        m.request_latencies_seconds,
        m.concurrent_websockets,
        m.jobs_current,
        m.job_timings_seconds,
    )
    return [family for metric in parts for family in metric.collect()]


def take_sample(history: TrafficHistory | None = None, t: float | None = None) -> Sample:
    from metrics import runtime

    sample = read_sample(_metric_families(runtime.current()), time.time() if t is None else t)
    (history or HISTORY).record(sample)
    return sample


HISTORY = TrafficHistory()


class Sampler:
    """The thread that fills HISTORY. One per process, started on first need (idempotent)."""

    def __init__(self, interval: float = SAMPLE_SECONDS) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="console-sampler", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        import logging

        log = logging.getLogger(__name__)
        while True:
            try:
                take_sample()
            except Exception:
                log.exception("console: sampling the metrics failed")
            if self._stop.wait(self.interval):
                return


SAMPLER = Sampler()


def start_sampler() -> None:
    """Called by the serving commands at start-up (history from then on) and by the console itself."""
    SAMPLER.start()


# --- health ----------------------------------------------------------------------------------------


_states_cache: tuple[tuple, dict[str, int]] | None = None


def workspace_states(counts: Any) -> dict[str, int]:
    """Live workspaces by Coder's status, from the per-template rows of the database gauges."""
    global _states_cache
    from coderd.workspaces.status import WorkspaceStatus, workspace_status

    key = (counts.computed_at, counts.generation, id(counts))
    cached = _states_cache
    if cached is not None and cached[0] == key:
        return cached[1]
    states = {s.value: 0 for s in WorkspaceStatus if s != WorkspaceStatus.DELETED}
    for job_status, _template, _version, _owner, transition, n in counts.per_template:
        status = workspace_status(transition, job_status)
        states[status] = states.get(status, 0) + n
    _states_cache = (key, states)
    return states


def database_counts(now: float | None = None) -> Any:
    """The database gauges' counts as the last refresh left them, recounted when older than the
    refresh interval, or when marked stale and at least RECOUNT_AT_MOST_EVERY old."""
    from metrics import runtime
    from metrics.database import DatabaseCounts

    collector = runtime.current().database
    if collector is None:
        return DatabaseCounts()
    now = time.time() if now is None else now
    counts = collector.store.load()
    if counts is not None:
        age = now - counts.computed_at
        stale = counts.generation != collector.store.generation()
        if age < collector.interval and (not stale or age < RECOUNT_AT_MOST_EVERY):
            return counts
    return collector.counts(now)


def can_see_console(user: Any) -> bool:
    return bool(user.is_authenticated and user.is_active and user.has_role(*CONSOLE_ROLES))


# COUNT(*), not COUNT(id): counted from a partial index alone, without reading each row for its id.
_COUNT = Func(template="COUNT(*)", output_field=IntegerField())


def _one_row(*querysets: Any) -> tuple:
    """Each one-value queryset as a scalar subquery of one SELECT: one round trip for them all.

    The values are plain SQL functions (Func), not Django aggregates: an aggregate in `values()`
    would GROUP BY every column and the subquery would return one row per job."""
    from django.db import connection

    parts, params = [], []
    for qs in querysets:
        sql, p = qs.order_by().query.sql_with_params()
        parts.append(f"({sql})")
        params.extend(p)
    with connection.cursor() as cursor:
        cursor.execute("SELECT " + ", ".join(parts), params)
        return cursor.fetchone()


def _datetime(value: Any) -> datetime | None:
    # SQLite hands a raw SELECT's datetime back as text (the ORM converts it for its own queries).
    if value is None or isinstance(value, datetime):
        return value
    from django.utils.dateparse import parse_datetime

    parsed = parse_datetime(value)
    return parsed if parsed is None or parsed.tzinfo else parsed.replace(tzinfo=UTC)


def health(now: datetime | None = None) -> dict[str, Any]:
    from coderd.workspaces.models import WorkspaceBuild
    from provisioner.api import DAEMON_OFFLINE_AFTER_SECONDS
    from provisioner.models import JobType, ProvisionerDaemon, ProvisionerJob

    now = now or timezone.now()
    online_since = now - timedelta(seconds=DAEMON_OFFLINE_AFTER_SECONDS)
    # Four small aggregates in one round trip (each still walks its own partial index or the few
    # daemon rows): on a busy PostgreSQL a round trip costs more than these queries do.
    seen = ProvisionerDaemon.objects.filter(last_seen_at__gte=now - DAEMON_FORGOTTEN_AFTER)
    online, seen_n, pending_n, oldest, running = _one_row(
        seen.filter(last_seen_at__gte=online_since, stopped_at__isnull=True).values(n=_COUNT),
        seen.values(n=_COUNT),
        ProvisionerJob.objects.pending().values(n=_COUNT),
        ProvisionerJob.objects.pending().values(n=Func(F("created_at"), function="MIN")),
        ProvisionerJob.objects.filter(started_at__isnull=False, completed_at__isnull=True).values(n=_COUNT),
    )
    daemons = {"online": online, "seen": seen_n}
    pending = {"n": pending_n, "oldest": _datetime(oldest)}

    failed_jobs = (
        ProvisionerJob.objects.filter(
            completed_at__gte=now - FAILED_WINDOW, type=JobType.WORKSPACE_BUILD, canceled_at__isnull=True
        )
        .exclude(error="")
        .order_by("-completed_at")
    )
    newest = list(failed_jobs.values("id", "completed_at", "error")[:FAILED_BUILDS_SHOWN])
    # Counted only when there are more than are listed: usually one query, not two.
    n_failed = len(newest) if len(newest) < FAILED_BUILDS_SHOWN else failed_jobs.count()
    builds = {}
    if newest:
        builds = {
            b.job_id: b
            for b in WorkspaceBuild.objects.select_related("workspace__owner").filter(
                job_id__in=[j["id"] for j in newest]
            )
        }
    failed = []
    for job in newest:
        build = builds.get(job["id"])
        if build is None:
            continue
        failed.append(
            {
                "id": str(build.id),
                "url": reverse("admin:workspaces_workspacebuild_change", args=[build.pk]),
                "workspace": build.workspace.name,
                "owner": build.workspace.owner.username,
                "build_number": build.build_number,
                "transition": build.transition,
                "error": job["error"],
                "completed_at": job["completed_at"].isoformat(),
            }
        )

    counts = database_counts()
    oldest = pending["oldest"]
    return {
        "now": now.isoformat(),
        "daemons": {"online": daemons["online"], "stale": daemons["seen"] - daemons["online"]},
        "jobs": {
            "pending": pending["n"],
            "oldest_pending_at": oldest.isoformat() if oldest else None,
            "oldest_wait_seconds": (now - oldest).total_seconds() if oldest else None,
            "running": running,
        },
        "failed_builds": {"count": n_failed, "newest": failed},
        "workspaces": workspace_states(counts),
        "workspaces_counted_at": (
            datetime.fromtimestamp(counts.computed_at, UTC).isoformat() if counts.computed_at else None
        ),
        "users": {"active_last_hour": counts.active_users, "by_status": dict(counts.users)},
    }


def overview(now: datetime | None = None) -> dict[str, Any]:
    """Everything the console shows, as JSON-ready data (the page renders it, then polls for it)."""
    start_sampler()
    return {
        **health(now),
        "traffic": {"sample_seconds": SAMPLER.interval, "points": HISTORY.points()},
    }


def overview_view(request: Any) -> Any:
    """GET /admin/console/overview.json: what the admin index's overview polls (owners, auditors)."""
    from django.http import JsonResponse

    if request.method not in ("GET", "HEAD"):
        response = JsonResponse(
            {"message": "Method not allowed.", "detail": "Allowed: GET, HEAD.", "validations": []}, status=405
        )
        response["Allow"] = "GET, HEAD"
        return response
    if not can_see_console(request.user):
        return JsonResponse(
            {"message": "Only owners and auditors can read the overview.", "detail": "", "validations": []},
            status=403,
        )
    response = JsonResponse(overview())
    response["Cache-Control"] = "no-store"
    return response
