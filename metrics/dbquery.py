"""Database query metrics: `coderd_db_query_latencies_seconds{query}` and
`coderd_db_query_counts_total{route,method,query}`, as Coder's dbmetrics wrapper exports them.

Coder wraps each of its named sqlc queries (`GetWorkspaceByID`...). Django has no such names, so the
`query` label is the statement's kind and its main table: `select workspaces_workspace`,
`update provisioner_provisionerjob`, `savepoint`. It is read from the SQL text, cheaply (one regex
search, cached per statement text), and bounded: the kind is one of a fixed list and the table one of
this project's models' tables, anything else `other`; a savepoint's generated name is left out. So
the number of series is at most kinds x tables, whatever the data or the requests.

`route` and `method` come from the HTTP request (or websocket) being served: the metrics middleware
puts it in a context variable, which Django's and Channels' thread hops copy; queries made outside a
request (daemons, the reaper, a scrape's refresh) have both empty, as Coder's.

The hook is Django's `connection.execute_wrappers`, added to every connection when it opens
(`install()`, from MetricsConfig.ready; `CODER_PROMETHEUS_COLLECT_DB_METRICS=false` leaves it out).
Its cost per query is measured in bench/bench_dbquery.py (docs/benchmarks.md).
"""

from __future__ import annotations

import re
from contextvars import ContextVar
from time import perf_counter

from metrics import runtime
from metrics.routes import http_route

OTHER = "other"
# The statement kinds a label may name; the first word of the SQL, lower case.
KINDS = frozenset(
    {
        "select",
        "insert",
        "update",
        "delete",
        "with",
        "savepoint",
        "release",
        "rollback",
        "begin",
        "commit",
        "set",
        "pragma",
        "create",
        "drop",
        "alter",
        "explain",
        "lock",
        "values",
    }
)
# Kinds whose table is worth naming (the others name a savepoint, a setting, or nothing).
_WITH_TABLE = frozenset({"select", "insert", "update", "delete", "with", "create", "drop", "alter", "lock"})
# The main table: the first one after FROM, INTO, UPDATE or TABLE (quoted by Django, or bare).
_TABLE = re.compile(r'\b(?:FROM|INTO|UPDATE|TABLE)\s+"?([A-Za-z_][A-Za-z0-9_]*)', re.IGNORECASE)
_MAX_CACHED = 4096

# What the current request is: set by the middleware (an HttpRequest) or the websocket wrapper
# (a (method, route) pair); None outside a request.
current_origin: ContextVar = ContextVar("coderd_metrics_origin", default=None)


class QueryNames:
    """SQL text -> bounded query name, cached (a statement text recurs at every call of its site)."""

    def __init__(self, tables: frozenset[str]) -> None:
        self.tables = tables
        self._cache: dict[int, str] = {}

    def __call__(self, sql: str) -> str:
        # Keyed by the text's hash, not the text: a hit then compares two ints, not the new
        # statement with the stored one byte by byte. Two statements of one hash would share a name
        # (still a bounded one); with 64-bit hashes and a few thousand statements, they do not meet.
        key = hash(sql)
        name = self._cache.get(key)
        if name is None:
            name = self._name(sql)
            if len(self._cache) >= _MAX_CACHED:  # IN (...) lists of every length: stay bounded
                self._cache.clear()
            self._cache[key] = name
        return name

    def _name(self, sql: str) -> str:
        head = sql.lstrip()[:16].split(None, 1)
        kind = head[0].lower().rstrip(";") if head else ""
        if kind not in KINDS:
            return OTHER
        if kind not in _WITH_TABLE:
            return kind
        match = _TABLE.search(sql)
        table = match[1].lower() if match else ""
        return f"{kind} {table if table in self.tables else OTHER}"


def model_tables() -> frozenset[str]:
    """Every table of this project's models (Django's own included): the names a label may carry."""
    from django.apps import apps

    tables = set()
    for model in apps.get_models(include_auto_created=True):
        tables.add(model._meta.db_table.lower())
    return frozenset(tables)


_names: QueryNames | None = None


def query_name(sql: str) -> str:
    global _names
    if _names is None:
        _names = QueryNames(model_tables())
    return _names(sql)


def origin_labels(origin) -> tuple[str, str]:
    """(route, method) of the request being served, ("", "") outside one."""
    if origin is None:
        return "", ""
    if type(origin) is tuple:
        return origin
    route = getattr(origin, "metrics_route", None)
    if route is None:  # legacy names: the route is known once Django has resolved it
        route = http_route(origin)
    return route, origin.metrics_method


def execute_wrapper(execute, sql, params, many, context):
    """Django's execute wrapper: time the query and count it (even when it raises)."""
    start = perf_counter()
    try:
        return execute(sql, params, many, context)
    finally:
        seconds = perf_counter() - start
        state = runtime._state or runtime.current()
        route, method = origin_labels(current_origin.get())
        state.metrics.observe_query(query_name(sql), route, method, seconds)


def add_to_connection(sender, connection, **kwargs) -> None:
    """`connection_created` receiver: every new connection gets the wrapper, once."""
    if execute_wrapper not in connection.execute_wrappers:
        connection.execute_wrappers.append(execute_wrapper)


def install() -> None:
    """Wrap every database connection opened from now on, and those already open in this thread."""
    from django.db import connections
    from django.db.backends.signals import connection_created

    connection_created.connect(add_to_connection, dispatch_uid="coderd-metrics-dbquery")
    for conn in connections.all(initialized_only=True):
        if conn.connection is not None:
            add_to_connection(None, conn)


def uninstall() -> None:
    """Stop wrapping new connections and unwrap the open ones of this thread (the benchmark)."""
    from django.db import connections
    from django.db.backends.signals import connection_created

    connection_created.disconnect(dispatch_uid="coderd-metrics-dbquery")
    for conn in connections.all(initialized_only=True):
        while execute_wrapper in conn.execute_wrappers:
            conn.execute_wrappers.remove(execute_wrapper)
