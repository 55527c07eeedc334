"""Two requests at once: exactly one wins, the other gets 409 (real threads, committed data)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection

from coderd.errors import Conflict
from coderd.users.services import create_first_user
from coderd.workspaces.models import Workspace, WorkspaceBuild
from coderd.workspaces.services import create_build, create_workspace
from tests.fixtures import PASSWORD, finish_job, make_echo_template

pytestmark = pytest.mark.django_db(transaction=True)


def race(*calls: Callable[[], Any]) -> list[Any]:
    """Run the calls in threads released together; each result is a value or the exception."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(i: int, call: Callable[[], Any]) -> None:
        try:
            barrier.wait(timeout=10)
            results[i] = call()
        except Exception as exc:  # the caller inspects it
            results[i] = exc
        finally:
            connection.close()  # each thread has its own connection

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return results


def test_it_starts_one_build_when_two_race(owner):
    template = make_echo_template(owner)
    ws = create_workspace(owner, owner, template, "dev")
    finish_job(ws.latest_build.job)
    results = race(
        *(lambda t=t: create_build(owner, Workspace.objects.get(pk=ws.pk), t) for t in ("stop", "delete"))
    )
    assert sorted(type(r).__name__ for r in results) == ["Conflict", "WorkspaceBuild"], results
    assert WorkspaceBuild.objects.filter(workspace=ws).count() == 2


def test_it_creates_one_workspace_when_two_race_for_a_name(owner):
    template = make_echo_template(owner)
    results = race(*(lambda n=n: create_workspace(owner, owner, template, n) for n in ("dev", "DEV")))
    assert sorted(type(r).__name__ for r in results) == ["Conflict", "Workspace"], results
    assert Workspace.objects.filter(owner=owner).count() == 1


def test_it_creates_one_first_user_when_two_race(db):
    results = race(
        lambda: create_first_user("a@example.com", "ada", PASSWORD),
        lambda: create_first_user("b@example.com", "bob", PASSWORD),
    )
    assert sum(isinstance(r, Conflict) for r in results) == 1, results
    from coderd.users.models import User

    assert User.objects.count() == 1
