"""Database-derived gauges: aggregate queries (at most one per family), cached for the refresh interval.

A scrape uses the cached counts while they are younger than `interval` and not marked stale; the
first refresh is done at start-up (`refresh()`, from `metrics.serving.start_metrics`), not after one
interval. Signals on builds, jobs and users, and the job observer, mark the cache stale so the next
scrape after a change recounts. Each refresh builds the families from scratch, so a label set that
no longer exists (a template renamed, a status gone) disappears, and every status value of the
status families is present, 0 included.

The database is read with Django's ORM from whichever thread scrapes (the listener's threads or a
sync view), never from the event loop.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from coderd import outages
from metrics.registry import HELP

JOB_STATUSES = ("pending", "running", "succeeded", "canceling", "canceled", "failed")
USER_STATUSES = ("active", "dormant", "suspended")
ACTIVE_USER_WINDOW = timedelta(hours=1)

logger = logging.getLogger(__name__)


@dataclass
class DatabaseCounts:
    active_users: int = 0
    latest_build: dict[str, int] = field(default_factory=dict)
    users: dict[str, int] = field(default_factory=dict)
    # (status, template_name, template_version, workspace_owner, workspace_transition, count)
    per_template: list[tuple[str, str, str, str, str, int]] = field(default_factory=list)
    # (organization_name, template_name, preset_name, count): workspaces ever created
    created: list[tuple[str, str, str, int]] = field(default_factory=list)
    computed_at: float = 0.0  # time.time() when the refresh started
    generation: int = 0  # the stale mark seen when the refresh started


def query_counts(now: datetime) -> DatabaseCounts:
    """Three aggregate queries: active users, users by status, and workspaces grouped by the labels
    of the per-template family (whose sums by status are the latest-build families)."""
    from django.db import connection
    from django.db.models import Count

    from coderd.users.models import APIKey, User

    if connection.vendor == "sqlite":
        # Read the file through the OS page cache, not one read() per page.
        with connection.cursor() as cursor:
            cursor.execute("PRAGMA mmap_size=268435456")

    # Answered from the (last_used, user_id) index alone.
    active = APIKey.objects.filter(last_used__gte=now - ACTIVE_USER_WINDOW).aggregate(
        n=Count("user_id", distinct=True)
    )["n"]

    users = dict.fromkeys(USER_STATUSES, 0)
    for row in User.objects.filter(deleted=False).values("status").annotate(n=Count("id")).order_by():
        users[row["status"]] = users.get(row["status"], 0) + row["n"]

    # ~50,000 rows arrive as tuples in one burst: the cyclic GC would run dozens of times over the
    # whole heap meanwhile (a fifth of the refresh, measured), for objects that cannot form cycles.
    collecting = gc.isenabled()
    gc.disable()
    try:
        per_template, latest = _latest_build_rows(now)
    finally:
        if collecting:
            gc.enable()
    return DatabaseCounts(
        active_users=active,
        latest_build=latest,
        users=users,
        per_template=per_template,
        created=_created_rows(),
    )


def _created_rows() -> list[tuple[str, str, str, int]]:
    """Workspaces created, by organization and template (Coder's `coderd_workspace_creation_total`).

    Deleted workspaces stay counted, so the counter never goes down when one is deleted (Coder
    recounts live ones only, and its counter drops then). One aggregate: the workspaces grouped by
    template alone (a template belongs to one organization; the (deleted, template) index serves
    it), then joined to the few templates for the names."""
    from django.db import connection

    from coderd.users.models import Organization
    from coderd.workspaces.models import Template, Workspace

    q = connection.ops.quote_name
    w, t, o = (q(m._meta.db_table) for m in (Workspace, Template, Organization))
    sql = (
        f"SELECT o.name, t.name, c.n FROM"
        f" (SELECT template_id, COUNT(*) AS n FROM {w} GROUP BY template_id) c"
        f" JOIN {t} t ON t.id = c.template_id JOIN {o} o ON o.id = t.organization_id"
        f" ORDER BY o.name, t.name"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql)
        # Presets do not exist here: Coder's label for a workspace created without one is "".
        return [(org, name, "", n) for org, name, n in cursor.fetchall()]


def _latest_build_rows(now: datetime) -> tuple[list[tuple], dict[str, int]]:
    from django.db import connection

    sql, params = latest_build_sql(now)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    # One pass over the counts, the latest-build totals summed on the way; then the changes not yet
    # folded added (few: the reaper folds every pass); then the running jobs whose heartbeat is
    # stale moved from "running" to "failed" (Coder's status rule), only as far as they were
    # counted running.
    per_template, running, failed, changes, stale = [], {}, {}, {}, []
    latest = dict.fromkeys(JOB_STATUSES, 0)
    for row in rows:
        status = row[0]
        if status == "running":
            running[row[1:5]] = row[5]
        elif status == "failed":
            failed[row[1:5]] = row[5]
        elif status == "stale":
            stale.append(row)
            continue
        elif status[0] == "+":
            changes[(status[1:], *row[1:5])] = row[5]
            continue
        else:
            per_template.append(row)
        latest[status] += row[5]
    if changes:
        for (status, *labels), n in changes.items():
            latest[status] += n
            if status == "running":
                running[tuple(labels)] = running.get(tuple(labels), 0) + n
            elif status == "failed":
                failed[tuple(labels)] = failed.get(tuple(labels), 0) + n
        others = {k: n for k, n in changes.items() if k[0] not in ("running", "failed")}
        if others:
            per_template = [(*row[:5], row[5] + others.pop(row[:5], 0)) for row in per_template]
            per_template.extend((*k, n) for k, n in others.items())
            per_template = [row for row in per_template if row[5] > 0]
    for row in stale:
        labels = row[1:5]
        n = min(row[5], running.get(labels, 0))
        running[labels] = running.get(labels, 0) - n
        failed[labels] = failed.get(labels, 0) + n
        latest["running"] -= n
        latest["failed"] += n
    per_template.extend(("running", *labels, n) for labels, n in running.items() if n > 0)
    per_template.extend(("failed", *labels, n) for labels, n in failed.items() if n > 0)
    return per_template, latest


_FOLD_LOCK = 0x636F646572  # pg_advisory_xact_lock key: one folder at a time, across replicas


def fold_gauge_changes() -> None:
    """Adds the label-set changes the workspace triggers appended (workspaces 0004) to the counts,
    deletes them, and deletes the label sets left at 0: all in one transaction.

    Builds only append changes, so they never wait on each other; the folders are the only writers
    of the counts, one at a time (SQLite's single writer; on PostgreSQL an advisory lock), and each
    writes them in label order."""
    from django.db import connection, transaction

    from coderd.workspaces.models import WorkspaceGaugeChange, WorkspaceGaugeCount

    q = connection.ops.quote_name
    log, counts = q(WorkspaceGaugeChange._meta.db_table), q(WorkspaceGaugeCount._meta.db_table)
    labels = "status, template_name, template_version, workspace_owner, workspace_transition"
    upsert = f"ON CONFLICT ({labels}) DO UPDATE SET n = {counts}.n + excluded.n"
    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_FOLD_LOCK])
            # One statement, one snapshot: exactly the changes deleted are added, whatever
            # commits meanwhile (ids of a sequence commit out of order, so no "up to id N").
            cursor.execute(
                f"WITH d AS (DELETE FROM {log} RETURNING {labels}, delta)"
                f" INSERT INTO {counts} ({labels}, n) SELECT {labels}, SUM(delta) FROM d"
                f" GROUP BY {labels} ORDER BY {labels} {upsert}"
            )
        else:
            # The INSERT takes SQLite's write lock before it reads: no change can be appended
            # between it and the DELETE. (WHERE true: SQLite's parser needs it before ON CONFLICT.)
            cursor.execute(
                f"INSERT INTO {counts} ({labels}, n) SELECT {labels}, SUM(delta) FROM {log} WHERE true"
                f" GROUP BY {labels} ORDER BY {labels} {upsert}"
            )
            cursor.execute(f"DELETE FROM {log}")
        cursor.execute(f"DELETE FROM {counts} WHERE n = 0")


def latest_build_sql(now: datetime) -> tuple[str, list]:
    """Live workspaces counted by (status, template, version, owner, transition); the changes not
    yet folded into the counts, as "+status" rows; and the running jobs whose heartbeat is stale, as
    "stale" rows by the same labels. One statement: one snapshot, so a change is either folded or
    pending, never both.

    The counts are read as kept (`WorkspaceGaugeCount`): one row per label set, no grouping of the
    workspaces; the refresh never writes (the reaper folds). The stale jobs come from the reaper's index of
    running jobs by heartbeat: few, since the reaper fails them once stale
    (`HEARTBEAT_STALE_AFTER`)."""
    from django.db import connection

    from coderd.workspaces.models import Workspace, WorkspaceBuild, WorkspaceGaugeChange, WorkspaceGaugeCount
    from provisioner.models import HEARTBEAT_STALE_AFTER, ProvisionerJob

    q = connection.ops.quote_name
    w, b, j = (q(m._meta.db_table) for m in (Workspace, WorkspaceBuild, ProvisionerJob))
    counts = q(WorkspaceGaugeCount._meta.db_table)
    log = q(WorkspaceGaugeChange._meta.db_table)
    labels = "w.template_name, w.latest_version_name, w.owner_username, w.latest_transition"
    # SQLite, without statistics, may not pick the small partial indexes by itself.
    sqlite = connection.vendor == "sqlite"
    jobs = f"{j} j INDEXED BY provisionerjob_running" if sqlite else f"{j} j"
    running = f"{w} w INDEXED BY workspace_latest_job_running" if sqlite else f"{w} w"
    sql = (
        f"SELECT status, template_name, template_version, workspace_owner, workspace_transition, n"
        f" FROM {counts}"
        f" UNION ALL"
        f" SELECT '+' || status, template_name, template_version, workspace_owner, workspace_transition,"
        f" SUM(delta) FROM {log} GROUP BY 1, 2, 3, 4, 5"
        f" UNION ALL"
        f" SELECT 'stale', {labels}, COUNT(*) FROM {jobs} JOIN {b} b ON b.job_id = j.id"
        f" JOIN {running} ON w.latest_build_id = b.id AND NOT w.deleted AND w.latest_job_state = 'running'"
        f" WHERE j.started_at IS NOT NULL AND j.completed_at IS NULL AND j.updated_at < %s"
        f" GROUP BY {labels}"
    )
    stale = connection.ops.adapt_datetimefield_value(now - HEARTBEAT_STALE_AFTER)
    return sql, [stale]


_EOF = b"# EOF\n"


class _Families:
    """Enough of a registry for prometheus_client's encoders."""

    def __init__(self, families: list) -> None:
        self.families = families

    def collect(self):
        return iter(self.families)


class Rendered:
    """The database families as exposition text, and as the start of a gzip stream: a scrape
    copies the compressor's state and only compresses the live families after them."""

    def __init__(self, key: tuple, text: bytes) -> None:
        self.key = key
        self.text = text
        self._gzip: tuple[bytes, object] | None = None
        self._lock = threading.Lock()

    def gzip_with(self, tail: bytes) -> bytes:
        with self._lock:
            if self._gzip is None:
                compressor = zlib.compressobj(6, zlib.DEFLATED, 31)  # wbits 31: a gzip member
                self._gzip = (compressor.compress(self.text), compressor)
            head, compressor = self._gzip
            rest = compressor.copy()
        return head + rest.compress(tail) + rest.flush()


class MemoryCacheStore:
    """One process: the cache is an attribute, the stale mark a counter."""

    def __init__(self) -> None:
        self._counts: DatabaseCounts | None = None
        self._generation = 0

    def load(self) -> DatabaseCounts | None:
        return self._counts

    def save(self, counts: DatabaseCounts) -> None:
        self._counts = counts

    def generation(self) -> int:
        return self._generation

    def mark_stale(self) -> None:
        self._generation += 1

    @contextlib.contextmanager
    def refreshing(self) -> Iterator[None]:
        yield


class FileCacheStore:
    """Several processes of one replica (gunicorn): the cache is a JSON file in the multiprocess
    directory, written under an exclusive lock so only one process refreshes; the stale mark is the
    modification time of a marker file that any process touches."""

    def __init__(self, directory: Path) -> None:
        self.cache = directory / "coderd-db-gauges.json"
        self.marker = directory / "coderd-db-stale"
        self.lock = directory / "coderd-db-gauges.lock"
        self._loaded: tuple[tuple[int, int, int], DatabaseCounts] | None = None

    def load(self) -> DatabaseCounts | None:
        # Parsing tens of thousands of rows at every scrape would cost more than the scrape: keep the
        # parsed file until another process replaces it.
        try:
            st = self.cache.stat()
        except FileNotFoundError:
            return None
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if self._loaded is not None and self._loaded[0] == key:
            return self._loaded[1]
        try:
            data = json.loads(self.cache.read_text())
        except (FileNotFoundError, ValueError):
            return None
        data["per_template"] = [tuple(row) for row in data["per_template"]]
        data["created"] = [tuple(row) for row in data.get("created", [])]
        counts = DatabaseCounts(**data)
        self._loaded = (key, counts)
        return counts

    def save(self, counts: DatabaseCounts) -> None:
        tmp = self.cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(asdict(counts)))
        os.replace(tmp, self.cache)  # readers see the old file or the new one, never half of one

    def generation(self) -> int:
        try:
            return self.marker.stat().st_mtime_ns
        except FileNotFoundError:
            return 0

    def mark_stale(self) -> None:
        try:
            os.utime(self.marker)
        except FileNotFoundError:
            self.marker.touch()

    @contextlib.contextmanager
    def refreshing(self) -> Iterator[None]:
        import fcntl

        with open(self.lock, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


class DatabaseCollector(Collector):
    """The database gauges of METRICS.md as a prometheus_client collector."""

    def __init__(
        self,
        *,
        legacy: bool = True,
        interval: float = 60.0,
        store: MemoryCacheStore | FileCacheStore | None = None,
        clock: Callable[[], float] = time.time,
        query: Callable[[datetime], DatabaseCounts] = query_counts,
    ) -> None:
        self.legacy = legacy
        self.interval = interval
        self.store = store or MemoryCacheStore()
        self.clock = clock
        self.query = query
        self._lock = threading.Lock()
        self._render_lock = threading.Lock()
        self._rendered: dict[str, Rendered] = {}

    def mark_stale(self) -> None:
        self.store.mark_stale()

    def _fresh(self, counts: DatabaseCounts | None, now: float) -> bool:
        return (
            counts is not None
            and now - counts.computed_at < self.interval
            and counts.generation == self.store.generation()
        )

    def refresh(self, now: float | None = None) -> DatabaseCounts:
        """Recount now (start-up, or a stale cache)."""
        from datetime import UTC

        now = self.clock() if now is None else now
        generation = self.store.generation()  # read first: a change during the queries re-marks it
        counts = self.query(datetime.fromtimestamp(now, UTC))
        counts.computed_at, counts.generation = now, generation
        self.store.save(counts)
        return counts

    def counts(self, now: float | None = None) -> DatabaseCounts:
        """The cached counts, recounted first when older than the interval or marked stale."""
        now = self.clock() if now is None else now
        counts = self.store.load()
        if self._fresh(counts, now):
            return counts
        with self._lock, self.store.refreshing():
            counts = self.store.load()  # another thread or process may have just done it
            if self._fresh(counts, now):
                return counts
            try:
                return self.refresh(now)
            except Exception as exc:
                # A scrape still answers while the database is away: the last counts, or zeros;
                # the outage itself is one line (coderd.outages), not a traceback per scrape.
                if not outages.note_database_error(exc):
                    logger.exception("refreshing the database gauges failed")
                return counts or DatabaseCounts(latest_build={}, users={})
            finally:
                _close_thread_connection()

    def describe(self):
        return []  # no collect() at registration: it would query the database

    def rendered(self, content_type: str, encoder: Callable) -> Rendered:
        """These families in one exposition format, rendered by prometheus_client once per refresh.

        The per-template family has a series per (template, version, owner, transition, status):
        tens of thousands in a large deployment, far too many to format at every scrape."""
        counts = self.counts()
        key = (counts.computed_at, counts.generation, content_type)
        with self._render_lock:
            cached = self._rendered.get(content_type)
            if cached is not None and cached.key == key:
                return cached
            text = encoder(_Families(self._families(counts)))
            if text.endswith(_EOF):  # OpenMetrics: the live families follow, then the one # EOF
                text = text[: -len(_EOF)]
            rendered = Rendered(key, text)
            self._rendered[content_type] = rendered
            return rendered

    def collect(self):
        return iter(self._families(self.counts()))

    def _families(self, c: DatabaseCounts) -> list:
        out = []
        active = GaugeMetricFamily(
            "coderd_api_active_users_duration_hour", HELP["coderd_api_active_users_duration_hour"]
        )
        active.add_metric([], c.active_users)
        out.append(active)
        names = ["coderd_api_workspace_latest_build"]
        if self.legacy:
            names.insert(0, "coderd_api_workspace_latest_build_total")
        for name in names:
            family = GaugeMetricFamily(name, HELP[name], labels=["status"])
            for status in JOB_STATUSES:
                family.add_metric([status], c.latest_build.get(status, 0))
            out.append(family)
        users = GaugeMetricFamily(
            "coderd_api_total_user_count", HELP["coderd_api_total_user_count"], labels=["status"]
        )
        for status in USER_STATUSES:
            users.add_metric([status], c.users.get(status, 0))
        out.append(users)
        per_template = GaugeMetricFamily(
            "coderd_workspace_latest_build_status",
            HELP["coderd_workspace_latest_build_status"],
            labels=["status", "template_name", "template_version", "workspace_owner", "workspace_transition"],
        )
        for *labels, n in c.per_template:
            per_template.add_metric([str(v) for v in labels], n)
        out.append(per_template)
        created = CounterMetricFamily(
            "coderd_workspace_creation_total",
            HELP["coderd_workspace_creation_total"],
            labels=["organization_name", "template_name", "preset_name"],
        )
        for *labels, n in c.created:
            created.add_metric([str(v) for v in labels], n)
        out.append(created)
        return out


def _close_thread_connection() -> None:
    # Scrapes run in the listener's short-lived threads: a connection opened there would never be
    # closed by Django's request cycle.
    if threading.current_thread() is threading.main_thread():
        return
    from django.db import connection

    connection.close()
