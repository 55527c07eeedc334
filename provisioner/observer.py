"""What a daemon tells the metrics about the jobs it runs.

The daemon is given an observer (in-process daemons: the server's metrics; an external daemon: its
own registry; tests: a fresh one) and calls it at these points. The provisioner app knows nothing
else about metrics; `metrics/` implements this protocol.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class BuildInfo:
    """Labels of a workspace build job (None for a template version import)."""

    workspace_owner: str
    workspace_name: str
    template_name: str
    template_version: str
    transition: str  # start, stop or delete


class JobObserver(Protocol):
    def running(self, provisioner: str) -> AbstractContextManager[None]:
        """Entered when the daemon starts running a job, left (in a finally) when it stops."""

    def job_finished(
        self, provisioner: str, succeeded: bool, seconds: float, build: BuildInfo | None
    ) -> None:
        """Called once when the outcome is recorded; cancelled, timed-out and crashed jobs fail."""

    def job_acquired(
        self, provisioner: str, job_type: str, transition: str, build_reason: str, waited: float
    ) -> None:
        """Called where a job is claimed (in coderd, for its own daemons and external ones alike):
        `waited` seconds from the job's creation. Transition and reason are "" for a template import."""

    def daemon_started(self) -> None:
        """This process's own daemon started (an external daemon reports to its own process)."""

    def daemon_stopped(self) -> None: ...


class NullObserver:
    def running(self, provisioner: str) -> AbstractContextManager[None]:
        return nullcontext()

    def job_finished(
        self, provisioner: str, succeeded: bool, seconds: float, build: BuildInfo | None
    ) -> None:
        pass

    def job_acquired(
        self, provisioner: str, job_type: str, transition: str, build_reason: str, waited: float
    ) -> None:
        pass

    def daemon_started(self) -> None:
        pass

    def daemon_stopped(self) -> None:
        pass
