"""In-process provisioner daemons: threads beside the web server that claim and run jobs.

A daemon's loop is thin around `run_once(now)`: claim one job, run it to its end, record it.
`shutdown()` is graceful (stop claiming, let the running job finish, as Coder's `Shutdown`);
`close()` is not (stop the running job now and record it failed, as Coder's `Close`).

`start_in_process(count, observer)` is what `manage.py server` and `runserver` call; it also runs
the reaper, so a server with no daemons of its own still fails the jobs of dead external ones.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import weakref
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from django.conf import settings
from django.db import close_old_connections, connection
from django.utils import timezone

from coderd import outages
from provisioner import queue, reaper
from provisioner.execution import HEARTBEAT_INTERVAL, JobContext, Outcome, execute_job, log_outcome
from provisioner.observer import JobObserver, NullObserver
from provisioner.runners import KNOWN_PROVISIONERS, Provisioner, default_runners
from provisioner.runners.shell import sandbox_notice

log = logging.getLogger(__name__)

# An idle daemon looks for work this often; a job created in this process wakes it at once.
POLL_INTERVAL = 1.0
# After a database error, wait this long before trying again.
ERROR_BACKOFF = 2.0
DEFAULT_SHUTDOWN_TIMEOUT = 30.0

# Live in-process daemons, woken when a job is created (provisioner.signals).
_live: weakref.WeakSet[Daemon] = weakref.WeakSet()
# The observer of this process's daemons; the serve consumer reports the jobs it hands out to it.
_process_observer: JobObserver | None = None


def process_observer() -> JobObserver:
    return _process_observer or NullObserver()


def wake_all() -> None:
    for daemon in list(_live):
        daemon.wake()


class LocalSink:
    """A job's store for an in-process daemon: the database, through `provisioner.queue`."""

    def __init__(self, job_id: object, daemon_id: object, clock: Callable[[], datetime]) -> None:
        self.job_id, self.daemon_id, self.clock = job_id, daemon_id, clock

    def append_logs(self, lines) -> None:
        queue.append_logs(self.job_id, lines)

    def check(self, beat: bool) -> str:
        return queue.heartbeat(self.job_id, self.daemon_id, self.clock(), beat=beat)

    def finish(self, error: str) -> str | None:
        return queue.complete(self.job_id, self.clock(), error=error, daemon_id=self.daemon_id)


class Daemon:
    """One in-process daemon. Tests drive `run_once(now)`; `serve()` loops it in a thread."""

    def __init__(
        self,
        name: str,
        provisioners: list[str] | tuple[str, ...] = KNOWN_PROVISIONERS,
        *,
        observer: JobObserver | None = None,
        runners: dict[str, Provisioner] | None = None,
        clock: Callable[[], datetime] = timezone.now,
        data_dir: Path | None = None,
        poll_interval: float = POLL_INTERVAL,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
    ) -> None:
        self.name = name
        self.provisioners = list(provisioners)
        self.observer = observer or NullObserver()
        self.runners = runners or default_runners()
        self.clock = clock
        self.data_dir = Path(data_dir or settings.DATA_DIR)
        self.poll_interval = poll_interval
        self.heartbeat_interval = heartbeat_interval
        self.daemon_id: object = None
        self._last_seen_write: datetime | None = None
        self._stopping = threading.Event()  # graceful: take no new job
        self._closing = threading.Event()  # hard: stop the running job too
        self._wake = threading.Event()
        self.current_job_id: object = None
        self.last_outcome: Outcome | None = None

    # --- one unit of work ---

    def register(self, now: datetime) -> None:
        row = queue.register_daemon(self.name, self.provisioners, now)
        self.daemon_id, self._last_seen_write = row.id, now

    def run_once(self, now: datetime) -> bool:
        """Claim the oldest job this daemon can run and run it to its end. False when none waits."""
        if self.daemon_id is None:
            self.register(now)
        if self._stopping.is_set():
            return False
        job = queue.claim(self.daemon_id, self.provisioners, now)
        if job is None:
            self._seen(now)
            return False
        self._last_seen_write = now
        self.current_job_id = job.id
        try:
            spec = queue.job_spec(job)
            queue.report_acquired(self.observer, job, spec, now)
            log.info("daemon %s: running %s", self.name, spec.describe())
            self.last_outcome = execute_job(
                spec,
                LocalSink(job.id, self.daemon_id, self.clock),
                self.runners,
                data_dir=self.data_dir,
                closing=self._closing,
                observer=self.observer,
                heartbeat_interval=self.heartbeat_interval,
            )
            log_outcome(log, f"daemon {self.name}: ", spec, self.last_outcome)
        finally:
            self.current_job_id = None
        return True

    def _seen(self, now: datetime) -> None:
        # An idle daemon writes its last_seen_at at the heartbeat interval, not at every poll.
        last = self._last_seen_write
        if last is None or (now - last).total_seconds() >= self.heartbeat_interval:
            queue.daemon_seen(self.daemon_id, now)
            self._last_seen_write = now

    # --- the loop ---

    def serve(self) -> None:
        """Loop until shut down. Meant for a thread; closes its database connection on the way out."""
        _live.add(self)
        _safe(self.observer.daemon_started)
        try:
            while not self._stopping.is_set():
                close_old_connections()
                try:
                    ran = self.run_once(self.clock())
                except Exception as exc:
                    if not outages.note_database_error(exc):  # an outage is logged once, not per loop
                        log.exception("daemon %s: error; retrying in %.0f s", self.name, ERROR_BACKOFF)
                    self._wake.wait(ERROR_BACKOFF)
                    continue
                if not ran:
                    self._wake.wait(self.poll_interval)
                    self._wake.clear()
        finally:
            _live.discard(self)
            _safe(self.observer.daemon_stopped)
            if self.daemon_id is not None:
                try:
                    queue.daemon_gone(self.daemon_id, self.clock())
                except Exception:
                    log.warning("daemon %s: could not mark itself stopped", self.name, exc_info=True)
            connection.close()

    def wake(self) -> None:
        self._wake.set()

    def shutdown(self) -> None:
        """Graceful: take no new job; the running one finishes."""
        self._stopping.set()
        self._wake.set()

    def close(self) -> None:
        """Hard: take no new job and stop the running one, which is recorded as failed."""
        self._closing.set()
        self.shutdown()


def _safe(call: Callable[[], object]) -> None:
    try:
        call()
    except Exception:
        log.exception("observer call failed")


class ReaperLoop:
    """Runs `reaper.run_once(now)` every `interval` seconds in a thread."""

    def __init__(self, interval: float = reaper.REAP_INTERVAL, observer: JobObserver | None = None) -> None:
        self.interval = interval
        self.observer = observer
        self._stop = threading.Event()

    def serve(self) -> None:
        try:
            while not self._stop.wait(self.interval):
                close_old_connections()
                try:
                    reaper.run_once(timezone.now(), observer=self.observer)
                except Exception as exc:
                    if not outages.note_database_error(exc):
                        log.exception("reaper: error")
        finally:
            connection.close()

    def stop(self) -> None:
        self._stop.set()


class DaemonGroup:
    """The in-process daemons of one server process, and its reaper."""

    def __init__(self, daemons: list[Daemon], reaper_loop: ReaperLoop | None) -> None:
        self.daemons = daemons
        self.reaper_loop = reaper_loop
        self.threads: list[threading.Thread] = []

    def start(self) -> DaemonGroup:
        for daemon in self.daemons:
            t = threading.Thread(target=daemon.serve, name=f"provisionerd-{daemon.name}", daemon=True)
            t.start()
            self.threads.append(t)
        if self.reaper_loop is not None:
            t = threading.Thread(target=self.reaper_loop.serve, name="provisioner-reaper", daemon=True)
            t.start()
            self.threads.append(t)
        return self

    def shutdown(self, graceful: bool = True, timeout: float = DEFAULT_SHUTDOWN_TIMEOUT) -> bool:
        """Stop every daemon. Graceful waits up to `timeout` for running jobs to finish, then closes
        what is left (its jobs fail). True when every thread has stopped."""
        if self.reaper_loop is not None:
            self.reaper_loop.stop()
        for daemon in self.daemons:
            daemon.shutdown() if graceful else daemon.close()
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        if any(t.is_alive() for t in self.threads):
            for daemon in self.daemons:
                daemon.close()
            for t in self.threads:
                t.join(5.0)
        return not any(t.is_alive() for t in self.threads)

    def close(self) -> None:
        """Stop every running job now (recorded failed); safe in a signal handler (sets flags only).
        A `shutdown(graceful=True)` waiting in another thread then returns promptly."""
        for daemon in self.daemons:
            daemon.close()

    def busy(self) -> int:
        """How many daemons are running a job now."""
        return sum(1 for daemon in self.daemons if daemon.current_job_id is not None)

    def alive(self) -> int:
        return sum(1 for t in self.threads if t.is_alive())


def start_in_process(count: int, observer: JobObserver | None = None) -> DaemonGroup:
    """Start `count` daemon threads (echo and shell) and the reaper; returns their group."""
    global _process_observer
    _process_observer = observer
    host = socket.gethostname()
    daemons = [Daemon(f"{host}-{i}", observer=observer) for i in range(count)]
    group = DaemonGroup(daemons, ReaperLoop(observer=observer)).start()
    if count:
        log.info("started %d provisioner daemon(s)", count)
        log.log(*sandbox_notice(daemons[0].runners.get("shell")))
    return group


__all__ = ["Daemon", "DaemonGroup", "JobContext", "start_in_process", "wake_all"]
