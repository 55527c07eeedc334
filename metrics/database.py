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
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from pathlib import Path

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

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


def query_counts(now: datetime, kept: KeptCounts | None = None) -> DatabaseCounts:
    """Three aggregate queries (active users, users by status, workspaces created) and the kept
    counts of the per-template family (whose sums by status are the latest-build families).

    `kept`: this process's copy of the counts, brought up to date by reading only the counts
    changed since its last read; without one, every count is read."""
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

    # A full read brings ~50,000 rows as tuples in one burst: the cyclic GC would run dozens of
    # times over the whole heap meanwhile (a fifth of the refresh, measured), for objects that
    # cannot form cycles.
    collecting = gc.isenabled()
    gc.disable()
    try:
        per_template, latest = _latest_build_rows(now, kept or KeptCounts())
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


# A label set's count fallen to 0 is kept this many folds before it is deleted, and each fold's
# row as long: a reader that last read within them reads only what changed since; one further
# behind (a process that did not refresh for that long) reads every count again.
FOLDS_KEPT = 1000

Labels = tuple[str, str, str, str, str]  # status, template, version, owner, transition


class KeptCounts:
    """This process's copy of the kept counts (`WorkspaceGaugeCount`), as of one fold.

    A refresh reads the counts whose fold is newer than the copy's, and the copy's fold's token:
    finding the token it remembers proves the copy is this database's history up to that fold
    (after a restore, a refill or a rolled-back fold the same number may stand for other counts),
    so the newer rows are all that changed. Otherwise, and at the first refresh, every count is
    read. Each process (gunicorn worker, replica) keeps its own copy; the database keeps no record
    of its readers.

    The copy is kept as the per-template family's rows themselves (a list of 6-tuples, a label set
    fallen to 0 left in place as a 0 until there are many) with each label set's position: a
    refresh copies the list and patches the few rows that changed instead of building ~50,000
    tuples again."""

    COMPACT_AFTER = 1000  # rows at 0 (and an eighth of all) before the list is rebuilt without them
    # Every count read again this often all the same: a bound on how long the copy can stay wrong
    # if the counts were ever changed without a fold number (a replica of an older coderd folding
    # during a rolling upgrade, or a hand edit), at the cost of one full read an hour.
    FULL_READ_EVERY = 3600.0  # seconds

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._full_at = 0.0  # time.monotonic() of the last full read
        self.full_reads = 0
        self.rows_read = 0  # count rows read from the database, in all
        self.compactions = 0
        self._forget()

    def _forget(self) -> None:
        self.fold: int | None = None
        self.token: int | None = None
        self.rows: list[tuple] = []  # (status, template, version, owner, transition, n)
        self.index: dict[Labels, int] = {}  # label set -> its position in rows
        self.zeros = 0  # rows at 0
        self.totals: dict[str, int] = dict.fromkeys(JOB_STATUSES, 0)

    def latest_build(self, now: datetime) -> tuple[list[tuple], dict[str, int]]:
        """The per-template rows and the latest-build totals at `now`: the copy brought up to date,
        plus the changes not folded yet (few: the reaper folds every pass), then the running jobs
        whose heartbeat is stale moved from "running" to "failed" (Coder's status rule), only as
        far as they were counted running."""
        with self._lock:
            try:
                changes, stale = self._read(now)
            except BaseException:
                self._forget()  # a read half applied: start again from every count
                raise
            return self._patched(changes, stale)

    def _read(self, now: datetime) -> tuple[dict[Labels, int], list[tuple]]:
        from django.db import connection

        full = self.fold is None or time.monotonic() - self._full_at >= self.FULL_READ_EVERY
        sql, params = latest_build_sql(now, since=None if full else self.fold)
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            fetched = cursor.fetchall()
            state = _fold_state(fetched)
            if not full and state.get("seen") != self.token:
                full = True
                sql, params = latest_build_sql(now, since=None)
                cursor.execute(sql, params)
                fetched = cursor.fetchall()
                state = _fold_state(fetched)
        totals = self.totals
        if full:
            self._forget()
            self.full_reads += 1
            self._full_at = time.monotonic()
            totals = self.totals
            self.rows = [row for row in fetched if row[0] in totals]
            self.index = {row[:5]: i for i, row in enumerate(self.rows)}
            for row in self.rows:
                totals[row[0]] += row[5]
            self.rows_read += len(self.rows)
        rows, index = self.rows, self.index
        changes: dict[Labels, int] = {}
        stale = []
        for row in fetched:
            status = row[0]
            if status in totals:
                if full:
                    continue
                self.rows_read += 1
                key, n = row[:5], row[5]
                at = index.get(key)
                if at is None:
                    if n:
                        index[key] = len(rows)
                        rows.append(row)
                        totals[status] += n
                    continue
                before = rows[at][5]
                rows[at] = row
                totals[status] += n - before
                self.zeros += (n == 0) - (before == 0)
            elif status[0] == "+":
                changes[(status[1:], *row[1:5])] = row[5]
            elif status == "stale":
                stale.append(row)
        if self.zeros > self.COMPACT_AFTER and self.zeros * 8 > len(rows):
            self.rows = [row for row in rows if row[5]]
            self.index = {row[:5]: i for i, row in enumerate(self.rows)}
            self.zeros = 0
            self.compactions += 1
        # No fold yet (a database never folded, or emptied): nothing to remember, read it all again.
        self.fold, self.token = state.get("fold"), state.get("token")
        return changes, stale

    def _patched(self, changes: dict[Labels, int], stale: list[tuple]) -> tuple[list[tuple], dict[str, int]]:
        # A new list each refresh: the last one may still be rendering in another thread.
        rows, index, latest = self.rows.copy(), self.index, dict(self.totals)
        added: dict[Labels, int] = {}  # label sets the copy does not hold

        def get(key: Labels) -> int:
            at = index.get(key)
            return added.get(key, 0) if at is None else rows[at][5]

        def put(key: Labels, n: int) -> None:
            at = index.get(key)
            if at is None:
                added[key] = n
            else:
                rows[at] = (*key, n)

        for key, n in changes.items():
            if n:
                put(key, get(key) + n)
                latest[key[0]] += n
        zeros = self.zeros + bool(stale)
        for row in stale:
            labels = row[1:5]
            running = get(("running", *labels))
            n = min(row[5], running)
            if n:
                put(("running", *labels), running - n)
                put(("failed", *labels), get(("failed", *labels)) + n)
                latest["running"] -= n
                latest["failed"] += n
        if changes or zeros:
            rows = [row for row in rows if row[5] > 0]
        rows.extend((*key, n) for key, n in added.items() if n > 0)
        return rows, latest


def _fold_state(rows: list[tuple]) -> dict[str, int]:
    return {row[0]: row[5] for row in rows if row[0] in ("fold", "token", "seen")}


def _latest_build_rows(now: datetime, kept: KeptCounts) -> tuple[list[tuple], dict[str, int]]:
    return kept.latest_build(now)


_FOLD_LOCK = 0x636F646572  # pg_advisory_xact_lock key: one folder at a time, across replicas


def fold_gauge_changes() -> None:
    """Adds the label-set changes the workspace triggers appended (workspaces 0004) to the counts,
    deletes them, and records the fold: all in one transaction. A count changed gets the fold's
    number; one fallen to 0 stays until `FOLDS_KEPT` folds later, so that every reader sees it fall.

    Builds only append changes, so they never wait on each other; the folders are the only writers
    of the counts, one at a time (SQLite's single writer; on PostgreSQL an advisory lock), and each
    writes them in label order."""
    import secrets

    from django.db import connection, transaction

    from coderd.workspaces.models import WorkspaceGaugeChange, WorkspaceGaugeCount, WorkspaceGaugeFold

    q = connection.ops.quote_name
    log, counts = q(WorkspaceGaugeChange._meta.db_table), q(WorkspaceGaugeCount._meta.db_table)
    folds = q(WorkspaceGaugeFold._meta.db_table)
    labels = "status, template_name, template_version, workspace_owner, workspace_transition"
    upsert = f"ON CONFLICT ({labels}) DO UPDATE SET n = {counts}.n + excluded.n, fold = excluded.fold"
    with connection.cursor() as cursor:
        # Nothing appended since the last fold (an idle deployment's every pass): no write at all.
        # A change committed just after this is folded at the next pass.
        cursor.execute(f"SELECT 1 FROM {log} LIMIT 1")
        if cursor.fetchone() is None:
            return
    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_FOLD_LOCK])
        # Under the lock (on SQLite the write lock, taken at BEGIN IMMEDIATE): no other fold between
        # this number and the commit, so folds commit in the order of their numbers.
        cursor.execute(f"SELECT COALESCE(MAX(number), 0) + 1 FROM {folds}")
        number = cursor.fetchone()[0]
        cursor.execute(f"INSERT INTO {folds} (number, token) VALUES (%s, %s)", [number, secrets.randbits(62)])
        if connection.vendor == "postgresql":
            # One statement, one snapshot: exactly the changes deleted are added, whatever
            # commits meanwhile (ids of a sequence commit out of order, so no "up to id N").
            cursor.execute(
                f"WITH d AS (DELETE FROM {log} RETURNING {labels}, delta)"
                f" INSERT INTO {counts} ({labels}, n, fold) SELECT {labels}, SUM(delta), %s FROM d"
                f" GROUP BY {labels} HAVING SUM(delta) <> 0 ORDER BY {labels} {upsert}",
                [number],
            )
        else:
            # The write lock is held since BEGIN: no change can be appended between the INSERT's
            # read and the DELETE. (WHERE true: SQLite's parser needs it before ON CONFLICT.)
            cursor.execute(
                f"INSERT INTO {counts} ({labels}, n, fold) SELECT {labels}, SUM(delta), %s FROM {log} WHERE true"
                f" GROUP BY {labels} HAVING SUM(delta) <> 0 ORDER BY {labels} {upsert}",
                [number],
            )
            cursor.execute(f"DELETE FROM {log}")
        # Zeros older than the oldest fold kept: every reader that can still read by fold saw them.
        cursor.execute(f"DELETE FROM {counts} WHERE n = 0 AND fold <= %s", [number - FOLDS_KEPT])
        cursor.execute(f"DELETE FROM {folds} WHERE number <= %s", [number - FOLDS_KEPT])


def latest_build_sql(now: datetime, since: int | None = None) -> tuple[str, list]:
    """One statement, one snapshot (a change is either folded or pending, never both; a count is
    either before a fold or after it):
    - the kept counts by (status, template, version, owner, transition): those changed after fold
      `since` (0 among them: the label set is gone), or, with `since` None, every non-zero one;
    - the newest fold's number and token ("fold", "token" rows) and the token of fold `since`
      ("seen"), in the count column;
    - the changes not yet folded, as "+status" rows;
    - the running jobs whose heartbeat is stale, as "stale" rows by the same labels: the running
      workspaces (a partial index) each looked up through its latest build to its job by primary
      key (a correlated subquery: PostgreSQL would otherwise hash-join every build)."""
    from django.db import connection

    from coderd.workspaces.models import (
        Workspace,
        WorkspaceBuild,
        WorkspaceGaugeChange,
        WorkspaceGaugeCount,
        WorkspaceGaugeFold,
    )
    from provisioner.models import HEARTBEAT_STALE_AFTER, ProvisionerJob

    q = connection.ops.quote_name
    w, b, j = (q(m._meta.db_table) for m in (Workspace, WorkspaceBuild, ProvisionerJob))
    counts = q(WorkspaceGaugeCount._meta.db_table)
    log = q(WorkspaceGaugeChange._meta.db_table)
    folds = q(WorkspaceGaugeFold._meta.db_table)
    labels = "w.template_name, w.latest_version_name, w.owner_username, w.latest_transition"
    # SQLite, without statistics, may not pick the small partial index by itself.
    running = f"{w} w INDEXED BY workspace_latest_job_running" if connection.vendor == "sqlite" else f"{w} w"
    newest = f"number = (SELECT MAX(number) FROM {folds})"
    kept = "n <> 0" if since is None else "fold > %s"
    sql = (
        f"SELECT status, template_name, template_version, workspace_owner, workspace_transition, n"
        f" FROM {counts} WHERE {kept}"
        f" UNION ALL SELECT 'fold', '', '', '', '', number FROM {folds} WHERE {newest}"
        f" UNION ALL SELECT 'token', '', '', '', '', token FROM {folds} WHERE {newest}"
        f" UNION ALL SELECT 'seen', '', '', '', '', token FROM {folds} WHERE number = %s"
        f" UNION ALL"
        f" SELECT '+' || status, template_name, template_version, workspace_owner, workspace_transition,"
        f" SUM(delta) FROM {log} GROUP BY 1, 2, 3, 4, 5"
        f" UNION ALL"
        f" SELECT 'stale', {labels}, COUNT(*) FROM {running}"
        f" WHERE NOT w.deleted AND w.latest_job_state = 'running'"
        f" AND (SELECT j.updated_at FROM {b} b JOIN {j} j ON j.id = b.job_id WHERE b.id = w.latest_build_id"
        f" AND j.started_at IS NOT NULL AND j.completed_at IS NULL) < %s"
        f" GROUP BY {labels}"
    )
    stale = connection.ops.adapt_datetimefield_value(now - HEARTBEAT_STALE_AFTER)
    params = ([] if since is None else [since]) + [-1 if since is None else since, stale]
    return sql, params


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
        # ~50,000 rows parsed in one burst: no cyclic GC passes over the heap meanwhile (as in
        # query_counts), for lists and tuples that cannot form cycles.
        collecting = gc.isenabled()
        gc.disable()
        try:
            data = json.loads(self.cache.read_text())
            data["per_template"] = list(map(tuple, data["per_template"]))
            data["created"] = list(map(tuple, data.get("created", [])))
        except (FileNotFoundError, ValueError):
            return None
        finally:
            if collecting:
                gc.enable()
        counts = DatabaseCounts(**data)
        self._loaded = (key, counts)
        return counts

    def save(self, counts: DatabaseCounts) -> None:
        tmp = self.cache.with_suffix(f".{os.getpid()}.tmp")
        # Not dataclasses.asdict: it deep-copies every one of the ~50,000 per-template tuples first
        # (~0.4 s at 100,000 workspaces); json writes the tuples as they are.
        tmp.write_text(json.dumps({f.name: getattr(counts, f.name) for f in fields(counts)}))
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
        query: Callable[[datetime], DatabaseCounts] | None = None,
    ) -> None:
        self.legacy = legacy
        self.interval = interval
        self.store = store or MemoryCacheStore()
        self.clock = clock
        # This collector's copy of the kept counts: each refresh reads only what changed since.
        self.kept = KeptCounts()
        self.query = query or (lambda now: query_counts(now, self.kept))
        self._lock = threading.Lock()
        self._render_lock = threading.Lock()
        self._rendered: dict[str, Rendered] = {}
        self._lines: dict[str, _SeriesLines] = {}

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
        """These families in one exposition format, rendered once per refresh.

        The per-template family has a series per (template, version, owner, transition, status):
        tens of thousands in a large deployment, far too many to format at every scrape, or even
        at every refresh (prometheus_client takes ~0.8 s for 50,000 series); see `_SeriesLines`."""
        counts = self.counts()
        key = (counts.computed_at, counts.generation, content_type)
        with self._render_lock:
            cached = self._rendered.get(content_type)
            if cached is not None and cached.key == key:
                return cached
            # One encoder per content type (a new functools.partial at each scrape: keyed as
            # metrics.serving.cached_encoder keys its own).
            lines = self._lines.get(content_type)
            if lines is None:
                lines = self._lines[content_type] = _SeriesLines(encoder)
            text = lines.render(self._families(counts, per_template=False), counts.per_template)
            if text is None:  # not of the expected shape: prometheus_client's encoder, whole
                text = encoder(_Families(self._families(counts)))
                if text.endswith(_EOF):  # OpenMetrics: the live families follow, then the one # EOF
                    text = text[: -len(_EOF)]
            rendered = Rendered(key, text)
            self._rendered[content_type] = rendered
            return rendered

    def collect(self):
        return iter(self._families(self.counts()))

    def _families(self, c: DatabaseCounts, per_template: bool = True) -> list:
        """The families; with `per_template` False, the per-template family without its series."""
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
        family = GaugeMetricFamily(
            "coderd_workspace_latest_build_status",
            HELP["coderd_workspace_latest_build_status"],
            labels=PER_TEMPLATE_LABELS,
        )
        for *labels, n in c.per_template if per_template else ():
            family.add_metric([str(v) for v in labels], n)
        out.append(family)
        created = CounterMetricFamily(
            "coderd_workspace_creation_total",
            HELP["coderd_workspace_creation_total"],
            labels=["organization_name", "template_name", "preset_name"],
        )
        for *labels, n in c.created:
            created.add_metric([str(v) for v in labels], n)
        out.append(created)
        return out


PER_TEMPLATE = "coderd_workspace_latest_build_status"
PER_TEMPLATE_LABELS = [
    "status",
    "template_name",
    "template_version",
    "workspace_owner",
    "workspace_transition",
]


class _SeriesLines:
    """The families in one exposition format, the per-template family's series from kept lines.

    Every byte still comes from prometheus_client's encoder: the small families are encoded whole
    at each refresh; each per-template series is encoded once, and the part of its line before
    the value kept by label set; a refresh then writes, for each row, that part, the value as
    `floatToGoString` writes it, and the newline. The first render encodes all the series as one
    family and cuts it into lines (one line a sample: no timestamps, exemplars or suffixes in a
    gauge family); later ones encode only label sets not seen before. Tests compare the output
    with the encoder's, byte for byte. (metrics.serving.CachedEncoder does the same for the live
    families, from prometheus_client's samples; here the rows are used as they are, without
    building ~50,000 samples at each refresh.)"""

    def __init__(self, encoder: Callable) -> None:
        self.encoder = encoder
        self.trailer = encoder(_Families([]))  # b"# EOF\n" for OpenMetrics, nothing for the text format
        self.prefixes: dict[tuple, str] = {}
        self.values: dict[int, str] = {}

    def _encode(self, family) -> bytes:
        text = self.encoder(_Families([family]))
        return text[: len(text) - len(self.trailer)]

    def _value(self, n: int) -> str:
        text = self.values.get(n)
        if text is None:
            text = floatToGoString(n)
            if len(self.values) < 100_000:
                self.values[n] = text
        return text

    def render(self, families: list, rows: list[tuple]) -> bytes | None:
        """`families` with the per-template one (empty) given the series of `rows`, encoded, without
        the trailer; None if a line is not of the shape `<prefix><value>\n`."""
        out = []
        for family in families:
            head = self._encode(family)
            if family.name == PER_TEMPLATE:
                body = self._series(family, head, rows)
                if body is None:
                    return None
                out.append(head + body)
            else:
                out.append(head)
        return b"".join(out)

    def _series(self, family, head: bytes, rows: list[tuple]) -> bytes | None:
        prefixes = self.prefixes
        new = [row for row in rows if row[:5] not in prefixes]
        if new:
            one = GaugeMetricFamily(family.name, family.documentation, labels=PER_TEMPLATE_LABELS)
            for *labels, n in new:
                one.add_metric([str(v) for v in labels], n)
            text = self._encode(one)
            if not text.startswith(head):
                return None
            lines = text[len(head) :].decode().split("\n")
            if len(lines) != len(new) + 1 or lines[-1]:
                return None
            for row, line in zip(new, lines, strict=False):
                value = self._value(row[5])
                if not line.endswith(value):
                    return None
                prefixes[row[:5]] = line[: len(line) - len(value)]
        value = self._value
        body = "".join([f"{prefixes[row[:5]]}{value(row[5])}\n" for row in rows])
        if len(prefixes) > 2 * len(rows) + 1000:  # label sets gone since: forget their lines
            self.prefixes = {row[:5]: prefixes[row[:5]] for row in rows}
        return body.encode()


def _close_thread_connection() -> None:
    # Scrapes run in the listener's short-lived threads: a connection opened there would never be
    # closed by Django's request cycle.
    if threading.current_thread() is threading.main_thread():
        return
    from django.db import connection

    connection.close()
