"""One rule for a workspace's status (Coder's `convertWorkspaceStatus`), in Python and in SQL."""

from __future__ import annotations

import pytest
from django.utils import timezone

from coderd.workspaces.models import Workspace
from coderd.workspaces.status import WorkspaceStatus, workspace_status, workspace_status_expression

CASES = [
    ("start", "pending", "pending"),
    ("start", "running", "starting"),
    ("stop", "running", "stopping"),
    ("delete", "running", "deleting"),
    ("start", "succeeded", "running"),
    ("stop", "succeeded", "stopped"),
    ("delete", "succeeded", "deleted"),
    ("stop", "canceling", "canceling"),
    ("start", "canceled", "canceled"),
    ("delete", "failed", "failed"),
    ("sideways", "succeeded", "failed"),
    ("start", "nonsense", "failed"),
]


@pytest.mark.parametrize(("transition", "job", "expected"), CASES)
def test_it_maps_transition_and_job_status_as_coder_does(transition: str, job: str, expected: str) -> None:
    assert workspace_status(transition, job) == WorkspaceStatus(expected)


def test_it_builds_a_sql_expression_the_orm_accepts(db) -> None:
    expr = workspace_status_expression(
        timezone.now(), transition="latest_build__transition", job_prefix="latest_build__job__"
    )
    assert list(Workspace.objects.annotate(state=expr).values_list("state", flat=True)) == []
