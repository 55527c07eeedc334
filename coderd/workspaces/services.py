"""Templates, versions, workspaces and builds: the only writers of their state.

The API, the admin actions and the provisioner daemons call these functions; each checks the actor's
roles and raises coderd.errors. A build's job carries in `input` everything its provisioner needs, so a
daemon (possibly on another machine) never reads these tables:

    {"transition", "provisioner", "source", "workspace_build_id", "workspace_id", "workspace_name",
     "workspace_owner", "workspace_owner_id", "template_id", "template_name",
     "template_version_id", "template_version_name", "build_number"}

A template version's import job carries {"template_version_id", "template_version_name",
"provisioner", "source"}.
"""

from __future__ import annotations

import re
import secrets
import uuid
from datetime import datetime
from typing import Any

import pydantic
from django.db import IntegrityError, transaction
from django.dispatch import Signal
from django.utils import timezone

from coderd.audit.services import Action, audited
from coderd.errors import BadRequest, Conflict, Forbidden, NotFound, field_error
from coderd.users import auth
from coderd.users.models import Organization, User
from coderd.users.services import validate_name
from coderd.workspaces.models import Template, TemplateVersion, Transition, Workspace, WorkspaceBuild
from provisioner.jobs import cancel_job, create_job
from provisioner.models import JobStatus, JobType, Provisioner, ProvisionerJob

# Sent after commit with `workspace_id` whenever a workspace or its latest build changes, for the
# watch-ws consumer. Receivers do bookkeeping only.
workspace_changed = Signal()

ACTIVE_JOB_STATUSES = {JobStatus.PENDING, JobStatus.RUNNING, JobStatus.CANCELING}
ECHO_MAX_DURATION_MS = 24 * 3600 * 1000
SHELL_MAX_TIMEOUT_SECONDS = 24 * 3600


# --- sources ---------------------------------------------------------------------------------------


class _Strict(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", strict=True)


class EchoTransition(_Strict):
    duration_ms: int = pydantic.Field(0, ge=0, le=ECHO_MAX_DURATION_MS)
    logs: list[str] = []
    fail: bool = False


class EchoSource(_Strict):
    start: EchoTransition | None = None
    stop: EchoTransition | None = None
    delete: EchoTransition | None = None


class ShellSource(_Strict):
    start: str = ""
    stop: str = ""
    delete: str = ""
    timeout_seconds: int = pydantic.Field(600, gt=0, le=SHELL_MAX_TIMEOUT_SECONDS)


SOURCE_MODELS: dict[str, type[_Strict]] = {Provisioner.ECHO: EchoSource, Provisioner.SHELL: ShellSource}


def validate_source(provisioner: str, source: Any) -> dict[str, Any]:
    """The source in its normal form, or a 400 naming each bad field (`source.start.duration_ms`)."""
    model = SOURCE_MODELS.get(provisioner)
    if model is None:
        raise field_error("provisioner", f"Must be one of: {', '.join(SOURCE_MODELS)}.")
    try:
        parsed = model.model_validate(source)
    except pydantic.ValidationError as exc:
        raise BadRequest(
            "Invalid template version source.",
            validations=[
                {"field": ".".join(["source", *map(str, e["loc"])]), "detail": e["msg"]} for e in exc.errors()
            ],
        ) from None
    return parsed.model_dump(exclude_none=True)


# --- templates and versions --------------------------------------------------------------------------


# As Coder's template version names: letters and digits, single separators between them.
VERSION_NAME_RE = re.compile(r"^[a-zA-Z0-9]+(?:[_.-][a-zA-Z0-9]+)*$")


def _require_template_admin(actor: User) -> None:
    if not auth.can_manage_templates(actor):
        raise Forbidden("Only owners and template admins can manage templates.")


@audited(Action.CREATE, result=True, status=201)
def create_template_version(
    actor: User,
    organization: Organization,
    provisioner: str,
    source: Any,
    name: str | None = None,
    template: Template | None = None,
    message: str = "",
) -> TemplateVersion:
    """A version and its pending `template_version_import` job, in one transaction."""
    _require_template_admin(actor)
    source = validate_source(provisioner, source)
    name = name or f"v-{secrets.token_hex(4)}"
    if len(name) > 64 or not VERSION_NAME_RE.match(name):
        raise field_error(
            "name", "Must be 1 to 64 letters or digits, with single '-', '_' or '.' between them."
        )
    if template is not None:
        if template.organization_id != organization.pk or template.deleted:
            raise NotFound("Template not found.")
        if template.versions.filter(name__iexact=name).exists():
            raise Conflict(f"Template version {name!r} already exists for this template.")
    try:
        return _new_template_version(actor, organization, provisioner, source, name, template, message)
    except IntegrityError:
        # Another request took the name between the check above and the insert.
        raise Conflict(f"Template version {name!r} already exists for this template.") from None


def _new_template_version(
    actor: User,
    organization: Organization,
    provisioner: str,
    source: Any,
    name: str,
    template: Template | None,
    message: str,
) -> TemplateVersion:
    version_id = uuid.uuid4()
    with transaction.atomic():
        job = create_job(
            organization,
            actor,
            provisioner,
            JobType.TEMPLATE_VERSION_IMPORT,
            {
                "template_version_id": str(version_id),
                "template_version_name": name,
                "provisioner": provisioner,
                "source": source,
            },
        )
        return TemplateVersion.objects.create(
            id=version_id,
            organization=organization,
            template=template,
            name=name,
            message=message,
            provisioner=provisioner,
            source=source,
            job=job,
            created_by=actor,
        )


def _check_version_usable(version: TemplateVersion, field: str) -> None:
    status = version.job.get_status()
    if status in (JobStatus.FAILED, JobStatus.CANCELED, JobStatus.CANCELING):
        raise field_error(field, f"The version's import job is {status}.")


@audited(Action.CREATE, result=True, status=201)
def create_template(actor: User, organization: Organization, name: str, version: TemplateVersion) -> Template:
    _require_template_admin(actor)
    validate_name("name", name)
    if version.organization_id != organization.pk:
        raise NotFound("Template version not found.")
    if version.template_id is not None:
        raise Conflict("That template version already belongs to a template.")
    # A new template may start on a version still importing (its first builds wait in the queue).
    _check_version_usable(version, "template_version_id")
    duplicate = Conflict(f"Template name {name!r} is already in use.")
    if Template.objects.filter(organization=organization, name__iexact=name, deleted=False).exists():
        raise duplicate
    try:
        with transaction.atomic():
            template = Template.objects.create(
                organization=organization,
                name=name,
                provisioner=version.provisioner,
                active_version=version,
                created_by=actor,
            )
            # Conditional, so two templates racing for one version cannot both take it.
            if not TemplateVersion.objects.filter(pk=version.pk, template__isnull=True).update(
                template=template
            ):
                raise Conflict("That template version already belongs to a template.")
    except IntegrityError:
        raise duplicate from None
    version.template = template
    return template


@audited(Action.WRITE, target="template")
def set_active_version(actor: User, template: Template, version: TemplateVersion) -> Template:
    _require_template_admin(actor)
    if version.template_id != template.pk:
        raise field_error("id", "The template version does not belong to this template.")
    # Promotion replaces a working version: only one whose import has succeeded may take its place.
    status = version.job.get_status()
    if status != JobStatus.SUCCEEDED:
        raise field_error(
            "id", f"Only a version whose import succeeded can be made active; this one's is {status}."
        )
    Template.objects.filter(pk=template.pk).update(
        active_version=version, provisioner=version.provisioner, updated_at=timezone.now()
    )
    template.refresh_from_db()
    return template


@audited(Action.WRITE, target="version")
def cancel_template_version(
    actor: User, version: TemplateVersion, now: datetime | None = None
) -> ProvisionerJob:
    _require_template_admin(actor)
    return cancel_job(version.job, now)


@audited(Action.DELETE, target="template")
def delete_template(actor: User, template: Template) -> None:
    _require_template_admin(actor)
    # Under the template's row lock, which create_workspace takes too: a workspace being created
    # from it is either committed and seen here, or sees the template deleted.
    with transaction.atomic():
        Template.objects.select_for_update().filter(pk=template.pk).first()
        if template.workspaces.filter(deleted=False).exists():
            raise Conflict("All workspaces must be deleted before a template can be removed.")
        Template.objects.filter(pk=template.pk).update(deleted=True, updated_at=timezone.now())
    template.deleted = True


# --- workspaces and builds ------------------------------------------------------------------------


def _build_action(arguments: dict[str, Any]) -> str:
    # Coder audits a build by its transition: start, stop or delete.
    transition = arguments.get("transition")
    return transition if transition in Transition.values else Action.WRITE


def _notify(workspace_id: uuid.UUID) -> None:
    transaction.on_commit(lambda: workspace_changed.send(sender=Workspace, workspace_id=workspace_id))


def _check_can_change(actor: User, workspace: Workspace) -> None:
    if auth.can_change_workspace(actor, workspace):
        return
    if auth.can_read_workspace(actor, workspace):
        raise Forbidden("You may not change another user's workspace.")
    raise NotFound("Workspace not found.")


@audited(Action.CREATE, result=True, status=201)
def create_workspace(actor: User, owner: User, template: Template, name: str) -> Workspace:
    """The workspace and its first `start` build, in one transaction."""
    if owner.pk != actor.pk and not auth.is_owner(actor):
        raise Forbidden("You may only create workspaces for yourself.")
    if not owner.is_active:
        raise BadRequest("The workspace owner is suspended.")
    validate_name("name", name)
    if template.deleted:
        raise NotFound("Template not found.")
    if template.active_version_id is None:
        raise BadRequest("The template has no active version.")
    duplicate = Conflict(f"Workspace {name!r} already exists for {owner.username}.")
    if Workspace.objects.filter(owner=owner, name__iexact=name, deleted=False).exists():
        raise duplicate
    try:
        with transaction.atomic():
            _lock_owner_and_template(owner, template)
            workspace = Workspace.objects.create(
                owner=owner, organization_id=template.organization_id, template=template, name=name
            )
            _new_build(actor, workspace, Transition.START)
    except IntegrityError:
        raise duplicate from None
    return workspace


def _lock_owner_and_template(owner: User, template: Template) -> None:
    """Re-read the owner and the template under row locks (owner first, always), so that a suspend
    or delete of the owner, or a delete of the template, either lands before this workspace (and
    is seen) or waits for it to commit (and then sees it). SQLite's IMMEDIATE transactions
    serialise the same way."""
    locked_owner = User.objects.select_for_update().filter(pk=owner.pk).first()
    if locked_owner is None or locked_owner.deleted:
        raise NotFound("User not found.")
    if not locked_owner.is_active:
        raise BadRequest("The workspace owner is suspended.")
    locked_template = Template.objects.select_for_update().filter(pk=template.pk).first()
    if locked_template is None or locked_template.deleted:
        raise NotFound("Template not found.")


@audited(_build_action, target="workspace", result=True, status=201)
def create_build(actor: User, workspace: Workspace, transition: str) -> WorkspaceBuild:
    """The next build (number + 1) on the template's active version. 409 while one is in flight."""
    _check_can_change(actor, workspace)
    if transition not in Transition.values:
        raise field_error("transition", f"Must be one of: {', '.join(Transition.values)}.")
    if workspace.deleted:
        raise Conflict("The workspace is deleted.")
    try:
        with transaction.atomic():
            return _new_build(actor, workspace, transition)
    except IntegrityError:
        # Two builds raced for the same number: the other one won.
        raise Conflict("Another build was started at the same time.") from None


def _new_build(actor: User, workspace: Workspace, transition: str) -> WorkspaceBuild:
    # Re-read under the transaction (a row lock on PostgreSQL; SQLite's IMMEDIATE mode serialises).
    # Only the workspace row is locked (`of`), not its owner's or template's, which other builds share.
    ws = (
        Workspace.objects.select_for_update(of=("self",))
        .select_related("owner", "template", "organization")
        .get(pk=workspace.pk)
    )
    if ws.deleted:
        raise Conflict("The workspace is deleted.")
    latest = (
        WorkspaceBuild.objects.select_related("job").filter(pk=ws.latest_build_id).first()
        if ws.latest_build_id
        else None
    )
    if latest is not None and latest.job.get_status() in ACTIVE_JOB_STATUSES:
        raise Conflict(
            "A build is already in progress for this workspace.",
            detail=f"Build #{latest.build_number} ({latest.transition}) is {latest.job.get_status()}.",
        )
    template = ws.template
    version = TemplateVersion.objects.get(pk=template.active_version_id)
    build_id = uuid.uuid4()
    build_number = (latest.build_number if latest else 0) + 1
    job = create_job(
        ws.organization,
        actor,
        version.provisioner,
        JobType.WORKSPACE_BUILD,
        {
            "transition": transition,
            "provisioner": version.provisioner,
            "source": version.source,
            "workspace_build_id": str(build_id),
            "build_number": build_number,
            "workspace_id": str(ws.pk),
            "workspace_name": ws.name,
            "workspace_owner": ws.owner.username,
            "workspace_owner_id": str(ws.owner_id),
            "template_id": str(template.pk),
            "template_name": template.name,
            "template_version_id": str(version.pk),
            "template_version_name": version.name,
        },
    )
    build = WorkspaceBuild.objects.create(
        id=build_id,
        workspace=ws,
        build_number=build_number,
        transition=transition,
        initiator=actor,
        template_version=version,
        job=job,
    )
    Workspace.objects.filter(pk=ws.pk).update(latest_build=build, updated_at=timezone.now())
    workspace.latest_build = build
    _notify(ws.pk)
    return build


@audited(Action.WRITE, target="build")
def cancel_build(actor: User, build: WorkspaceBuild, now: datetime | None = None) -> WorkspaceBuild:
    _check_can_change(actor, build.workspace)
    now = now or timezone.now()
    with transaction.atomic():
        job = cancel_job(build.job, now)
        build.job = job
        if job.completed_at is not None:  # a pending job is canceled outright
            on_build_job_finished(job, now)
        else:
            _notify(build.workspace_id)
    return build


def on_build_job_finished(job: ProvisionerJob, now: datetime | None = None) -> None:
    """Called by whoever records a build job's outcome (a daemon, the reaper, a cancel).

    A succeeded `delete` soft-deletes the workspace (its name becomes free); every outcome bumps
    the workspace's updated_at for watchers.
    """
    now = now or timezone.now()
    job = ProvisionerJob.objects.get(pk=job.pk)  # the outcome as stored, not the caller's copy
    build = WorkspaceBuild.objects.filter(job_id=job.pk).only("id", "workspace_id", "transition").first()
    if build is None:
        return
    Workspace.objects.filter(pk=build.workspace_id).update(updated_at=now)
    if build.transition == Transition.DELETE and job.get_status(now) == JobStatus.SUCCEEDED:
        # Only while this delete is still the latest build: a start taken between the job's outcome
        # and this line (the workspace looked alive then) keeps the workspace alive.
        Workspace.objects.filter(pk=build.workspace_id, latest_build_id=build.pk).update(deleted=True)
    _notify(build.workspace_id)
