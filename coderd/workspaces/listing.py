"""The workspace list read as plain rows: the bytes `workspace_json` + ninja's encoder give, without
model instances or dicts.

A page of 50 workspaces spent ~75 % of its time in the ORM building ~400 model instances from the
joined rows and converting ~2,250 UUIDs and ~1,150 datetimes, and most of the rest in the JSON
encoder calling back into Python for each of them. Here the ORM still builds the query (the caller's
filters, roles, order and page are the queryset `_filter_workspaces` makes; for a list without a
search query its SQL is built once per shape and kept), its rows are read through the cursor as they
come, and each value is written once, as JSON text, into a template made once from the response's
shape (`_WORKSPACE`, `_BUILD`: json.dumps of the shape, so the separators and constants are the
encoder's own):
- on SQLite a UUID is stored as 32 hex digits and a datetime as `YYYY-MM-DD HH:MM:SS[.ffffff]` UTC
  text (the datetimes are selected as text, so that sqlite3 does not parse them): both are rewritten
  by slicing into what DjangoJSONEncoder writes (`"xxxxxxxx-xxxx-..."`, `"YYYY-MM-DDTHH:MM:SS[.mmm]Z"`);
  a value in any other shape goes through the ORM's own converter and the encoder's rule;
- on PostgreSQL psycopg's UUID and datetime objects are written by the same rule (`fastjson`);
- strings go through the encoder's own C escaping (`encode_basestring_ascii`).
A row read exactly as at an earlier request is sent as the text written then (_RENDERED): clients
poll, and most rows do not change between two polls.
tests/test_api_lean_reads.py compares the bytes with workspace_json over model instances, for every
state, filter and page, on SQLite and PostgreSQL. One difference by design: a job input holding JSON
null for a name (our writers never store one) is listed as "" rather than null.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import datetime
from json.encoder import encode_basestring_ascii
from operator import itemgetter
from typing import Any

from django.db import connection
from django.db.models import F, Func, QuerySet, TextField
from django.db.models.functions import Cast

from coderd.fastjson import datetime_text
from coderd.shapes import ZERO_UUID
from coderd.users.models import User
from coderd.workspaces.responses import DEFAULT_JOB_TAGS, queue_positions_for
from coderd.workspaces.status import workspace_status
from provisioner.models import HEARTBEAT_STALE_AFTER, JobStatus, JobType, status_of

_ZERO = f'"{ZERO_UUID}"'
_B = "latest_build__"
_J = "latest_build__job__"

# (path, kind) in the order of the row; kinds: "u" UUID, "t" datetime, "" as read.
_COLUMNS: tuple[tuple[str, str], ...] = (
    ("id", "u"),
    ("created_at", "t"),
    ("updated_at", "t"),
    ("owner_id", "u"),
    ("owner__username", ""),
    ("organization_id", "u"),
    ("organization__name", ""),
    ("template_id", "u"),
    ("template__name", ""),
    ("template__display_name", ""),
    ("template__active_version_id", "u"),
    ("name", ""),
    ("deleted", ""),
    ("latest_build_id", "u"),
    (_B + "created_at", "t"),
    (_B + "updated_at", "t"),
    (_B + "template_version_id", "u"),
    (_B + "template_version__name", ""),
    (_B + "build_number", ""),
    (_B + "transition", ""),
    (_B + "initiator_id", "u"),
    (_B + "initiator__username", ""),
    (_J + "id", "u"),
    (_J + "created_at", "t"),
    (_J + "started_at", "t"),
    (_J + "completed_at", "t"),
    (_J + "canceled_at", "t"),
    (_J + "updated_at", "t"),
    (_J + "error", ""),
    (_J + "worker_id", "u"),
    (_J + "worker__name", ""),
    (_J + "organization_id", "u"),
    (_J + "initiator_id", "u"),
    (_J + "type", ""),
)
# What job_json reads from the job's input (a build's input also carries its template's source,
# which need not be read at all), in one JSON array per row (_InputKeys).
_INPUT_KEYS = (
    "template_version_id",
    "workspace_build_id",
    "template_version_name",
    "workspace_id",
    "workspace_name",
)


# Each returns the value's JSON text: quoted, or null.


def _sqlite_uuid(value: Any) -> str:
    if value is None:
        return "null"
    if type(value) is str and len(value) == 32:
        value = value.lower()
        return f'"{value[:8]}-{value[8:12]}-{value[12:16]}-{value[16:20]}-{value[20:]}"'
    return f'"{connection.ops.convert_uuidfield_value(value, None, connection)}"'


def _sqlite_datetime(value: Any) -> str:
    # Django writes str(datetime) of the UTC time: the fraction only when there are microseconds.
    if value is None:
        return "null"
    if type(value) is str and value[10:11] == " ":
        if len(value) == 19:
            return f'"{value[:10]}T{value[11:]}Z"'
        if len(value) == 26 and value[19] == "." and value[20:] != "000000":
            return f'"{value[:10]}T{value[11:23]}Z"'
    return f'"{datetime_text(_sqlite_datetime_value(value))}"'


def _sqlite_datetime_value(value: Any) -> datetime | None:
    return connection.ops.convert_datetimefield_value(value, None, connection)


def _pg_uuid(value: Any) -> str:
    return "null" if value is None else f'"{value}"'


def _pg_datetime(value: Any) -> str:
    return "null" if value is None else f'"{datetime_text(value)}"'


def _same(value: Any) -> Any:
    return value


def _formatters() -> tuple[Callable[[Any], Any], Callable[[Any], Any], Callable[[Any], datetime | None]]:
    """(UUID as JSON, datetime as JSON, datetime as a value) for this connection's raw values."""
    if connection.vendor == "sqlite":
        return _sqlite_uuid, _sqlite_datetime, _sqlite_datetime_value
    return _pg_uuid, _pg_datetime, _same


class _InputKeys(Func):
    """The job input's values of _INPUT_KEYS as one JSON array (null for a key it lacks): the input
    parsed once by the database, not once per key (Django's key transforms parse it twice a key on
    SQLite)."""

    output_field = TextField()

    def as_sqlite(self, compiler: Any, connection: Any, **extra: Any) -> tuple[str, list[Any]]:
        column, params = compiler.compile(self.source_expressions[0])
        paths = ", ".join(["%s"] * len(_INPUT_KEYS))
        return f"JSON_EXTRACT({column}, {paths})", [*params, *(f'$."{k}"' for k in _INPUT_KEYS)]

    def as_postgresql(self, compiler: Any, connection: Any, **extra: Any) -> tuple[str, list[Any]]:
        column, params = compiler.compile(self.source_expressions[0])
        keys = ", ".join([f"{column} -> %s"] * len(_INPUT_KEYS))
        return f"jsonb_build_array({keys})::text", [p for k in _INPUT_KEYS for p in (*params, k)]


def _input_value(value: Any) -> str:
    """A value of the input as the encoder writes it (our writers store strings)."""
    if type(value) is str:
        return encode_basestring_ascii(value)
    return json.dumps(value)


def _select(workspaces: QuerySet) -> QuerySet:
    """The page's columns, in _COLUMNS order then _INPUT_KEYS."""
    sqlite = connection.vendor == "sqlite"
    exprs: dict[str, Any] = {}
    names = []
    for i, (path, kind) in enumerate(_COLUMNS):
        if sqlite and kind == "t":
            exprs[f"_c{i}"] = Cast(F(path), TextField())
            names.append(f"_c{i}")
        else:
            names.append(path)
    exprs["_input"] = _InputKeys(F(_J + "input"))
    names.append("_input")
    return workspaces.annotate(**exprs).values_list(*names)


# The page's SQL for a list without a search query, by (database, whether the caller sees everyone's,
# limit, offset), and its count's by (database, "count", whether the caller sees everyone's): (SQL,
# params, index of the caller's id in them or None). Building and compiling the query through the ORM
# took about 2 ms of a 8 ms request (its count ~0.5 ms); the SQL of such a list differs between
# callers only in the caller's id (members see their own workspaces), which is swapped in.
_PLAIN_SQL: dict[tuple[Any, ...], tuple[str, list[Any], int | None]] = {}
_PLAIN_SQL_MAX = 256


def _plain_sql(
    key: tuple[Any, ...], user_id: Any, compile_sql: Callable[[], tuple[str, Any]]
) -> tuple[str, list[Any]]:
    key = (connection.vendor, *key)
    own = User._meta.pk.get_db_prep_value(user_id, connection)
    found = _PLAIN_SQL.get(key)
    if found is not None:
        sql, params, at = found
        if at is None:
            return sql, params
        params = list(params)
        params[at] = own
        return sql, params
    sql, params = compile_sql()
    params = list(params)
    at = [i for i, p in enumerate(params) if type(p) is type(own) and p == own]
    if len(at) <= 1:  # else the caller's id cannot be told apart: not kept, compiled each time
        if len(_PLAIN_SQL) >= _PLAIN_SQL_MAX:
            _PLAIN_SQL.clear()
        _PLAIN_SQL[key] = (sql, params, at[0] if at else None)
    return sql, params


def plain_count(everyone: bool, user_id: Any, build: Callable[[], QuerySet]) -> int:
    """`build().count()` for a list without a search query (`build` makes its unsliced queryset),
    from SQL kept as the page's is."""

    def compile_sql() -> tuple[str, Any]:
        sql, params = build().select_related(None).order_by().values("pk").query.sql_with_params()
        return f"SELECT COUNT(*) FROM ({sql}) counted", params

    sql, params = _plain_sql(("count", everyone), user_id, compile_sql)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone()[0]


def _rows(
    workspaces: QuerySet | None, plain: tuple[tuple[Any, ...], Any, Callable[[], QuerySet]] | None
) -> list[tuple]:
    if plain is not None:
        key, user_id, build = plain
        sql, params = _plain_sql(key, user_id, lambda: _select(build()).query.sql_with_params())
    else:
        sql, params = _select(workspaces).query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def _slot(name: str) -> str:
    return f"\x00{name}\x00"


class _Template:
    """`body` as json.dumps writes it (ninja's encoder: the same separators, ASCII only), each
    _slot() in it filled, when called, with the value of that name (already JSON text). The text is
    kept as its pieces and joined: `%`-formatting a ~3 KB template scanned all of it for each row,
    2 to 4 times the time of the join."""

    def __init__(self, body: dict[str, Any]) -> None:
        pieces = re.split(r'"\\u0000(\w+)\\u0000"', json.dumps(body))
        names = pieces[1::2]
        assert len(names) > 1  # itemgetter of one name gives a value, not a tuple
        self._pick = itemgetter(*names)
        self._pieces = pieces  # literal, name, literal, ..., literal: the names replaced by values

    def __call__(self, values: dict[str, str]) -> str:
        pieces = self._pieces.copy()
        pieces[1::2] = self._pick(values)
        return "".join(pieces)


# workspace_json's and build_json's shapes, key for key (the test compares the bytes).
_BUILD = _Template(
    {
        **{k: _slot(k) for k in ("id", "created_at", "updated_at", "workspace_id", "workspace_name")},
        "workspace_owner_id": _slot("workspace_owner_id"),
        "workspace_owner_name": _slot("workspace_owner_name"),
        "workspace_owner_avatar_url": "",
        **{
            k: _slot(k)
            for k in ("template_version_id", "template_version_name", "build_number", "transition")
        },
        "initiator_id": _slot("initiator_id"),
        "initiator_name": _slot("initiator_name"),
        "job": {
            **{
                k: _slot(f"job_{k}")
                for k in ("id", "created_at", "started_at", "completed_at", "canceled_at")
            },
            "error": _slot("job_error"),
            "error_code": "",
            "status": _slot("job_status"),
            "worker_id": _slot("job_worker_id"),
            "worker_name": _slot("job_worker_name"),
            "file_id": str(ZERO_UUID),
            "tags": DEFAULT_JOB_TAGS,
            "queue_position": _slot("job_queue_position"),
            "queue_size": _slot("job_queue_size"),
            "organization_id": _slot("job_organization_id"),
            "initiator_id": _slot("job_initiator_id"),
            "input": {
                "template_version_id": _slot("job_input_template_version_id"),
                "workspace_build_id": _slot("job_input_workspace_build_id"),
                "error": "",
            },
            "type": _slot("job_type"),
            "metadata": {
                "template_version_name": _slot("job_template_version_name"),
                "template_id": _slot("job_template_id"),
                "template_name": _slot("job_template_name"),
                "template_display_name": _slot("job_template_display_name"),
                "template_icon": "",
                "workspace_id": _slot("job_workspace_id"),
                "workspace_name": _slot("job_workspace_name"),
            },
            "logs_overflowed": False,
        },
        "reason": "initiator",
        "resources": [],
        "deadline": None,
        "max_deadline": None,
        "status": _slot("status"),
        "daily_cost": 0,
        "template_version_preset_id": None,
        "has_ai_task": False,
    }
)
_WORKSPACE = _Template(
    {
        **{k: _slot(k) for k in ("id", "created_at", "updated_at", "owner_id", "owner_name")},
        "owner_avatar_url": "",
        **{k: _slot(k) for k in ("organization_id", "organization_name")},
        **{k: _slot(k) for k in ("template_id", "template_name", "template_display_name")},
        "template_icon": "",
        "template_allow_user_cancel_workspace_jobs": True,
        "template_active_version_id": _slot("template_active_version_id"),
        "template_require_active_version": True,
        "template_use_classic_parameter_flow": False,
        "latest_build": _slot("latest_build"),
        "latest_app_status": None,
        "outdated": _slot("outdated"),
        "name": _slot("name"),
        "autostart_schedule": None,
        "ttl_ms": None,
        "last_used_at": _slot("last_used_at"),
        "deleting_at": None,
        "dormant_at": None,
        "health": {"healthy": True, "failing_agents": []},
        "automatic_updates": "always",
        "allow_renames": False,
        "favorite": False,
        "next_start_at": None,
        "is_prebuild": False,
        "task_id": None,
        "deleted": _slot("deleted"),
    }
)


_STATUS: dict[tuple[str, str], str] = {}


def _workspace_status(transition: str, job_status: str) -> str:
    found = _STATUS.get((transition, job_status))
    if found is None:
        found = _STATUS[(transition, job_status)] = workspace_status(transition, job_status).value
    return found


# Rendered rows by their values as read: a workspace whose row (its own columns and every joined one
# the list shows) reads the same as at an earlier request is sent as it was then, its JSON not
# written again. Clients poll this list, and between two polls almost no row changes: writing a row's
# JSON was ~60 % of the view's own work (the query the rest), a lookup by the row costs about a tenth
# of that. Only rows whose JSON is fixed by their values are kept: not a pending job's (its queue
# position moves as other jobs start), nor a running one's (its heartbeat goes stale with the clock).
# A value that compares equal renders the same: SQLite's are text, integers and NULL; psycopg's
# datetimes all come in the connection's UTC (Django sets it), so equal ones are written alike.
_RENDERED: dict[tuple, str] = {}
_RENDERED_MAX = 4096  # ~5.7 KB a row with its key (50 rows of bench_api): ~23 MB at most; emptied when full


def workspace_list(
    workspaces: QuerySet | None,
    now: datetime,
    plain: tuple[tuple[Any, ...], Any, Callable[[], QuerySet]] | None = None,
) -> list[str]:
    """`[json.dumps(workspace_json(w, queue, now), cls=fastjson.Encoder) for w in page]` for the page
    `workspaces` (a queryset sliced by the caller), in a fixed number of queries: the page, and the queue positions of its pending jobs.

    `plain` instead, for a list without a search query: (key, caller's id, the page's queryset
    builder), where key says all that shapes the query but the caller's id (see _PLAIN_SQL)."""
    rows = _rows(workspaces, plain)
    rendered = _RENDERED
    listed = [rendered.get(row) for row in rows]
    if None not in listed:
        return listed  # type: ignore[return-value]
    missing = [i for i, text in enumerate(listed) if text is None]
    texts, settled = _render([rows[i] for i in missing], now)
    if len(rendered) + len(missing) > _RENDERED_MAX:
        rendered.clear()
    for i, text, keep in zip(missing, texts, settled, strict=True):
        listed[i] = text
        if keep:
            rendered[rows[i]] = text
    return listed  # type: ignore[return-value]


def _render(rows: list[tuple], now: datetime) -> tuple[list[str], list[bool]]:
    """Each row's JSON, and whether it is fixed by the row's values alone (see _RENDERED)."""
    uuid_text, time_text, time_value = _formatters()
    memo: dict[Any, str] = {}  # a page repeats its owner, template, organization... ids

    def uuid_text(value: Any, raw: Callable[[Any], str] = uuid_text) -> str:
        found = memo.get(value)
        if found is None:
            found = memo[value] = raw(value)
        return found

    n = len(_COLUMNS)

    # Job statuses first: the pending ones need their queue positions, one query for all.
    statuses: list[str | None] = []
    settled: list[bool] = []
    pending: list[tuple[Any, datetime]] = []
    for row in rows:
        if row[13] is None:  # no build yet
            statuses.append(None)
            settled.append(True)
            continue
        started, completed, canceled, updated, error = row[24], row[25], row[26], row[27], row[28]
        if canceled is not None or started is None or completed is not None:
            status = status_of(
                started_at=started,
                completed_at=completed,
                canceled_at=canceled,
                error=error,
                updated_at=None,
                now=now,
            )
            settled.append(status != JobStatus.PENDING)
        else:  # running, unless its heartbeat is stale: the one case that needs a datetime
            beat = time_value(updated)
            status = (
                JobStatus.FAILED
                if beat is not None and now - beat > HEARTBEAT_STALE_AFTER
                else JobStatus.RUNNING
            )
            settled.append(False)
        if status == JobStatus.PENDING:
            pending.append((row[22], time_value(row[23])))
        statuses.append(str(status))
    queue = queue_positions_for(pending)

    q = encode_basestring_ascii  # a str as json.dumps writes it (ensure_ascii)
    listed = []
    for row, status in zip(rows, statuses, strict=True):
        ws_id = uuid_text(row[0])
        owner_id = uuid_text(row[3])
        owner_name = q(row[4])
        template_id = uuid_text(row[7])
        template_name = q(row[8])
        template_display_name = q(row[9])
        ws_name = q(row[11])
        active_version = row[10]
        created = time_text(row[1])
        build = "null"
        if status is not None:
            job_id = row[22]
            position, size = queue.get(job_id, (0, 0))
            in_tv, in_build, in_tv_name, in_ws, in_ws_name = map(_input_value, json.loads(row[n]))
            job_type = row[33]
            build_created = time_text(row[14])
            transition = row[19]
            build = _BUILD(
                {
                    "id": uuid_text(row[13]),
                    "created_at": build_created,
                    "updated_at": time_text(row[15]),
                    "workspace_id": ws_id,
                    "workspace_name": ws_name,
                    "workspace_owner_id": owner_id,
                    "workspace_owner_name": owner_name,
                    "template_version_id": uuid_text(row[16]),
                    "template_version_name": q(row[17]),
                    "build_number": int.__repr__(row[18]),
                    "transition": q(transition),
                    "initiator_id": _ZERO if row[20] is None else uuid_text(row[20]),
                    "initiator_name": '""' if row[20] is None else q(row[21]),
                    "job_id": uuid_text(job_id),
                    "job_created_at": time_text(row[23]),
                    "job_started_at": time_text(row[24]),
                    "job_completed_at": time_text(row[25]),
                    "job_canceled_at": time_text(row[26]),
                    "job_error": q(row[28]),
                    "job_status": q(status),
                    "job_worker_id": uuid_text(row[29]),
                    "job_worker_name": '""' if row[29] is None else q(row[30]),
                    "job_queue_position": int.__repr__(position),
                    "job_queue_size": int.__repr__(size),
                    "job_organization_id": uuid_text(row[31]),
                    "job_initiator_id": _ZERO if row[32] is None else uuid_text(row[32]),
                    "job_input_template_version_id": in_tv,
                    "job_input_workspace_build_id": in_build,
                    "job_type": q(job_type),
                    "job_template_version_name": '""' if in_tv_name == "null" else in_tv_name,
                    "job_template_id": template_id,
                    "job_template_name": template_name,
                    "job_template_display_name": template_display_name,
                    "job_workspace_id": in_ws if job_type == JobType.WORKSPACE_BUILD else "null",
                    "job_workspace_name": '""' if in_ws_name == "null" else in_ws_name,
                    "status": q(_workspace_status(transition, status)),
                }
            )
        listed.append(
            _WORKSPACE(
                {
                    "id": ws_id,
                    "created_at": created,
                    "updated_at": time_text(row[2]),
                    "owner_id": owner_id,
                    "owner_name": owner_name,
                    "organization_id": uuid_text(row[5]),
                    "organization_name": q(row[6]),
                    "template_id": template_id,
                    "template_name": template_name,
                    "template_display_name": template_display_name,
                    "template_active_version_id": _ZERO
                    if active_version is None
                    else uuid_text(active_version),
                    "latest_build": build,
                    "outdated": "true" if status is not None and row[16] != active_version else "false",
                    "name": ws_name,
                    "last_used_at": created if status is None else build_created,
                    "deleted": "true" if row[12] else "false",
                }
            )
        )
    return listed, settled
