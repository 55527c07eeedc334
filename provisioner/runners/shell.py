"""The shell provisioner: the template version holds a script per transition; it runs with /bin/sh.

Source: `{"start": "#!/bin/sh\n...", "stop": "...", "delete": "...", "timeout_seconds": 600}`.
The script runs in the workspace's own folder (DATA_DIR/workspaces/<workspace id>) in its own
process group, with CODER_WORKSPACE_* variables and a small environment (never the daemon's, which
holds the database URL and the daemon key). Each output line (stdout and stderr) is a log line; a
non-zero exit or the timeout fails the job; a stop sends SIGTERM to the group, then SIGKILL.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from provisioner.execution import JobContext
from provisioner.runners import JobSpec, RunResult

SHELL = "/bin/sh"
DEFAULT_TIMEOUT_SECONDS = 600.0
# Between SIGTERM and SIGKILL: short, because a cancel must end a job within about a second.
KILL_GRACE_SECONDS = 0.5
# After the script exits, how long children it left behind may keep its output open.
ORPHAN_GRACE_SECONDS = 1.0
# Output is read in pieces of at most this size: a line longer than that is stored as several.
MAX_LINE_BYTES = 64 * 1024
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


class ShellProvisioner:
    name = "shell"

    def __init__(self, kill_grace: float = KILL_GRACE_SECONDS) -> None:
        self.kill_grace = kill_grace

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
        workdir = workspace_dir(ctx.data_dir, spec)
        workdir.mkdir(parents=True, exist_ok=True)
        result = self._run_script(spec, ctx, script, workdir, timeout)
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

    def _run_script(
        self, spec: JobSpec, ctx: JobContext, script: str, workdir: Path, timeout: float
    ) -> RunResult:
        proc = subprocess.Popen(
            [SHELL, "-c", script],
            cwd=workdir,
            env=script_env(spec, workdir),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so a stop reaches its children too
        )
        lines: queue.Queue = queue.Queue()
        reader = threading.Thread(target=_read_lines, args=(proc.stdout, lines), daemon=True)
        reader.start()
        deadline = time.monotonic() + timeout
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
            if proc.poll() is None or why:
                self._stop(proc)
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
        code = proc.wait()
        if why == "orphans":
            ctx.log("shell: stopped processes the script left running", level="warn")
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

    def _stop(self, proc: subprocess.Popen) -> None:
        _signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=self.kill_grace)
        except subprocess.TimeoutExpired:
            pass
        # The leader may have exited while children in its group linger: kill the group regardless.
        _signal_group(proc, signal.SIGKILL)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
