"""Reading a large audit trail: GET /api/v2/audit (a page, and filtered by action, user and object)
and the admin's trail pages (the list, filtered by user), as an owner.

    # SQLite in a fresh data folder, 200,000 rows
    .venv/bin/python bench/bench_audit.py
    # PostgreSQL (its own server on a free loopback port; stopped by PID at the end)
    .venv/bin/python bench/bench_audit.py --postgres [--rows 1000000]

Requests go through Django's handler in this process (django.test.Client): the time is the server's
work, with no network. Prints medians and 95th percentiles. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import analyze, database, load_average, machine, ms, setup_django


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--postgres", action="store_true", help="on a PostgreSQL server of its own")
    parser.add_argument("--rows", type=int, default=200_000, help="audit rows seeded (default 200,000)")
    parser.add_argument("--views", type=int, default=30, help="requests measured per target (default 30)")
    args = parser.parse_args()
    with database(postgres=args.postgres, fresh=True, prefix="bench_audit"):
        run(args)


def seed(rows: int) -> tuple[object, list[object]]:
    from django.utils import timezone

    from coderd.audit.models import Action, AuditLog, ResourceType
    from coderd.users.models import User
    from coderd.users.services import create_first_user

    owner, _org = create_first_user("owner@example.com", "owner", "a-long-passphrase")
    users = [owner] + [User.objects.create_user(f"user{i}@example.com", f"user{i}", None) for i in range(49)]
    rng = random.Random(7)
    now = timezone.now()
    actions, types = list(Action.values), list(ResourceType.values)
    batch: list[AuditLog] = []
    for i in range(rows):
        batch.append(
            AuditLog(
                time=now - timedelta(seconds=rows - i),
                user=rng.choice(users),
                ip="203.0.113.7",
                user_agent="coder/v2.18",
                resource_type=rng.choice(types),
                resource_id=uuid.uuid4(),
                resource_target=f"target-{rng.randrange(5000)}",
                action=rng.choice(actions),
                diff={"status": {"old": "active", "new": "suspended", "secret": False}},
                status_code=rng.choice((200, 200, 200, 201, 403)),
            )
        )
        if len(batch) == 10_000:
            AuditLog.objects.bulk_create(batch)
            batch = []
    AuditLog.objects.bulk_create(batch)
    analyze()
    return owner, users


def run(args: argparse.Namespace) -> None:
    setup_django()
    from django.db import connection
    from django.test import Client

    from coderd.audit.models import AuditLog
    from coderd.users.services import issue_api_key

    print(f"machine: {machine()}; load average {load_average()}")
    started = time.perf_counter()
    owner, users = seed(args.rows)
    print(
        f"{connection.vendor}: seeded {AuditLog.objects.count():,} rows in {time.perf_counter() - started:.1f} s"
    )
    token = issue_api_key(owner, "token")[1]
    some = AuditLog.objects.order_by("-time")[args.rows // 2]
    api = Client(HTTP_CODER_SESSION_TOKEN=token, HTTP_HOST="127.0.0.1")
    admin = Client(HTTP_HOST="127.0.0.1")
    admin.force_login(owner)
    targets = {
        "API: newest 100": (api, "/api/v2/audit"),
        "API: q=action:write": (api, "/api/v2/audit?q=action:write"),
        "API: q=username:user7": (api, "/api/v2/audit?q=username:user7"),
        "API: q=resource_id:<one>": (api, f"/api/v2/audit?q=resource_id:{some.resource_id}"),
        "API: offset 100,000": (api, "/api/v2/audit?offset=100000&limit=25"),
        "admin: the trail": (admin, "/admin/audit/auditlog/"),
        "admin: one user": (admin, f"/admin/audit/auditlog/?user__id__exact={users[7].pk}"),
        "admin: search a target": (admin, "/admin/audit/auditlog/?q=target-42"),
        "admin: failed, one type": (admin, "/admin/audit/auditlog/?outcome=failed&resource_type__exact=user"),
    }
    print(f"{'target':28} {'p50 ms':>8} {'p95 ms':>8}")
    for name, (client, url) in targets.items():
        assert client.get(url).status_code == 200, url  # warm, and correct
        samples = []
        for _ in range(args.views):
            t = time.perf_counter()
            client.get(url)
            samples.append(time.perf_counter() - t)
        print(f"{name:28} {ms(samples):8.1f} {ms(samples, 0.95):8.1f}")


if __name__ == "__main__":
    main()
