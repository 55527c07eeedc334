"""The data folder: the database (admin sessions, key hashes) and the secret key live there.

Made when something first needs it, never at settings import (`manage.py --help` and
`manage.py server --help` leave no folder and no secret key behind): the SQLite database, whose
connections are made through `SQLiteConnection`, which makes the folder and the file first; the
generated secret key (`secret_key()`, read when Django first uses SECRET_KEY: a session, a signed
cookie, the system checks). A folder that cannot be made is one line naming CODER_DATA_DIR (EnvError).

What coderd creates there is its own alone (a folder 0700, files 0600), whatever the umask; what
exists already is left as it is and reported by the check coderd.W007 when others can read it.
Imported by settings.py: nothing Django here.
"""

from __future__ import annotations

import functools
import os
import secrets
import sqlite3
import stat
from pathlib import Path
from typing import Any

from coderd.env import EnvError

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


def make(path: Path) -> Path:
    """The data folder, made private now if it does not exist; EnvError (one line) if it cannot be."""
    try:
        ensure_private_dir(path)
    except OSError as exc:
        raise EnvError(f"CODER_DATA_DIR={str(path)!r} cannot be created: {exc.strerror}") from None
    return path


@functools.cache
def secret_key(data_dir: Path) -> str:
    """CODER_SECRET_KEY, else a key generated once and kept in the data folder (0600), so that
    sessions survive a restart. Cached: Django reads SECRET_KEY at every signature."""
    given = os.environ.get("CODER_SECRET_KEY")
    if given:
        return given
    path = make(data_dir) / "secret_key"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        key = secrets.token_urlsafe(50)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
        except FileExistsError:  # another process won the race
            return path.read_text().strip()
        os.fchmod(fd, PRIVATE_FILE_MODE)
        with os.fdopen(fd, "w") as f:
            f.write(key)
        return key


class SQLiteConnection(sqlite3.Connection):
    """sqlite3's connection (Django passes DATABASES' OPTIONS["factory"] to sqlite3.connect) whose
    database folder and file are made first, private: SQLite makes neither the folders above the
    file nor the file with a mode of our choosing (its -wal and -shm files take the file's)."""

    def __init__(self, database: Any, *args: Any, **kwargs: Any) -> None:
        name = os.fsdecode(database) if isinstance(database, (str, bytes, os.PathLike)) else ""
        if name and name != ":memory:" and not name.startswith("file:"):
            path = Path(name)
            make(path.parent)
            ensure_private_file(path)
        super().__init__(database, *args, **kwargs)
