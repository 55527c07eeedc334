"""What the benches share: where their database is, Django set up on it, seeded, and how figures print.

`database(postgres=...)` gives a bench its own PostgreSQL server (started by tests/services.py on a
free loopback port, stopped by PID at the end) or, when asked, a fresh SQLite data folder; otherwise
the usual CODER_DATA_DIR / CODER_PG_CONNECTION_URL. `setup_django(seed=...)` then migrates and, when
asked, seeds the large deployment (`manage.py seed_metrics_data`). tests/services.py does not import
pytest, so these need only a venv made with requirements.txt.
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


@contextlib.contextmanager
def database(*, postgres: bool, fresh: bool, prefix: str = "bench") -> Iterator[None]:
    """PostgreSQL of its own (`postgres`), else a fresh SQLite data folder (`fresh`), else the
    environment's database; set in the environment before Django reads its settings."""
    pg = None
    if postgres:
        from tests.services import Postgres

        pg = Postgres.start()
        os.environ["CODER_PG_CONNECTION_URL"] = pg.create_database(prefix)
    elif fresh:
        os.environ["CODER_DATA_DIR"] = tempfile.mkdtemp(prefix=f"coderd-{prefix}-")
    try:
        yield
    finally:
        if pg is not None:
            pg.stop()


def setup_django(*, seed: bool = False) -> None:
    """Django set up and migrated; with `seed`, the large deployment seeded (and analyzed on PostgreSQL)."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "coderd.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    if seed:
        started = time.perf_counter()
        call_command("seed_metrics_data")
        print(f"seeded in {time.perf_counter() - started:.1f} s")
        analyze()


def analyze() -> None:
    """Fresh planner statistics after a bulk load (PostgreSQL; SQLite plans without them)."""
    from django.db import connection

    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")


def ms(samples: list[float], q: float = 0.5) -> float:
    """The `q` quantile of `samples` (seconds), in milliseconds."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def machine() -> str:
    return (
        f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())
