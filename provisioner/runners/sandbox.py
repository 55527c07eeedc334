"""bubblewrap around shell scripts: what a template's script may see of this machine.

A template admin writes the scripts, but must not become owner through one: the script gets a
read-only view of the file system with coderd's data folder (database, secret key, other
workspaces) replaced by an empty tmpfs and only its own workspace folder bound back read-write,
its own PID namespace (the server's and daemon's processes and their /proc/<pid>/environ are not
there to read or signal), no capabilities, a private /tmp and IPC namespace, and the clean
environment the runner builds. `--die-with-parent` (PR_SET_PDEATHSIG on bwrap's monitor, its PID 1
and the script) and the PID namespace (when its PID 1 dies, the kernel kills everything in it) mean
that nothing outlives the daemon, however it ends.

bubblewrap does the confining (the sandbox Flatpak uses); this module only writes its command line
and says, once per daemon, whether it can run here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path

from django.conf import settings

SETTING = "CODER_PROVISIONER_SHELL_SANDBOX"
FIX = (
    "install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap) on the daemon's machine and allow "
    "unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1; on Ubuntu 24.04 also "
    f"kernel.apparmor_restrict_unprivileged_userns=0), or set {SETTING}=false to run shell scripts "
    "unconfined (see docs/provisioners.md)"
)
PROBE_TIMEOUT = 10.0
# libpq's socket folders when a PostgreSQL HOST is empty (Debian's, then the compiled-in default).
_PG_SOCKET_DIRS = ("/var/run/postgresql", "/tmp")


class SandboxUnavailable(Exception):
    """No sandbox can be made on this machine; the message names the fix."""


def _base_flags() -> list[str]:
    # No --new-session: the runner already starts bwrap in a new session (no controlling terminal,
    # so no TIOCSTI into one), and the script must stay in that process group for a cancel's
    # SIGTERM to reach it and the final SIGKILL to reach everything it started.
    flags = [
        "--ro-bind", "/", "/",
        "--dev", "/dev",
        "--proc", "/proc",
        "--tmpfs", "/tmp",
        "--unshare-pid",
        "--unshare-ipc",
        "--die-with-parent",
        "--clearenv",
    ]  # fmt: skip
    if os.geteuid() == 0:
        # As root, bwrap keeps every capability unless told: CAP_SYS_ADMIN could unmount the tmpfs
        # over the data folder, remount / read-write or mknod a disk. Without a user namespace that
        # is the only thing between a root script and the host.
        flags += ["--cap-drop", "ALL"]
    return flags


def locate(bwrap: str) -> str:
    """The bwrap executable to use (a name is looked up on PATH); SandboxUnavailable if none."""
    found = shutil.which(bwrap)
    if not found:
        raise SandboxUnavailable(f"bubblewrap ({bwrap!r}) was not found: {FIX}")
    return found


def probe(bwrap: str) -> str:
    """Run a trial sandbox with the flags scripts get; the bwrap path, or SandboxUnavailable."""
    path = locate(bwrap)
    try:
        trial = subprocess.run(
            [path, *_base_flags(), "/bin/sh", "-c", "exit 0"],
            env={},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise SandboxUnavailable(f"bubblewrap ({path}) cannot run: {exc}; {FIX}") from None
    if trial.returncode != 0:
        detail = " ".join((trial.stderr or "").split()) or f"exit status {trial.returncode}"
        raise SandboxUnavailable(f"bubblewrap ({path}) cannot make a sandbox here ({detail}): {FIX}")
    return path


def _under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def hidden_folders(
    data_dir: Path,
    databases: Mapping[str, Mapping[str, object]] | None = None,
    redis_url: str | None = None,
) -> list[str]:
    """Folders replaced by an empty tmpfs: where the database, the secret key and the workspaces are.

    CODER_DATA_DIR may be anywhere (and a daemon's data folder may differ from the server's); a
    SQLite file or a PostgreSQL/Redis Unix socket may live outside it (a socket with peer
    authentication would let the daemon's user in without a password). `databases` and
    `redis_url` default to the settings'."""
    candidates: list[str] = [str(data_dir), str(settings.DATA_DIR)]
    databases = settings.DATABASES if databases is None else databases
    for db in databases.values():
        engine = str(db.get("ENGINE", ""))
        if engine.endswith("sqlite3"):
            candidates.append(str(Path(str(db.get("NAME", ""))).parent))
        elif engine.endswith("postgresql"):
            host = str(db.get("HOST") or "")
            if host.startswith("/"):
                candidates.append(host)
            elif not host:
                candidates += _PG_SOCKET_DIRS
    redis = str((getattr(settings, "REDIS_URL", "") if redis_url is None else redis_url) or "")
    if redis.startswith("unix://"):
        candidates.append(str(Path(redis[len("unix://") :].split("?")[0]).parent))
    folders: list[str] = []
    for candidate in candidates:
        real = os.path.realpath(candidate)
        if real == "/" or not os.path.isdir(real) or _under(real, "/tmp"):
            continue  # "/" cannot be hidden; /tmp is already private
        folders.append(real)
    # An ancestor's tmpfs already hides what is under it.
    folders = sorted(set(folders), key=len)
    return [f for i, f in enumerate(folders) if not any(_under(f, g) for g in folders[:i])]


def hidden_files() -> list[str]:
    """Database files whose folder cannot be hidden (a SQLite file right under /): /dev/null over them."""
    files = []
    for db in settings.DATABASES.values():
        if str(db.get("ENGINE", "")).endswith("sqlite3"):
            name = os.path.realpath(str(db.get("NAME", "")))
            if os.path.dirname(name) == "/":
                files += [
                    f for f in (name, f"{name}-wal", f"{name}-shm", f"{name}-journal") if os.path.exists(f)
                ]
    return files


def command(
    bwrap: str,
    argv: Iterable[str],
    workdir: Path,
    env: Mapping[str, str],
    hidden: Iterable[str],
    hidden_file_list: Iterable[str] = (),
) -> list[str]:
    """bwrap's command line that runs `argv` in `workdir` (bound read-write) with exactly `env`."""
    workspace = os.path.realpath(workdir)
    cmd = [bwrap, *_base_flags()]
    for folder in hidden:
        cmd += ["--tmpfs", folder]
    for name in hidden_file_list:
        cmd += ["--ro-bind", "/dev/null", name]
    # After the tmpfs mounts: bwrap makes the mount point inside them.
    cmd += ["--bind", workspace, workspace, "--chdir", workspace]
    for key, value in env.items():
        cmd += ["--setenv", key, value]
    return [*cmd, "--", *argv]
