"""coderd under gunicorn: several uvicorn workers on one port, metrics that add up across them.

    .venv/bin/gunicorn -c gunicorn.conf.py

Environment (besides every CODER_* variable of the server):
    CODER_HTTP_ADDRESS   where to listen (host:port, default 127.0.0.1:3000)
    CODER_WORKERS        worker processes (default: WEB_CONCURRENCY, else 1); `-w N` wins over both
    CODER_REDIS_URL      required with more than one worker (a system check refuses to start without)

What the master does, in order (the hooks below):
- on_starting: records the final worker count in CODER_WORKERS (the system check reads it), sets up
  Django, runs the system checks (an error stops start-up with exit 2) and migrates (under a
  PostgreSQL advisory lock, so replicas starting together do not race), then closes its database
  connections so no worker inherits one.
- Metrics (CODER_PROMETHEUS_ENABLE): prometheus_client's multiprocess mode. PROMETHEUS_MULTIPROC_DIR
  is set at the top of this file, before anything imports prometheus_client, to a directory made
  for this start (or the one given), emptied at on_starting. when_ready starts the :2112 listener
  once, in the master, serving the sum over all workers' files (metrics.runtime); the first count
  of the database gauges happens there too, and later ones at most once per refresh interval for
  the whole replica (a shared cache file under a lock). child_exit marks an exited worker dead: its
  live gauges (in-flight requests, websockets, running jobs) vanish, its counters stay. Process
  metrics describe the master and its workers (CPU of exited workers included: the master reaps them).
- Provisioner daemons (CODER_PROVISIONER_DAEMONS) and the job reaper run in exactly one worker: the
  one holding an flock on a file of this start's directory. Not in the master: gunicorn's master
  reaps every child with waitpid(-1), which would steal the exit status of the shell provisioner's
  subprocesses, and a master busy with jobs is one that answers signals late. When the holder dies
  the lock is released and its replacement takes it over.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BASE_DIR))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "coderd.settings")

from coderd.env import EnvError, env_address, env_bool, env_int, invoked_as  # noqa: E402 (after sys.path)


def _exit(code: int) -> None:
    """Stop start-up: on_exit will not run, so remove this start's directory here."""
    if "RUNTIME_DIR" in globals():
        shutil.rmtree(RUNTIME_DIR, ignore_errors=True)
    sys.exit(code)


def _die(message: str) -> None:
    print(f"{invoked_as()}: {message}", file=sys.stderr)
    _exit(2)


try:
    _host, _port = env_address("CODER_HTTP_ADDRESS", "127.0.0.1:3000")
    _default_workers = env_int("WEB_CONCURRENCY", 1, minimum=1)
    _workers = env_int("CODER_WORKERS", _default_workers, minimum=1)
    METRICS_ENABLED = env_bool("CODER_PROMETHEUS_ENABLE", False)
except EnvError as exc:
    _die(str(exc))

# This start's own directory: the daemons lock, and the metrics files unless one is given. Kept in
# the environment so that a reload (SIGHUP re-reads this file in the same master) keeps using it.
RUNTIME_DIR = Path(
    os.environ.get("CODER_GUNICORN_RUNTIME_DIR") or tempfile.mkdtemp(prefix="coderd-gunicorn-")
)
os.environ["CODER_GUNICORN_RUNTIME_DIR"] = str(RUNTIME_DIR)
if METRICS_ENABLED:
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(RUNTIME_DIR / "metrics")
    # Process metrics of the whole server: this master and every worker below it.
    os.environ["CODER_METRICS_ROOT_PID"] = str(os.getpid())

# --- gunicorn settings -----------------------------------------------------------------------
wsgi_app = "coderd.asgi:application"
chdir = str(BASE_DIR)
bind = [f"[{_host}]:{_port}" if ":" in _host else f"{_host}:{_port}"]
workers = _workers
control_socket_disable = True  # gunicorn 27 otherwise opens a control socket under ~/.gunicorn
graceful_timeout = 35  # in-process daemons get 30 s to finish a running job
timeout = 60
keepalive = 5
accesslog = None  # the metrics count requests; Django logs errors


# Channels' router has no ASGI lifespan protocol, so uvicorn runs without one; a side effect of
# uvicorn-worker 0.4 in that mode is one harmless INFO line per worker exit, "Error while closing
# socket [Errno 9] Bad file descriptor" (uvicorn has already closed it).
worker_class = "uvicorn_worker.UvicornWorker"

# --- hooks -----------------------------------------------------------------------------------
_listener = None  # the master's metrics listener
_daemons = None  # the in-process daemons, in the one worker holding the lock
_daemons_guard = threading.Lock()
_exiting = threading.Event()


def on_starting(server) -> None:
    os.environ["CODER_WORKERS"] = str(server.cfg.workers)
    if METRICS_ENABLED:
        from metrics.runtime import prepare_multiprocess_dir

        prepare_multiprocess_dir(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    try:
        import django

        django.setup()
        # The data folder is made at first use (the secret key the checks read, the database):
        # a folder that cannot be made is one line here too.
        _run_checks(server)
        _migrate()
    except EnvError as exc:
        _die(str(exc))
    from django.db import connections

    connections.close_all()


def _run_checks(server) -> None:
    from django.core import checks

    problems = [p for p in checks.run_checks() if not p.is_silenced()]
    for p in problems:
        hint = f" Hint: {p.hint}" if p.hint else ""
        (server.log.error if p.is_serious() else server.log.warning)("%s: %s%s", p.id, p.msg, hint)
    if any(p.is_serious() for p in problems):
        _exit(2)


def _migrate() -> None:
    from coderd.dbmigrate import migrate
    from coderd.deploy_checks import redis_problem

    migrate()
    problem = redis_problem()
    if problem:  # the environment, not the command line: exit 1, as `manage.py server`
        print(f"{invoked_as()}: {problem}", file=sys.stderr)
        _exit(1)


def when_ready(server) -> None:
    global _listener
    if METRICS_ENABLED:
        from django.conf import settings
        from django.db import connections

        from metrics import serving

        host, port = settings.PROMETHEUS_ADDRESS
        try:
            _listener = serving.start_listener(host, port)
        except serving.ListenerError as exc:
            server.log.error("%s", exc)
            _exit(1)
        serving.refresh_database_gauges()  # the first count is at start-up, not after one interval
        connections.close_all()  # opened by that count, in this (the forking) thread
        server.log.info("serving metrics on http://%s:%s/metrics (sum of all workers)", host, port)


def pre_fork(server, worker) -> None:
    from django.db import connections

    connections.close_all()  # a connection shared with a child would interleave two protocols


def post_fork(server, worker) -> None:
    """In the new worker: drop what it inherited from the master and must not share."""
    if _listener is not None:
        _listener.server.socket.close()  # this worker's copy of the :2112 socket
    if METRICS_ENABLED:
        # The master's listener threads do not exist here; a lock one of them held at the fork would
        # stay held forever. Fresh value class (its lock and files) and a state built on first use.
        from prometheus_client import values

        from metrics import runtime

        values.ValueClass = values.get_value_class()
        runtime.install(None)


def post_worker_init(worker) -> None:
    """In the worker, its app loaded: wait (in a thread) to be the one worker that runs the daemons.

    The lock is an flock on a file of this start: the kernel drops it when its holder exits however
    it exits (SIGKILL included), and exactly one waiting worker then gets it. Workers of a reload
    (SIGHUP) or a replacement wait the same way while the old holder finishes its running job."""
    from coderd.console import start_sampler

    start_sampler()  # the admin console's traffic history (each worker reads the merged metrics)
    fd = os.open(RUNTIME_DIR / "daemons.lock", os.O_RDWR | os.O_CREAT, 0o600)
    threading.Thread(target=_take_daemons, args=(worker, fd), name="daemons-lock", daemon=True).start()


def _take_daemons(worker, fd: int) -> None:
    global _daemons
    fcntl.flock(fd, fcntl.LOCK_EX)  # blocks (without the GIL) while another worker has them
    with _daemons_guard:
        if _exiting.is_set():
            os.close(fd)
            return
        from django.conf import settings

        from provisioner.daemon import start_in_process

        observer = None
        if METRICS_ENABLED:
            from metrics.serving import get_observer

            observer = get_observer()
        _daemons = start_in_process(settings.PROVISIONER_DAEMONS, observer=observer)
    # fd stays open: the lock is held until this process exits.
    worker.log.info(
        "worker %s runs the %d provisioner daemon(s) and the reaper", worker.pid, settings.PROVISIONER_DAEMONS
    )


def worker_exit(server, worker) -> None:
    if os.getpid() != worker.pid:
        return  # gunicorn also calls this in the master for a worker it found already gone
    with _daemons_guard:
        _exiting.set()
        daemons = _daemons
    if daemons is not None:
        daemons.shutdown(graceful=True)


def child_exit(server, worker) -> None:
    if METRICS_ENABLED:
        from metrics.runtime import mark_process_dead

        mark_process_dead(worker.pid)


def on_exit(server) -> None:
    if _listener is not None:
        _listener.stop()
    shutil.rmtree(RUNTIME_DIR, ignore_errors=True)  # a PROMETHEUS_MULTIPROC_DIR given is kept
