"""`manage.py seed_metrics_data`: a large deployment for the scrape benchmark, inserted in bulk.

Default: 20,000 users (two API keys each, a third used within the last hour), 20 templates with
two versions, 100,000 workspaces (five per user) and 300,000 builds (three per workspace), each
with its job. Latest builds mostly succeeded, the rest spread over every other status. Ids are made
here, so a workspace points at its latest build in the same transaction (the foreign keys are
checked at commit), and no signal fires.
"""

from __future__ import annotations

import random
import secrets
import uuid
from datetime import timedelta
from typing import Any

from django.contrib.auth.hashers import make_password
from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction
from django.utils import timezone
from tqdm import tqdm

from coderd.cli import OneLineCommand, whole_number

BATCH = 5000
# Latest-build outcomes of a settled deployment: mostly succeeded.
LATEST_STATUS_WEIGHTS = {
    "succeeded": 88,
    "failed": 5,
    "running": 2,
    "pending": 2,
    "canceled": 2,
    "canceling": 1,
}


_positive = whole_number(1)


class Command(OneLineCommand, BaseCommand):
    help = (
        "Insert a large, realistic data set for the metrics benchmarks (bench/bench_scrape.py) into "
        "the configured database (CODER_DATA_DIR's SQLite file, or CODER_PG_CONNECTION_URL), with a "
        "progress bar. Use a database of its own: the rows are added to whatever is there."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--users", type=_positive, default=20_000, help="users to add (default 20000)")
        parser.add_argument(
            "--workspaces",
            type=_positive,
            default=100_000,
            help="workspaces, spread over the users (default 100000)",
        )
        parser.add_argument(
            "--builds-per-workspace",
            type=_positive,
            default=3,
            help="builds of each workspace, each with its job (default 3)",
        )
        parser.add_argument(
            "--templates", type=_positive, default=20, help="templates, with two versions each (default 20)"
        )
        parser.add_argument(
            "--seed", type=int, default=1, help="random seed (same data every run; default 1)"
        )
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")

    def handle(self, *args: Any, **opts: Any) -> None:
        from coderd.users.models import APIKey, OrganizationMember, User
        from coderd.users.services import default_organization
        from coderd.workspaces.models import Template, TemplateVersion, Workspace, WorkspaceBuild
        from provisioner.models import ProvisionerJob

        rng = random.Random(opts["seed"])
        run = secrets.token_hex(3)  # several runs add up instead of colliding on names
        n_users, n_ws = opts["users"], opts["workspaces"]
        per_ws, n_templates = opts["builds_per_workspace"], opts["templates"]
        total = n_users * 4 + n_templates * 5 + n_ws + n_ws * per_ws * 2
        bar = tqdm(total=total, unit="row", disable=opts["no_progress"], desc="seeding")
        now = timezone.now()
        password = make_password("seeded-password")
        org = default_organization()

        def insert(model: Any, rows: list) -> None:
            for i in range(0, len(rows), BATCH):
                model.objects.bulk_create(rows[i : i + BATCH], batch_size=BATCH)
                bar.update(len(rows[i : i + BATCH]))

        def job(kind: str, status: str, created: Any, initiator: Any) -> Any:
            started = completed = canceled = None
            error = ""
            updated = created
            if status != "pending":
                started = created + timedelta(seconds=1)
                updated = started
            if status in ("succeeded", "failed", "canceled"):
                completed = updated = created + timedelta(seconds=rng.randint(5, 600))
            if status == "failed":
                error = "exit status 1"
            if status in ("canceled", "canceling"):
                canceled = created + timedelta(seconds=2)
            if status == "running":
                updated = now  # a live heartbeat
            return ProvisionerJob(
                id=uuid.uuid4(),
                organization=org,
                initiator_id=initiator,
                provisioner="echo",
                type=kind,
                created_at=created,
                updated_at=updated,
                started_at=started,
                completed_at=completed,
                canceled_at=canceled,
                error=error,
            )

        statuses = list(LATEST_STATUS_WEIGHTS)
        weights = list(LATEST_STATUS_WEIGHTS.values())
        with transaction.atomic():
            users = [
                User(
                    id=uuid.uuid4(),
                    email=f"seed-{run}-{i}@example.com",
                    username=f"seed-{run}-{i}",
                    password=password,
                    status=rng.choices(["active", "dormant", "suspended"], [90, 7, 3])[0],
                )
                for i in range(n_users)
            ]
            insert(User, users)
            insert(OrganizationMember, [OrganizationMember(organization=org, user=u) for u in users])
            keys = []
            for u in users:
                for _ in range(2):
                    keys.append(
                        APIKey(
                            id=secrets.token_hex(5),
                            hashed_secret=secrets.token_bytes(32),
                            user=u,
                            login_type="token",
                            lifetime_seconds=86400,
                            expires_at=now + timedelta(days=1),
                            last_used=now - timedelta(minutes=rng.randint(0, 180)),
                        )
                    )
            insert(APIKey, keys)

            creator = users[0].id
            template_jobs, versions, templates = [], [], []
            for t in range(n_templates):
                template = Template(
                    id=uuid.uuid4(), organization=org, name=f"tpl-{run}-{t}", provisioner="echo",
                    created_by_id=creator,
                )  # fmt: skip
                for v in (1, 2):
                    j = job("template_version_import", "succeeded", now - timedelta(days=30), creator)
                    template_jobs.append(j)
                    versions.append(
                        TemplateVersion(
                            id=uuid.uuid4(),
                            organization=org,
                            template_id=template.id,
                            name=f"v{v}",
                            provisioner="echo",
                            source={},
                            job_id=j.id,
                            created_by_id=creator,
                        )  # fmt: skip
                    )
                template.active_version_id = versions[-1].id
                templates.append(template)
            insert(ProvisionerJob, template_jobs)
            insert(Template, templates)
            insert(TemplateVersion, versions)

            workspaces, builds, jobs = [], [], []
            transitions = ["start", "stop"]
            for i in range(n_ws):
                owner = users[i % n_users]
                t = (i % n_users) % n_templates  # a user's workspaces share a template, as teams do
                ws = Workspace(
                    id=uuid.uuid4(), owner_id=owner.id, organization=org, template_id=templates[t].id,
                    name=f"ws-{i}",
                )  # fmt: skip
                for b in range(1, per_ws + 1):
                    latest = b == per_ws
                    status = rng.choices(statuses, weights)[0] if latest else "succeeded"
                    created = now - timedelta(hours=per_ws - b + 1, minutes=rng.randint(0, 59))
                    j = job("workspace_build", status, created, owner.id)
                    jobs.append(j)
                    build = WorkspaceBuild(
                        id=uuid.uuid4(), workspace_id=ws.id, build_number=b,
                        transition=rng.choice(transitions) if b > 1 else "start", initiator_id=owner.id,
                        template_version_id=versions[2 * t + (1 if latest else 0)].id, job_id=j.id,
                    )  # fmt: skip
                    builds.append(build)
                ws.latest_build_id = builds[-1].id
                workspaces.append(ws)
            insert(ProvisionerJob, jobs)
            insert(Workspace, workspaces)
            insert(WorkspaceBuild, builds)
        bar.close()
        self.stdout.write(
            f"seeded {n_users} users, {len(keys)} API keys, {n_templates} templates, {n_ws} workspaces, "
            f"{len(builds)} builds"
        )
