"""The data folder's privacy: the database (admin sessions, key hashes) and the secret key live there.

What coderd creates there is its own alone (a folder 0700, files 0600), whatever the umask; what
exists already is left as it is and reported by the check coderd.W006 when others can read it.
Imported by settings.py: nothing Django here.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def ensure_private_dir(path: Path) -> bool:
    """Create `path` (and missing parents, with the default mode) as 0700; True if it was created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(mode=PRIVATE_DIR_MODE)
    except FileExistsError:
        if not path.is_dir():
            raise NotADirectoryError(20, "Not a directory", str(path)) from None
        return False
    os.chmod(path, PRIVATE_DIR_MODE)  # mkdir's mode is masked by the umask
    return True


def ensure_private_file(path: Path) -> bool:
    """Create `path` empty as 0600 unless it exists; True if it was created."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
    except FileExistsError:
        return False
    os.fchmod(fd, PRIVATE_FILE_MODE)
    os.close(fd)
    return True


def exposed(paths: list[Path]) -> list[tuple[Path, int]]:
    """The paths (that exist) whose group or others have any permission on them: (path, mode)."""
    found = []
    for path in paths:
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except OSError:
            continue
        if mode & 0o077:
            found.append((path, mode))
    return found
