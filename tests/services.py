"""Real services for tests: PostgreSQL, Redis, Prometheus and our own servers, on loopback.

Every service is started on a free port chosen at run time and stopped by its PID. When the
environment names a running service (`CODER_TEST_PG_URL`, `CODER_TEST_REDIS_URL`, as `.ci/run` does),
the fixtures use it instead of starting their own. A test that needs a missing service fails when
`CI` is true and is skipped otherwise (a developer without PostgreSQL can still run the rest).

Helpers for tests that start servers: `free_port`, `ServerProcess`, `Prometheus`, `wait_for`...; their
fixtures (`pg_server`, `pg_url`, `pg_database`, `redis_url`, `prometheus_bin`, `promtool_bin`,
`chromium_bin`) are in tests/service_fixtures.py. This module does not import pytest (but in
`missing()`): the benches in bench/ start their servers with it from a venv made with requirements.txt.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import psutil

REPO = Path(__file__).resolve().parent.parent
PG_BIN = Path(os.environ.get("CODER_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
T = TypeVar("T")


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def missing(what: str) -> NoReturn:
    """A needed service is not there: fail in CI (it must be there), skip on a developer's machine."""
    import pytest  # here only: the benches import this module from a venv without pytest

    if in_ci():
        pytest.fail(f"{what} is required when CI=true", pytrace=False)
    pytest.skip(f"{what} is not available here")


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (the kernel picks it; the caller binds it soon after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for(check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll `check` until it returns something truthy (returned) or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            value = check()
            if value:
                return value
        except Exception as exc:  # the service is not up yet: keep polling
            last_error = exc
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}{detail}")
        time.sleep(interval)


def tcp_open(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def http_get(
    url: str, headers: Mapping[str, str] | None = None, timeout: float = 10
) -> tuple[int, dict[str, str], bytes]:
    """GET a URL: (status, headers, body); HTTP errors are answers too, not exceptions."""
    request = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def clean_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """The test runner's environment without any CODER_* variable (nor DJANGO_SETTINGS_MODULE),
    with CODER_DATA_DIR and the variables given: what a `manage.py` child process should see."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODER_")}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env["CODER_DATA_DIR"] = str(data_dir)
    env.update(extra)
    return env


def manage(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`manage.py <args>` in a child process; on timeout subprocess.run kills it (by its PID)."""
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def stop_pid(pid: int, timeout: float = 10, sig: int = signal.SIGTERM) -> None:
    """Stop one process by its PID and its children found beforehand; SIGKILL whatever lingers."""
    try:
        proc = psutil.Process(pid)
        children = proc.children(recursive=True)
    except psutil.NoSuchProcess:
        return
    with contextlib.suppress(psutil.NoSuchProcess):
        proc.send_signal(sig)
    _, alive = psutil.wait_procs([proc], timeout=timeout)
    for p in alive + children:
        with contextlib.suppress(psutil.NoSuchProcess):
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                p.kill()
    psutil.wait_procs(alive + children, timeout=5)


_LOG_DIR: Path | None = None


def _log_dir() -> Path:
    """One folder for the logs of every server this process starts, removed when it exits."""
    global _LOG_DIR
    if _LOG_DIR is None:
        _LOG_DIR = Path(tempfile.mkdtemp(prefix="coderd-test-logs-"))
        atexit.register(shutil.rmtree, _LOG_DIR, True)
    return _LOG_DIR


class ServerProcess:
    """A server we start as a subprocess (gunicorn, `manage.py server`, prometheus), logged to a file."""

    def __init__(
        self,
        argv: list[str],
        env: Mapping[str, str] | None = None,
        cwd: Path = REPO,
        name: str = "server",
    ) -> None:
        self.argv = argv
        self.name = name
        self.log_path = Path(tempfile.mkstemp(prefix=f"{name}-", suffix=".log", dir=_log_dir())[1])
        full_env = dict(os.environ)
        full_env.update(env or {})
        with open(self.log_path, "wb") as log:
            self.popen = subprocess.Popen(
                argv,
                cwd=cwd,
                env=full_env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.popen.returncode}:\n{self.log()[-4000:]}")

    def wait_http(self, url: str, timeout: float = 30, headers: Mapping[str, str] | None = None) -> None:
        """Wait until `url` answers (any status), failing at once if the process dies."""

        def answered() -> bool:
            self.check_alive()
            try:
                # A refused connection fails at once; one accepted is waited for (up to 10 s), never
                # abandoned and resent: under load the server would still serve the abandoned probe,
                # counted as one more request (code 0 when the client left before it was read).
                http_get(url, headers, timeout=10)
            except (OSError, urllib.error.URLError):
                return False
            return True

        try:
            wait_for(answered, timeout, f"{self.name} at {url}")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{self.log()[-4000:]}") from None

    def stop(self, timeout: float = 15) -> int | None:
        stop_pid(self.pid, timeout)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5)
        return self.popen.returncode


# --- PostgreSQL ------------------------------------------------------------------------------


class Postgres:
    """A PostgreSQL server: ours (initdb in a temp dir, stopped by PID) or one named by a URL."""

    def __init__(self, admin_url: str, owned_dir: Path | None = None) -> None:
        self.admin_url = admin_url
        self.owned_dir = owned_dir

    @classmethod
    def available(cls) -> bool:
        return (PG_BIN / "initdb").exists() and (os.geteuid() != 0 or shutil.which("runuser") is not None)

    @classmethod
    def start(cls) -> Postgres:
        root = Path(tempfile.mkdtemp(prefix="coderd-pg-"))
        as_user: list[str] = []
        if os.geteuid() == 0:  # initdb refuses root
            shutil.chown(root, "postgres", "postgres")
            as_user = ["runuser", "-u", "postgres", "--"]
        subprocess.run(
            [*as_user, str(PG_BIN / "initdb"), "-D", str(root / "data"), "-U", "postgres", "-A", "trust"]
            + ["-E", "UTF8", "--locale=C.UTF-8", "--no-sync"],
            check=True,
            capture_output=True,
            cwd="/",  # the postgres user may not be allowed into the checkout
        )
        for _attempt in range(5):  # another process may take the port between choice and bind
            port = free_port()
            options = f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off"
            options += " -c full_page_writes=off -c synchronous_commit=off -c max_connections=300"
            started = subprocess.run(
                [*as_user, str(PG_BIN / "pg_ctl"), "-D", str(root / "data"), "-l", str(root / "log")]
                + ["-w", "-t", "30", "-o", options, "start"],
                capture_output=True,
                cwd="/",
            )
            if started.returncode == 0:
                server = cls(f"postgres://postgres@127.0.0.1:{port}/postgres", owned_dir=root)
                server._pg_ctl = [*as_user, str(PG_BIN / "pg_ctl"), "-D", str(root / "data")]
                server._options = options
                return server
        raise RuntimeError(f"PostgreSQL did not start: {(root / 'log').read_text(errors='replace')[-2000:]}")

    def stop_server(self) -> None:
        """Stop our server (a fast shutdown, as an operator's restart does), keeping its data."""
        subprocess.run(
            [*self._pg_ctl, "-m", "fast", "-w", "-t", "30", "stop"], check=True, capture_output=True, cwd="/"
        )

    def start_server(self) -> None:
        """Start our stopped server again, on the same port."""
        log = str(self.owned_dir / "log")  # type: ignore[operator]
        subprocess.run(
            [*self._pg_ctl, "-l", log, "-w", "-t", "30", "-o", self._options, "start"],
            check=True,
            capture_output=True,
            cwd="/",
        )

    def url(self, database: str) -> str:
        parts = urllib.parse.urlsplit(self.admin_url)
        return urllib.parse.urlunsplit(parts._replace(path=f"/{database}"))

    def execute(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql)

    def create_database(self, prefix: str = "coderd") -> str:
        """A new empty database; returns its URL."""
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        self.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = urllib.parse.urlsplit(url).path.lstrip("/")
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        if self.owned_dir is None:
            return
        pid_file = self.owned_dir / "data" / "postmaster.pid"
        with contextlib.suppress(FileNotFoundError, ValueError):
            pid = int(pid_file.read_text().split()[0])
            # SIGINT is PostgreSQL's fast shutdown; the postmaster removes its PID file when done.
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGINT)
            with contextlib.suppress(TimeoutError):
                wait_for(lambda: not pid_file.exists(), 15, "PostgreSQL to stop")
            if pid_file.exists():
                stop_pid(pid, timeout=1, sig=signal.SIGKILL)
        shutil.rmtree(self.owned_dir, ignore_errors=True)


# --- Redis -----------------------------------------------------------------------------------


class Redis:
    """A redis-server on a free port, stopped by PID."""

    def __init__(self, url: str, process: ServerProcess | None = None, owned_dir: Path | None = None):
        self.url = url
        self.process = process
        self.owned_dir = owned_dir

    @staticmethod
    def ping(url: str) -> bool:
        parts = urllib.parse.urlsplit(url)
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), timeout=2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")

    @classmethod
    def start(cls) -> Redis:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server")
        root = Path(tempfile.mkdtemp(prefix="coderd-redis-"))
        for _attempt in range(5):
            port = free_port()
            argv = [binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(root)]
            argv += ["--save", "", "--appendonly", "no", "--daemonize", "no"]
            process = ServerProcess(argv, name="redis", cwd=root)
            url = f"redis://127.0.0.1:{port}/0"
            try:
                wait_for(lambda: process.check_alive() or cls.ping(url), 10, "redis-server")  # noqa: B023
            except (RuntimeError, TimeoutError):
                process.stop()
                continue
            return cls(url, process, root)
        raise RuntimeError("redis-server did not start")

    def stop_server(self) -> None:
        """Stop our redis-server (its data goes: it saves nothing), keeping its port for start_server."""
        assert self.process is not None
        self.process.stop()

    def start_server(self) -> None:
        assert self.process is not None
        self.process = ServerProcess(self.process.argv, name="redis", cwd=self.owned_dir or REPO)
        wait_for(lambda: self.process.check_alive() or self.ping(self.url), 10, "redis-server again")

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
        if self.owned_dir is not None:
            shutil.rmtree(self.owned_dir, ignore_errors=True)


# --- Prometheus ------------------------------------------------------------------------------


class Prometheus:
    """A real Prometheus server scraping `targets` ("host:port") every second, stopped by PID;
    `rule_files` (absolute paths) are loaded and evaluated at the same interval."""

    def __init__(
        self, binary: str, targets: list[str], scrape_interval: str = "1s", rule_files: tuple[Path, ...] = ()
    ) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="coderd-prometheus-"))
        config = self.root / "prometheus.yml"
        config.write_text(
            "global:\n"
            f"  scrape_interval: {scrape_interval}\n"
            f"  evaluation_interval: {scrape_interval}\n"
            f"rule_files: {json.dumps([str(f) for f in rule_files])}\n"
            "scrape_configs:\n"
            "  - job_name: coderd\n"
            "    static_configs:\n"
            f"      - targets: {json.dumps(targets)}\n"
        )
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.process = ServerProcess(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={self.root / 'data'}"]
            + [f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            name="prometheus",
            cwd=self.root,
        )
        self.process.wait_http(f"{self.base}/-/ready", timeout=30)

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant PromQL query: the result vector."""
        status, _, body = http_get(f"{self.base}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        payload = json.loads(body)
        if status != 200 or payload.get("status") != "success":
            raise AssertionError(f"query {expr!r} failed: {status} {body[:500]!r}")
        return payload["data"]["result"]

    def api(self, path: str, **params: str) -> Any:
        """A GET of the HTTP API (`/api/v1/<path>`): its `data`."""
        url = f"{self.base}/api/v1/{path}?" + urllib.parse.urlencode(params)
        status, _, body = http_get(url)
        payload = json.loads(body)
        if status != 200 or payload.get("status") != "success":
            raise AssertionError(f"{path} {params} failed: {status} {body[:500]!r}")
        return payload["data"]

    def wait_value(self, expr: str, expected: float, timeout: float = 30) -> float:
        """Poll a query until its single value equals `expected` (a first sample takes ~5 s)."""
        seen: list[Any] = []

        def matches() -> bool:
            result = self.query(expr)
            seen[:] = result
            return len(result) == 1 and float(result[0]["value"][1]) == expected

        try:
            wait_for(matches, timeout, f"{expr} == {expected}", interval=0.5)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}; last result: {seen}") from None
        return expected

    def stop(self) -> None:
        self.process.stop()
        shutil.rmtree(self.root, ignore_errors=True)


# --- coderd itself ---------------------------------------------------------------------------

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_samples(text: str) -> Samples:
    """A text exposition as {(sample name, labels): value} (parsed, never matched as strings)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of every sample called `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


class Coderd:
    """coderd on free loopback ports: gunicorn (`workers` uvicorn workers) or `manage.py server`.

    Metrics are on (unless `metrics` is False), on their own port; `env` adds or overrides variables (CODER_PG_CONNECTION_URL,
    CODER_REDIS_URL...). Stopped by PID (SIGTERM: the master stops its workers).
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        kind: str = "gunicorn",
        workers: int = 2,
        env: Mapping[str, str] | None = None,
        ready_timeout: float = 60,
        metrics: bool = True,
    ) -> None:
        self.http_port, self.metrics_port = free_port(), free_port()
        self.base = f"http://127.0.0.1:{self.http_port}"
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        full_env = {
            "CODER_DATA_DIR": str(data_dir),
            "CODER_HTTP_ADDRESS": f"127.0.0.1:{self.http_port}",
            "CODER_PROMETHEUS_ENABLE": "true" if metrics else "false",
            "CODER_PROMETHEUS_ADDRESS": f"127.0.0.1:{self.metrics_port}",
            "CODER_WORKERS": str(workers),
            "CODER_LOG_LEVEL": "warning",
            "PYTHONUNBUFFERED": "1",
        }
        full_env.update(env or {})
        if kind == "gunicorn":
            argv = [str(Path(sys.executable).parent / "gunicorn"), "-c", str(REPO / "gunicorn.conf.py")]
        else:
            argv = [sys.executable, "manage.py", "server"]
        self.kind = kind
        self.process = ServerProcess(argv, full_env, name=kind)
        try:
            self.process.wait_http(f"{self.base}/healthz", timeout=ready_timeout)
            if metrics:
                self.process.wait_http(self.metrics_url, timeout=ready_timeout)
        except BaseException:
            self.stop()
            raise

    @property
    def pid(self) -> int:
        return self.process.pid

    def worker_pids(self) -> set[int]:
        try:
            return {c.pid for c in psutil.Process(self.pid).children() if c.status() != psutil.STATUS_ZOMBIE}
        except psutil.NoSuchProcess:
            return set()

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        token: str | None = None,
        timeout: float = 30,
    ) -> tuple[int, Any]:
        """One API call: (status, decoded JSON or None)."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        if token:
            headers["Coder-Session-Token"] = token
        request = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, None

    def first_user(self, username: str = "admin", password: str = "correct-horse-battery") -> str:
        """Create the first user (an owner) and log in: its session token. Two API requests."""
        email = f"{username}@example.com"
        status, body = self.request(
            "POST", "/api/v2/users/first", {"email": email, "username": username, "password": password}
        )
        assert status == 201, (status, body)
        return self.login(email, password)

    def login(self, email: str, password: str = "correct-horse-battery") -> str:
        status, body = self.request("POST", "/api/v2/users/login", {"email": email, "password": password})
        assert status == 201, (status, body)
        return body["session_token"]

    def scrape(self, url: str | None = None, headers: Mapping[str, str] | None = None) -> Samples:
        status, _, body = http_get(url or self.metrics_url, headers)
        assert status == 200, (status, body[:300])
        return parse_samples(body.decode())

    def stop(self) -> int | None:
        return self.process.stop(timeout=40)


if __name__ == "__main__":  # a quick manual check: start everything, print URLs, stop
    pg, redis = Postgres.start(), Redis.start()
    try:
        print(pg.admin_url, redis.url, file=sys.stderr)
    finally:
        redis.stop()
        pg.stop()


@contextlib.contextmanager
def metrics_server(
    data_dir: Path, daemons: int, name: str, env: dict[str, str] | None = None
) -> Iterator[tuple[ServerProcess, int, int]]:
    """`manage.py server` with metrics on, on free loopback ports: (process, http port, metrics port),
    stopped by PID at the end; `env` adds variables."""
    http_port, metrics_port = free_port(), free_port()
    process = ServerProcess(
        [sys.executable, "manage.py", "server"],
        {
            "CODER_DATA_DIR": str(data_dir),
            "CODER_HTTP_ADDRESS": f"127.0.0.1:{http_port}",
            "CODER_PROMETHEUS_ENABLE": "true",
            "CODER_PROMETHEUS_ADDRESS": f"127.0.0.1:{metrics_port}",
            "CODER_PROVISIONER_DAEMONS": str(daemons),
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        },
        name=name,
    )
    try:
        process.wait_http(f"http://127.0.0.1:{metrics_port}/", timeout=60)
        process.wait_http(f"http://127.0.0.1:{http_port}/api/v2/buildinfo", timeout=60)
        yield process, http_port, metrics_port
    finally:
        process.stop()
