"""coderd's API against a bare Django project doing the same work, side by side in one run.

The script builds the bare project itself (`django-admin startproject`: its settings and middleware
untouched, plus one app) over coderd's own database file, so that both read the same rows:
- `/one`: one indexed query (a user by primary key) answered as JSON, against coderd's
  `GET /api/v2/users/me` (a token check and the user);
- `/list`: the same 50 workspace rows as JSON, against coderd's `GET /api/v2/workspaces` (the owner's
  50 workspaces, each with its latest build and job).
With `--old REF`, coderd at that git commit is served too (its own data folder, seeded the same way),
so old and new figures come from the same run.

Each server is one uvicorn process pinned to core 0 (`taskset`), wrk runs on core 1; the targets are
loaded in turn (`wrk -t1 -c4`, rounds of `--seconds`), in alternating order, so that whatever else the
machine does weighs on all alike. Figures are medians over the rounds, and each ratio is the median of
the rounds' ratios (coderd over the bare view of the same round). Then `users/me` under 50 connections:
p50 and p99 latency. The load average is printed before and after.

    .venv/bin/python bench/bench_api.py [--rounds 5] [--seconds 5] [--old 515286d]

Needs: a venv made with requirements.txt (runtime only: Django, uvicorn), `wrk` and `taskset` (util-linux),
and 2 cores. Takes about (targets x rounds x seconds) + a minute of set-up. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PASSWORD = "a-long-passphrase"
WORKSPACES = 50

BARE_MODELS = """
from django.db import models


# coderd's tables, read as they are (managed = False): the same rows as the API serves.
class User(models.Model):
    id = models.UUIDField(primary_key=True)
    email = models.CharField(max_length=254)
    username = models.CharField(max_length=64)
    name = models.CharField(max_length=128)
    status = models.CharField(max_length=16)
    roles = models.JSONField()
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()
    last_seen_at = models.DateTimeField(null=True)

    class Meta:
        managed = False
        db_table = "users_user"


class Workspace(models.Model):
    id = models.UUIDField(primary_key=True)
    owner_id = models.UUIDField()
    organization_id = models.UUIDField()
    template_id = models.UUIDField()
    name = models.CharField(max_length=64)
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()
    deleted = models.BooleanField()
    owner_username = models.CharField(max_length=64, null=True)
    template_name = models.CharField(max_length=64, null=True)
    latest_version_name = models.CharField(max_length=64, null=True)
    latest_transition = models.CharField(max_length=8, null=True)
    latest_job_state = models.CharField(max_length=10, null=True)

    class Meta:
        managed = False
        db_table = "workspaces_workspace"
"""

BARE_VIEWS = """
from django.http import JsonResponse

from rows.models import User, Workspace


def one(request):
    return JsonResponse(User.objects.values().get(pk=request.GET["id"]))


def listing(request):
    rows = Workspace.objects.filter(owner_id=request.GET["owner"], deleted=False).order_by("name")
    return JsonResponse({"workspaces": list(rows.values()[:50])})
"""

BARE_URLS = """
from django.urls import path

from rows.views import listing, one

urlpatterns = [path("one", one), path("list", listing)]
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"bench: {url} exited with {process.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"bench: {url} did not answer in {timeout} s")


def api(base: str, method: str, path: str, body: dict | None = None, token: str = "") -> dict:
    request = urllib.request.Request(
        f"{base}/api/v2/{path}",
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json", **({"Coder-Session-Token": token} if token else {})},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


class Coderd:
    """`manage.py server` of a checkout (this one or an older commit) on its own SQLite data folder."""

    def __init__(self, name: str, source: Path, data_dir: Path) -> None:
        self.name, self.source, self.data_dir = name, source, data_dir
        self.process: subprocess.Popen | None = None
        self.base = ""

    def start(self, daemons: int, pinned: bool) -> None:
        port = free_port()
        env = {
            **os.environ,
            "CODER_DATA_DIR": str(self.data_dir),
            "CODER_PG_CONNECTION_URL": "",
            "CODER_REDIS_URL": "",
            "CODER_LOG_LEVEL": "warning",
        }
        argv = [sys.executable, "manage.py", "server", "--http-address", f"127.0.0.1:{port}"]
        argv += ["--provisioner-daemons", str(daemons)]
        if pinned:
            argv = ["taskset", "-c", "0", *argv]
        log = open(self.data_dir / "server.log", "ab")  # noqa: SIM115 (the process keeps it)
        self.process = subprocess.Popen(argv, cwd=self.source, env=env, stdout=log, stderr=log)
        self.base = f"http://127.0.0.1:{port}"
        wait_http(f"{self.base}/healthz", self.process)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(60)
            self.process = None

    def seed(self) -> tuple[str, str]:
        """The first user, an echo template, 50 workspaces with finished builds: (token, user id)."""
        user = {"email": "bench@example.com", "username": "bench", "password": PASSWORD}
        api(self.base, "POST", "users/first", user)
        token = api(self.base, "POST", "users/login", {"email": user["email"], "password": PASSWORD})
        token = token["session_token"]
        source = {"start": {"logs": ["ready"]}}
        version = api(
            self.base,
            "POST",
            "organizations/default/templateversions",
            {"provisioner": "echo", "source": source},
            token,
        )["id"]
        self._wait(lambda: api(self.base, "GET", f"templateversions/{version}", token=token)["job"]["status"])
        template = api(
            self.base,
            "POST",
            "organizations/default/templates",
            {"name": "bench", "template_version_id": version},
            token,
        )["id"]
        for i in range(WORKSPACES):
            api(
                self.base,
                "POST",
                "organizations/default/members/me/workspaces",
                {"name": f"ws-{i:02d}", "template_id": template},
                token,
            )

        def all_built() -> str:
            listed = api(self.base, "GET", "workspaces", token=token)["workspaces"]
            done = all(w["latest_build"]["job"]["status"] == "succeeded" for w in listed)
            return "succeeded" if done and len(listed) == WORKSPACES else "pending"

        self._wait(all_built)
        return token, api(self.base, "GET", "users/me", token=token)["id"]

    @staticmethod
    def _wait(status) -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if status() == "succeeded":
                return
            time.sleep(0.5)
        raise SystemExit("bench: the seed builds did not finish")


def make_bare_project(root: Path, database: Path) -> Path:
    root.mkdir(parents=True)
    subprocess.run([sys.executable, "-m", "django", "startproject", "bare", str(root)], check=True)
    app = root / "rows"
    app.mkdir()
    (app / "__init__.py").write_text("")
    (app / "models.py").write_text(BARE_MODELS)
    (app / "views.py").write_text(BARE_VIEWS)
    settings = root / "bare" / "settings.py"
    text = settings.read_text()
    text = text.replace("DEBUG = True", "DEBUG = False")
    text = text.replace("ALLOWED_HOSTS = []", 'ALLOWED_HOSTS = ["127.0.0.1"]')
    text = text.replace("'django.contrib.staticfiles',", "'django.contrib.staticfiles',\n    'rows',")
    text = text.replace("BASE_DIR / 'db.sqlite3'", repr(str(database)))
    assert "'rows'" in text and repr(str(database)) in text, "startproject's settings changed shape"
    settings.write_text(text)
    urls = root / "bare" / "urls.py"
    urls.write_text(urls.read_text() + BARE_URLS.replace("urlpatterns = [", "urlpatterns += ["))
    return root


def start_bare(root: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    argv = ["taskset", "-c", "0", sys.executable, "-m", "uvicorn", "bare.asgi:application"]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--no-access-log", "--log-level", "warning"]
    argv += ["--lifespan", "off"]
    process = subprocess.Popen(argv, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    wait_http(f"{base}/admin/login/", process)
    return process, base


def wrk(url: str, seconds: float, connections: int, headers: dict[str, str]) -> dict[str, float]:
    argv = ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency"]
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    out = subprocess.run([*argv, url], capture_output=True, text=True, check=True).stdout
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])}
    for pct in ("50", "99"):
        found = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if found:
            scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[found[2]]
            result[f"p{pct}"] = float(found[1]) * scale
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise SystemExit(f"bench: {url} answered {errors[1]} errors:\n{out}")
    return result


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def checkout(ref: str, into: Path) -> Path:
    archive = subprocess.run(["git", "archive", ref], cwd=REPO, capture_output=True, check=True).stdout
    into.mkdir(parents=True, exist_ok=True)
    tar = into / "src.tar"
    tar.write_bytes(archive)
    with tarfile.open(tar) as t:
        t.extractall(into / "src", filter="data")
    return into / "src"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--old", metavar="REF", help="also serve coderd at this git commit")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    for tool in ("wrk", "taskset"):
        if shutil.which(tool) is None:
            raise SystemExit(f"bench: {tool} is not installed")
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("bench: needs 2 cores (servers on one, wrk on the other)")

    tmp = Path(tempfile.mkdtemp(prefix="coderd-bench-api-"))
    servers: list = []
    started = datetime.now(UTC)
    print(f"load average at start: {loadavg()}", flush=True)
    try:
        coderds = [Coderd("coderd", REPO, tmp / "new")]
        if args.old:
            coderds.insert(
                0, Coderd(f"coderd@{args.old}", checkout(args.old, tmp / "old"), tmp / "old" / "data")
            )
        seeds = {}
        for c in coderds:
            c.data_dir.mkdir(parents=True, exist_ok=True)
            c.start(daemons=3, pinned=False)
            seeds[c.name] = c.seed()
            c.stop()
            c.start(daemons=0, pinned=True)  # no idle daemons polling on the measured core
            servers.append(c)
        bare_root = make_bare_project(tmp / "bare", coderds[-1].data_dir / "coderd.sqlite3")
        bare_process, bare = start_bare(bare_root)
        servers.append(bare_process)
        _, user_id = seeds[coderds[-1].name]

        targets: dict[str, tuple[str, dict[str, str]]] = {
            "bare: one indexed query + JSON": (f"{bare}/one?id={user_id}", {}),
            "bare: 50 rows as JSON": (f"{bare}/list?owner={user_id}", {}),
        }
        for c in coderds:
            token, _ = seeds[c.name]
            auth = {"Coder-Session-Token": token}
            targets[f"{c.name}: GET /api/v2/users/me"] = (f"{c.base}/api/v2/users/me", auth)
            targets[f"{c.name}: GET /api/v2/workspaces (50)"] = (f"{c.base}/api/v2/workspaces", auth)
        for url, headers in targets.values():  # warm up: imports, caches, connections
            wrk(url, 1, 4, headers)

        results: dict[str, list[float]] = {name: [] for name in targets}
        order = list(targets)
        for r in range(args.rounds):
            for name in order if r % 2 == 0 else reversed(order):
                url, headers = targets[name]
                results[name].append(wrk(url, args.seconds, 4, headers)["rps"])
            print(f"round {r + 1}/{args.rounds} done, load average {loadavg()}", flush=True)

        bursts = {}
        for c in coderds:
            token, _ = seeds[c.name]
            bursts[c.name] = wrk(f"{c.base}/api/v2/users/me", 10, 50, {"Coder-Session-Token": token})
    finally:
        for s in servers:
            if isinstance(s, Coderd):
                s.stop()
            else:
                s.terminate()
                s.wait(30)
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)

    print()
    print(
        f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print(f"date: {started:%Y-%m-%d %H:%M} UTC, {args.rounds} rounds of {args.seconds:g} s, wrk -t1 -c4")
    print(f"load average at end: {loadavg()}")
    print()
    print("| target | req/s, median | rounds |")
    print("|---|---|---|")
    for name, values in results.items():
        print(f"| {name} | {statistics.median(values):.0f} | {' '.join(f'{v:.0f}' for v in values)} |")
    print()
    one, listing = results["bare: one indexed query + JSON"], results["bare: 50 rows as JSON"]
    print("| ratio (median of the rounds' ratios) | x |")
    print("|---|---|")
    for c in coderds:
        me = results[f"{c.name}: GET /api/v2/users/me"]
        ws = results[f"{c.name}: GET /api/v2/workspaces (50)"]
        print(f"| {c.name} users/me / bare one-query view (goal >= 3) | {statistics.median(a / b for a, b in zip(me, one, strict=True)):.2f} |")  # fmt: skip
        print(f"| {c.name} workspaces / bare 50-row view (goal >= 2) | {statistics.median(a / b for a, b in zip(ws, listing, strict=True)):.2f} |")  # fmt: skip
    print()
    for name, burst in bursts.items():
        print(f"{name} users/me, wrk -t1 -c50 10 s: {burst['rps']:.0f} req/s, p50 {burst.get('p50', 0):.1f} ms, "
              f"p99 {burst.get('p99', 0):.1f} ms (goal p99 < 100 ms)")  # fmt: skip


if __name__ == "__main__":
    main()
