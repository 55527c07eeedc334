"""Receivers that only tell others something changed: idle daemons to look for work, websocket
followers to look again. Connected in ProvisionerConfig.ready()."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models.signals import post_save
from django.dispatch import receiver

from coderd.workspaces.services import workspace_changed
from provisioner import notify
from provisioner.jobs import job_created
from provisioner.models import ProvisionerJob


@receiver(job_created, dispatch_uid="provisioner.wake_daemons")
def wake_daemons(sender: Any, **kwargs: Any) -> None:
    from provisioner.daemon import wake_all

    wake_all()


@receiver(post_save, sender=ProvisionerJob, dispatch_uid="provisioner.job_saved")
def job_saved(sender: Any, instance: ProvisionerJob, created: bool, **kwargs: Any) -> None:
    if not created:
        job_id = instance.pk
        transaction.on_commit(lambda: notify.job_changed(job_id))


@receiver(workspace_changed, dispatch_uid="provisioner.workspace_changed")
def workspace_changed_receiver(sender: Any, workspace_id: Any, **kwargs: Any) -> None:
    # Sent by the workspace services after commit: tell watch-ws followers in every process.
    notify.workspace_changed(workspace_id)
