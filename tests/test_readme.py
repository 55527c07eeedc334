"""The README stays true: its walk-through runs against a real server, and its configuration tables
name every variable the settings read and every flag the commands take."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

from coderd.management.commands.server import FLAGS
from tests.services import REPO, ServerProcess, missing, wait_for

README = (REPO / "README.md").read_text()
CONFIG = (REPO / "docs" / "configuration.md").read_text()


def section(title: str) -> str:
    start = README.index(f"\n## {title}")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else len(README)]


def table_rows(text: str) -> dict[str, list[str]]:
    """First cell (without backticks) -> the row's cells, for every table row in `text`."""
    rows = {}
    for line in text.splitlines():
        if line.startswith("| `"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows[cells[0].strip("`")] = cells
    return rows


def test_it_documents_every_variable_the_settings_read() -> None:
    read = set(re.findall(r'"(CODER_[A-Z_]+)"', (REPO / "coderd" / "settings.py").read_text()))
    assert read, "settings.py reads no CODER_* variable?"
    documented = table_rows(CONFIG)
    assert sorted(read - set(documented)) == []


def test_it_documents_every_server_flag_with_its_variable_and_default() -> None:
    rows = table_rows(CONFIG)
    for flag in FLAGS:
        cells = rows[flag.env]
        assert cells[1] == f"`{flag.name}`", flag.env
        if not flag.default.startswith("http://<"):
            assert cells[2] == f"`{flag.default}`", flag.env


def test_it_documents_every_provisionerd_flag() -> None:
    from provisioner.management.commands.provisionerd import ENV

    text = CONFIG
    for dest, (env, _default, _help) in ENV.items():
        assert f"| `{env}` | `--{dest.replace('_', '-')}` |" in text


def walk_through_script() -> str:
    text = section("Walk-through")
    start = text.index("```sh\n") + len("```sh\n")
    return text[start : text.index("```", start)]


def test_it_runs_the_walk_through_against_a_server(tmp_path) -> None:
    if shutil.which("curl") is None:
        missing("curl (the README's walk-through uses it)")
    server = ServerProcess(
        [
            sys.executable,
            "manage.py",
            "server",
            "--http-address",
            "127.0.0.1:0",
            "--provisioner-daemons",
            "2",
        ],
        env={"CODER_DATA_DIR": str(tmp_path)},
        name="readme-server",
    )
    try:

        def address() -> str | None:
            server.check_alive()
            found = re.search(r"serving HTTP on (http://\S+)", server.log())
            return found.group(1) if found else None

        base = wait_for(address, 90, "the server's start-up line")
        done = subprocess.run(
            ["bash", "-eu", "-c", walk_through_script()],
            env={"PATH": "/usr/bin:/bin:/usr/local/bin", "CODER": base, "HOME": str(tmp_path)},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        server.stop()
    assert done.returncode == 0, done.stdout + done.stderr + server.log()[-3000:]
    lines = done.stdout.splitlines()
    assert lines[1] == "admin"
    assert "job status: succeeded" in lines
    # "<created_at> info Starting workspace <output>", in the order they were logged
    outputs = [line.partition(" info Starting workspace ")[2] for line in lines if " info Starting " in line]
    assert outputs == ["pulling image", "starting container", "ready"]
    assert lines[-1] == "2"  # the stop build's number
