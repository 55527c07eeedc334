"""create_job and cancel_job: the job states a cancel moves between, and a cancel racing a claim."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from coderd.errors import Conflict
from provisioner.jobs import cancel_job, create_job
from provisioner.models import ProvisionerJob

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


@pytest.fixture
def job(owner, org):
    return create_job(org, owner, "echo", "template_version_import", {"source": {}})


def test_it_creates_a_pending_job(job, owner, org):
    assert job.get_status() == "pending"
    assert (job.organization_id, job.initiator_id, job.provisioner) == (org.id, owner.id, "echo")


def test_it_cancels_a_pending_job_at_once(job):
    job = cancel_job(job, T0)
    assert (job.canceled_at, job.completed_at, job.get_status(T0)) == (T0, T0, "canceled")


def test_it_marks_a_running_job_canceling_and_leaves_completion_to_its_daemon(job):
    ProvisionerJob.objects.filter(pk=job.pk).update(started_at=T0, updated_at=T0)
    job.refresh_from_db()
    later = T0 + timedelta(seconds=5)
    job = cancel_job(job, later)
    assert (job.canceled_at, job.completed_at, job.get_status(later)) == (later, None, "canceling")
    with pytest.raises(Conflict):
        cancel_job(job, later)


def test_it_refuses_to_cancel_a_finished_job(job):
    ProvisionerJob.objects.filter(pk=job.pk).update(started_at=T0, completed_at=T0)
    with pytest.raises(Conflict) as exc:
        cancel_job(job, T0 + timedelta(seconds=1))
    assert exc.value.status == 409


def test_it_cancels_a_job_claimed_after_it_was_read_as_running_not_as_pending(job):
    # The caller read the job while pending; a daemon claims it before the cancel lands.
    stale = ProvisionerJob.objects.get(pk=job.pk)
    ProvisionerJob.objects.filter(pk=job.pk, started_at__isnull=True).update(started_at=T0, updated_at=T0)
    canceled = cancel_job(stale, T0 + timedelta(seconds=1))
    assert canceled.started_at == T0
    assert canceled.completed_at is None  # the daemon still has to stop it
    assert canceled.get_status(T0 + timedelta(seconds=1)) == "canceling"


def test_it_leaves_a_canceled_pending_job_unclaimable(job):
    cancel_job(job, T0)
    # A daemon's conditional claim (pending = not started, not canceled) now matches nothing.
    assert ProvisionerJob.objects.pending().filter(pk=job.pk).count() == 0
