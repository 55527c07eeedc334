"""Receivers: rows the database gauges count have changed, so the next scrape recounts.

Bookkeeping only (a stale mark); connected in MetricsConfig.ready().
"""

from __future__ import annotations

from metrics import runtime


def mark_stale(sender, **kwargs) -> None:
    runtime.mark_database_stale()


def connect() -> None:
    from django.db.models.signals import post_delete, post_save

    from coderd.users.models import User
    from coderd.workspaces.models import Workspace, WorkspaceBuild
    from provisioner.models import ProvisionerJob

    for model in (User, Workspace, WorkspaceBuild, ProvisionerJob):
        uid = f"metrics-stale-{model._meta.label_lower}"
        post_save.connect(mark_stale, sender=model, dispatch_uid=uid + "-save")
        post_delete.connect(mark_stale, sender=model, dispatch_uid=uid + "-delete")
