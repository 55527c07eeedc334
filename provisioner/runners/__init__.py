"""Provisioners: what actually runs a job. New ones plug in through `Provisioner` and `RUNNERS`.

A provisioner gets the job's `JobSpec` and a context (`provisioner.execution.JobContext`) through
which it logs and learns that it must stop. It returns a `RunResult`; it must poll
`ctx.should_stop()` (or sleep with `ctx.sleep`) at least every ~0.25 s so that a cancel or a
daemon close stops it within a second.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, Protocol

from provisioner.observer import BuildInfo

if TYPE_CHECKING:
    from provisioner.execution import JobContext

IMPORT = "template_version_import"
BUILD = "workspace_build"


@dataclass(frozen=True)
class JobSpec:
    """Everything a provisioner needs, so that an external daemon needs no database."""

    job_id: str
    type: str
    provisioner: str
    source: dict[str, Any] = field(default_factory=dict)
    transition: str = ""
    workspace_id: str = ""
    workspace_name: str = ""
    workspace_owner: str = ""
    workspace_owner_email: str = ""
    workspace_owner_id: str = ""
    build_id: str = ""
    build_number: int = 0
    template_id: str = ""
    template_name: str = ""
    template_version: str = ""
    template_version_id: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobSpec:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @property
    def is_build(self) -> bool:
        return self.type == BUILD

    def describe(self) -> str:
        """The job as an operator reads it in a log line: what it does, to what, for whom."""
        if self.is_build:
            what = (
                f"{self.transition or 'build'} of workspace {self.workspace_owner}/{self.workspace_name} "
                f"(build #{self.build_number}, template {self.template_name} {self.template_version}"
            )
        else:
            what = f"import of template version {self.template_version or '?'} ({self.provisioner}"
        return f"{what}, job {self.job_id})"

    def build_info(self) -> BuildInfo | None:
        if not self.is_build:
            return None
        return BuildInfo(
            workspace_owner=self.workspace_owner,
            workspace_name=self.workspace_name,
            template_name=self.template_name,
            template_version=self.template_version,
            transition=self.transition,
        )


@dataclass(frozen=True)
class RunResult:
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error


class Provisioner(Protocol):
    name: str

    def run(self, spec: JobSpec, ctx: JobContext) -> RunResult:
        """Run the job to its end, or until `ctx.should_stop()`; never raise for a job's own failure."""


STAGES = {
    "start": "Starting workspace",
    "stop": "Stopping workspace",
    "delete": "Deleting workspace",
    IMPORT: "Parsing template",
}


def stage_for(spec: JobSpec) -> str:
    return STAGES.get(spec.transition if spec.is_build else IMPORT, "Provisioning")


def default_runners() -> dict[str, Provisioner]:
    from provisioner.runners.echo import EchoProvisioner
    from provisioner.runners.shell import ShellProvisioner

    return {"echo": EchoProvisioner(), "shell": ShellProvisioner()}


KNOWN_PROVISIONERS = ("echo", "shell")
