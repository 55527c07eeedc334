"""The shell provisioner: the template version holds a script per transition; it runs with /bin/sh.

Source: `{"start": "#!/bin/sh\n...", "stop": "...", "delete": "...", "timeout_seconds": 600}`.
The script runs in the workspace's own folder (DATA_DIR/workspaces/<workspace id>) inside bubblewrap
(provisioner/runners/sandbox.py: it cannot see the data folder, the database, the secret key or the
daemon's processes, and dies with the daemon), in its own process group, with CODER_WORKSPACE_*
variables and a small environment (never the daemon's, which holds the database URL and the daemon
key). Each output line (stdout and stderr) is a log line; a non-zero exit or the timeout fails the
job; a stop sends SIGTERM to the script, then SIGKILL to its whole group, which every way out of a
job does. While a script runs it holds a lock on its workspace folder, so a later build of the same
workspace waits for every process of an earlier one to end.

Where no sandbox can be made, a build fails with one error naming the fix, unless the operator set
CODER_PROVISIONER_SHELL_SANDBOX=false.
"""

from __future__ import annotations

import fcntl
import logging
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from django.conf import settings

from provisioner.execution import JobContext
from provisioner.runners import JobSpec, RunResult, sandbox

log = logging.getLogger(__name__)

SHELL = "/bin/sh"
DEFAULT_TIMEOUT_SECONDS = 600.0
# Between SIGTERM and SIGKILL: short, because a cancel must end a job within about a second.
KILL_GRACE_SECONDS = 0.5
# After the script exits, how long children it left behind may keep its output open.
ORPHAN_GRACE_SECONDS = 1.0
# Output is read in pieces of at most this size: a line longer than that is stored as several.
MAX_LINE_BYTES = 64 * 1024
# After the last SIGKILL, how long the runner waits for the group's processes to be gone.
GROUP_GONE_SECONDS = 2.0
# How often a build waiting for an earlier script of its workspace looks again.
LOCK_POLL_SECONDS = 0.1
TRANSITIONS = ("start", "stop", "delete")
_PASSED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "USER", "LOGNAME")
_EOF = object()


def workspace_dir(data_dir: Path, spec: JobSpec) -> Path:
    return Path(data_dir) / "workspaces" / (spec.workspace_id or spec.job_id)


def script_env(spec: JobSpec, workdir: Path) -> dict[str, str]:
    env = {k: os.environ[k] for k in _PASSED_ENV if k in os.environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.update(
        {
            "SHELL": SHELL,
            "PWD": str(workdir),
            "CODER_WORKSPACE_ID": spec.workspace_id,
            "CODER_WORKSPACE_NAME": spec.workspace_name,
            "CODER_WORKSPACE_OWNER": spec.workspace_owner,
            "CODER_WORKSPACE_OWNER_EMAIL": spec.workspace_owner_email,
            "CODER_WORKSPACE_OWNER_ID": spec.workspace_owner_id,
            "CODER_WORKSPACE_TRANSITION": spec.transition,
            "CODER_WORKSPACE_BUILD_ID": spec.build_id,
            "CODER_WORKSPACE_BUILD_NUMBER": str(spec.build_number),
            "CODER_TEMPLATE_ID": spec.template_id,
            "CODER_TEMPLATE_NAME": spec.template_name,
            "CODER_TEMPLATE_VERSION": spec.template_version,
            "CODER_TEMPLATE_VERSION_ID": spec.template_version_id,
            "CODER_JOB_ID": spec.job_id,
        }
    )
    return env


def timeout_of(source: dict[str, Any]) -> float | None:
    value = source.get("timeout_seconds", DEFAULT_TIMEOUT_SECONDS)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return None
    return float(value)


def _read_lines(stream: Any, out: queue.Queue) -> None:
    try:
        # A line longer than MAX_LINE_BYTES arrives as several: one endless line can't fill memory.
        for raw in iter(lambda: stream.readline(MAX_LINE_BYTES), b""):
            out.put(raw.decode("utf-8", errors="replace").rstrip("\r\n"))
    finally:
        out.put(_EOF)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_members(pgid: int) -> list[int]:
    """The live processes (not zombies) of a process group. No call lists a group's members: /proc
    is read (`pid (comm) state ppid pgrp ...`; comm may hold spaces and parentheses)."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            members.append(int(entry.name))
    return members


def _signal_group_but_leader(proc: subprocess.Popen, sig: int) -> None:
    """`sig` to every process of the group but its leader. Under bubblewrap the leader is bwrap's
    monitor: a SIGTERM would kill it, and --die-with-parent would then SIGKILL the script before
    its trap ran."""
    for pid in _group_members(proc.pid):
        if pid != proc.pid:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass


def _wait_group_gone(pgid: int, timeout: float) -> None:
    # A SIGKILLed process (and a PID namespace's members once its PID 1 died) is gone a moment
    # later, not at once: the build is over when they are.
    deadline = time.monotonic() + timeout
    while _group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.01)


class ShellProvisioner:
    name = "shell"

    def __init__(
        self,
        kill_grace: float = KILL_GRACE_SECONDS,
        *,
        sandboxed: bool | None = None,
        bwrap: str | None = None,
    ) -> None:
        """`sandboxed` and `bwrap` default to CODER_PROVISIONER_SHELL_SANDBOX and _BWRAP (read when
        a job runs)."""
        self.kill_grace = kill_grace
        self.sandboxed = sandboxed
        self.bwrap = bwrap
        # bwrap names whose trial sandbox worked, and the path found: tried once per daemon (each
        # daemon has its own runners). A failure is not remembered, so that installing bubblewrap
        # fixes the next build without a restart.
        self._probed: dict[str, str] = {}
        self._probe_lock = threading.Lock()

    def sandbox_path(self) -> str | None:
        """The bwrap to run scripts in; None when the operator turned the sandbox off. Raises
        sandbox.SandboxUnavailable (naming the fix) when none can be made here."""
        enabled = settings.PROVISIONER_SHELL_SANDBOX if self.sandboxed is None else self.sandboxed
        if not enabled:
            return None
        bwrap = self.bwrap or settings.PROVISIONER_SHELL_BWRAP
        with self._probe_lock:
            if bwrap not in self._probed:
                self._probed[bwrap] = sandbox.probe(bwrap)
            return self._probed[bwrap]

    def run(self, spec: JobSpec, ctx: JobContext) -> RunResult:
        source = spec.source if isinstance(spec.source, dict) else {}
        if not spec.is_build:
            return self._check_import(source, ctx)
        timeout = timeout_of(source)
        if timeout is None:
            return RunResult(error="shell: timeout_seconds must be a positive number")
        script = source.get(spec.transition)
        if not script:
            ctx.log(f"shell: no {spec.transition} script; nothing to do")
            return RunResult()
        if not isinstance(script, str):
            return RunResult(error=f"shell: the {spec.transition} script must be a string")
        try:
            bwrap = self.sandbox_path()
        except sandbox.SandboxUnavailable as exc:
            message = f"shell: cannot sandbox the script: {exc}"
            log.error("%s", message)
            ctx.log(message, level="error")
            return RunResult(error=message)
        workdir = workspace_dir(ctx.data_dir, spec)
        workdir.mkdir(parents=True, exist_ok=True)
        result = self._run_script(spec, ctx, script, workdir, timeout, bwrap)
        if result.ok and spec.transition == "delete":
            shutil.rmtree(workdir, ignore_errors=True)
        return result

    def _check_import(self, source: dict[str, Any], ctx: JobContext) -> RunResult:
        if timeout_of(source) is None:
            return RunResult(error="shell: timeout_seconds must be a positive number")
        found = []
        for transition in TRANSITIONS:
            script = source.get(transition)
            if script is None:
                continue
            if not isinstance(script, str):
                return RunResult(error=f"shell: the {transition} script must be a string")
            # `sh -n` parses without running: a syntax error fails the import, not the first build.
            check = subprocess.run(
                [SHELL, "-n", "-c", script], capture_output=True, text=True, timeout=10, check=False
            )
            if check.returncode != 0:
                detail = (check.stderr or "").strip().splitlines()
                ctx.log(f"shell: the {transition} script does not parse", level="error")
                for line in detail:
                    ctx.log(line, level="error")
                return RunResult(error=f"shell: the {transition} script does not parse")
            found.append(transition)
        ctx.log(f"shell: template version imported (scripts: {', '.join(found) or 'none'})")
        return RunResult()

    def _lock_workspace(self, workdir: Path, ctx: JobContext, deadline: float) -> tuple[int | None, str]:
        """An exclusive flock on the workspace folder, waited for while an earlier script of this
        workspace (or any process it started) still holds it: (fd, "") or (None, why not)."""
        fd = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd, ""
            except BlockingIOError:
                pass
            if not told:
                ctx.log("shell: an earlier script of this workspace is still running; waiting for it to end")
                told = True
            why = "stopped" if ctx.should_stop() else "timeout" if time.monotonic() > deadline else ""
            if why:
                os.close(fd)
                return None, why
            ctx.closing.wait(LOCK_POLL_SECONDS)

    def _run_script(
        self, spec: JobSpec, ctx: JobContext, script: str, workdir: Path, timeout: float, bwrap: str | None
    ) -> RunResult:
        deadline = time.monotonic() + timeout
        lock_fd, why = self._lock_workspace(workdir, ctx, deadline)
        if lock_fd is None:
            return self._result(spec, ctx, why, 0, timeout)
        try:
            return self._run_locked(spec, ctx, script, workdir, deadline, timeout, bwrap, lock_fd)
        finally:
            os.close(lock_fd)

    def _run_locked(
        self,
        spec: JobSpec,
        ctx: JobContext,
        script: str,
        workdir: Path,
        deadline: float,
        timeout: float,
        bwrap: str | None,
        lock_fd: int,
    ) -> RunResult:
        env = script_env(spec, workdir)
        argv = [SHELL, "-c", script]
        if bwrap:
            env["TMPDIR"] = "/tmp"  # the sandbox's own; the daemon's TMPDIR may be read-only there
            argv = sandbox.command(
                bwrap, argv, workdir, env, sandbox.hidden_folders(ctx.data_dir), sandbox.hidden_files()
            )
        # Popen is called from the thread that runs the job and lives until it ends: PDEATHSIG
        # (--die-with-parent) fires when the forking *thread* exits, not only the process.
        proc = subprocess.Popen(
            argv,
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so a stop reaches its children too
            pass_fds=(lock_fd,),  # the script and its children hold the workspace lock while they live
        )
        lines: queue.Queue = queue.Queue()
        reader = threading.Thread(target=_read_lines, args=(proc.stdout, lines), daemon=True)
        reader.start()
        eof, why = False, ""
        exited_at: float | None = None
        try:
            while True:
                try:
                    item = lines.get(timeout=0.05)
                except queue.Empty:
                    item = None
                if item is _EOF:
                    eof = True
                elif item is not None:
                    ctx.log(item)  # then the checks below: a chatty script must still be stoppable
                if proc.poll() is not None:
                    if eof:
                        break
                    # A background child still holds the output open: give it a moment, then stop.
                    exited_at = exited_at or time.monotonic()
                    if time.monotonic() - exited_at > ORPHAN_GRACE_SECONDS:
                        why = "orphans"
                        break
                if ctx.should_stop():
                    why = "stopped"
                    break
                if time.monotonic() > deadline:
                    why = "timeout"
                    break
        finally:
            # Every way out (an end, a stop, a timeout, an exception) kills what is left of the
            # group: a child that closed its output would otherwise outlive the job.
            if proc.poll() is None:
                self._stop(proc, sandboxed=bool(bwrap))
            _signal_group(proc, signal.SIGKILL)
            _wait_group_gone(proc.pid, GROUP_GONE_SECONDS)
            reader.join(timeout=1.0)
            while True:  # lines written before the stop still belong to the log
                try:
                    item = lines.get_nowait()
                except queue.Empty:
                    break
                if item is not _EOF:
                    ctx.log(item)
            if proc.stdout:
                proc.stdout.close()
            proc.wait()
        if why == "orphans":
            ctx.log("shell: stopped processes the script left running", level="warn")
        return self._result(spec, ctx, why, proc.returncode, timeout)

    def _result(self, spec: JobSpec, ctx: JobContext, why: str, code: int, timeout: float) -> RunResult:
        if why == "stopped":
            return RunResult(error="stopped")
        if why == "timeout":
            message = f"shell: the {spec.transition} script timed out after {timeout:g} seconds"
            ctx.log(message, level="error")
            return RunResult(error=message)
        if code != 0:
            if code < 0:
                message = f"shell: the {spec.transition} script was killed by signal {-code}"
            else:
                message = f"shell: the {spec.transition} script exited with status {code}"
            ctx.log(message, level="error")
            return RunResult(error=message)
        return RunResult()

    def _stop(self, proc: subprocess.Popen, sandboxed: bool) -> None:
        if sandboxed:
            _signal_group_but_leader(proc, signal.SIGTERM)
        else:
            _signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=self.kill_grace)
        except subprocess.TimeoutExpired:
            pass
        # The leader may have exited while children in its group linger: kill the group regardless.
        # Under bubblewrap, killing its monitor also ends the PID namespace (and processes in it
        # that left the group with setsid).
        _signal_group(proc, signal.SIGKILL)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def sandbox_notice(shell: object = None) -> tuple[int, str]:
    """What a starting daemon says of the shell sandbox, so that an operator hears of a missing
    bubblewrap at start-up rather than at the first shell build: (logging level, message). `shell`
    is the daemon's shell runner, whose trial is then remembered."""
    if not isinstance(shell, ShellProvisioner):
        shell = ShellProvisioner()
    try:
        path = shell.sandbox_path()
    except sandbox.SandboxUnavailable as exc:
        return logging.WARNING, f"shell builds will fail: no sandbox can be made: {exc}"
    if path is None:
        return logging.WARNING, (
            f"shell scripts run unconfined ({sandbox.SETTING}=false): a template admin's script can "
            "read and write the database and the secret key"
        )
    return logging.INFO, f"shell scripts run in bubblewrap ({path})"
