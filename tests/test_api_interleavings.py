"""Requests that interleave: each test replays one losing order of two concurrent requests, found by
a race audit on PostgreSQL with two replicas, with the first request's view of the world taken
before the second one commits (a stale object), so the order is certain without threads."""

from __future__ import annotations

import pytest
from django.db import IntegrityError
from django.utils import timezone

from coderd.errors import BadRequest, Conflict, NotFound
from coderd.users import services as users
from coderd.users.models import User
from coderd.workspaces import services as workspaces
from coderd.workspaces.models import Template, Workspace
from provisioner.models import ProvisionerJob
from tests.fixtures import PASSWORD, finish_job, make_echo_template, make_workspace

pytestmark = pytest.mark.django_db


@pytest.fixture
def template(owner):
    return make_echo_template(owner, name="tpl")


def test_a_start_taken_before_a_delete_is_recorded_keeps_the_workspace(owner, template):
    ws = make_workspace(owner, template, name="w")
    finish_job(ws.latest_build.job)
    delete = workspaces.create_build(owner, ws, "delete")
    # The delete's job has ended (its row says so) but its outcome hooks have not run yet...
    now = timezone.now()
    ProvisionerJob.objects.filter(pk=delete.job_id).update(started_at=now, completed_at=now)
    # ...when a start comes in: the workspace is not deleted yet, and no build is in flight.
    start = workspaces.create_build(owner, Workspace.objects.get(pk=ws.pk), "start")
    workspaces.on_build_job_finished(ProvisionerJob.objects.get(pk=delete.job_id), now)
    ws.refresh_from_db()
    assert ws.latest_build_id == start.pk
    assert ws.deleted is False  # the start is the latest build: the workspace lives on


def test_a_delete_that_is_still_the_latest_build_deletes(owner, template):
    ws = make_workspace(owner, template, name="w")
    finish_job(ws.latest_build.job)
    finish_job(workspaces.create_build(owner, ws, "delete").job)
    ws.refresh_from_db()
    assert ws.deleted is True


def test_a_workspace_is_not_created_on_a_template_deleted_meanwhile(owner, template):
    seen = Template.objects.get(pk=template.pk)  # the create request read it: not deleted
    workspaces.delete_template(owner, template)  # another request deletes it (no workspaces yet)
    with pytest.raises(NotFound):
        workspaces.create_workspace(owner, owner, seen, "late")
    assert not Workspace.objects.filter(template=template, deleted=False).exists()


def test_a_workspace_is_not_created_for_an_owner_deleted_or_suspended_meanwhile(owner, template):
    member = users.create_user(owner, "m@example.com", "member", PASSWORD)
    seen = User.objects.get(pk=member.pk)  # authenticated before the change below
    users.suspend_user(owner, member)
    with pytest.raises(BadRequest, match="suspended"):
        workspaces.create_workspace(seen, seen, template, "late")
    users.delete_user(owner, member)
    with pytest.raises(NotFound):
        workspaces.create_workspace(owner, seen, template, "later")
    assert not Workspace.objects.filter(owner=member).exists()


def test_emails_are_unique_whatever_their_case_even_past_the_check(owner, monkeypatch):
    users.create_user(owner, "Ada@example.com", "ada", PASSWORD)
    # The other request's check ran before this one committed: only the database can refuse.
    real_exists = type(User.objects.all()).exists
    monkeypatch.setattr(type(User.objects.all()), "exists", lambda self: False)
    with pytest.raises((Conflict, IntegrityError)):
        users.create_user(owner, "ada@EXAMPLE.com", "ada2", PASSWORD)
    monkeypatch.setattr(type(User.objects.all()), "exists", real_exists)
    assert User.objects.filter(email__iexact="ada@example.com").count() == 1
