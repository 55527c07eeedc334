"""Migrations at start-up, safe when several replicas start together on one PostgreSQL."""

from __future__ import annotations

from django.core.management import call_command
from django.db import connection

# Any constant shared by every replica: pg_advisory_lock takes a bigint key.
MIGRATION_LOCK_KEY = 0x636F646572  # "coder"


def migrate() -> None:
    """`migrate`, quietly; on PostgreSQL under an advisory lock, so that replicas starting at once
    do not apply the same migration twice (SQLite serves one machine and serialises writers itself)."""
    if connection.vendor != "postgresql":
        call_command("migrate", interactive=False, verbosity=0)
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(%s)", [MIGRATION_LOCK_KEY])
        try:
            call_command("migrate", interactive=False, verbosity=0)
        finally:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [MIGRATION_LOCK_KEY])
