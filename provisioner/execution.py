"""One job's whole life on a daemon, shared by in-process and external daemons.

`execute_job` runs a claimed job's provisioner, streams its logs, heart-beats, stops it on cancel or
close, records the outcome and tells the observer, all through a `JobSink`: the database for
in-process daemons (`provisioner.queue`), the serve websocket for external ones (`provisioner.remote`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from django.utils import timezone
from django.utils.dateparse import parse_datetime

from coderd import outages
from provisioner.observer import JobObserver, NullObserver
from provisioner.runners import JobSpec, Provisioner, RunResult, stage_for

log = logging.getLogger(__name__)

# How often a running job's heartbeat is written (job.updated_at, daemon.last_seen_at). The reaper
# fails a job after PROVISIONER_HUNG_JOB_TIMEOUT (30 s by default) without one: several beats fit.
HEARTBEAT_INTERVAL = 5.0
# How often a running job looks for a cancel: a cancel must stop a job within a second.
CHECK_INTERVAL = 0.2
# Logs are written in batches, so a chatty script is not one transaction per line.
FLUSH_INTERVAL = 0.1
FLUSH_LINES = 200
# A job's stored logs are capped, as Coder caps them (1 MiB of output): a runaway script cannot fill
# the database. Past the cap one warning line is stored, then only error lines, and at the end one
# line says what was dropped.
LOG_LIMIT_BYTES = 1 << 20
# A busy database is retried this many times (about 30 s) before an outcome is given up to the reaper.
FINISH_ATTEMPTS = 20

RUNNING, CANCELED, GONE = "running", "canceled", "gone"
LOG_LEVELS = frozenset(("trace", "debug", "info", "warn", "error"))
# Why a job stopped early.
STOP_CANCELED, STOP_CLOSED, STOP_GONE, STOP_LOST = "canceled", "closed", "gone", "lost"
ERRORS = {
    STOP_CANCELED: "The job was canceled.",
    STOP_CLOSED: "The provisioner daemon was closed while the job was running.",
    STOP_LOST: "The provisioner daemon lost its connection to coderd while the job was running.",
}


def iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


@dataclass
class LogLine:
    output: str
    level: str = "info"
    stage: str = ""
    source: str = "provisioner"
    created_at: datetime = field(default_factory=timezone.now)

    def to_dict(self) -> dict[str, Any]:
        return {
            "output": self.output,
            "level": self.level,
            "stage": self.stage,
            "source": self.source,
            "created_at": iso(self.created_at),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LogLine:
        """A line as an external daemon sent it: whatever is malformed is replaced, never raised."""
        try:
            created = parse_datetime(str(data.get("created_at") or "")) or timezone.now()
        except ValueError:  # well-formed but impossible, like February 30th
            created = timezone.now()
        if timezone.is_naive(created):
            created = created.replace(tzinfo=UTC)
        level = str(data.get("level") or "info")
        return cls(
            output=str(data.get("output", "")),
            level=level if level in LOG_LEVELS else "info",
            stage=str(data.get("stage") or "")[:128],
            source=str(data.get("source") or "provisioner")[:32],
            created_at=created,
        )


class SinkLost(Exception):
    """The sink can no longer reach the job's store (an external daemon's connection dropped)."""


class JobSink(Protocol):
    def append_logs(self, lines: list[LogLine]) -> None: ...

    def check(self, beat: bool) -> str:
        """RUNNING, CANCELED or GONE (ended by someone else); `beat` also records a heartbeat."""

    def finish(self, error: str) -> str | None:
        """Record the outcome; the stored status, or None when the job had already ended."""


class JobContext:
    """What a provisioner sees of the daemon: log lines out, "stop now" in."""

    def __init__(
        self,
        spec: JobSpec,
        sink: JobSink,
        *,
        data_dir: Path,
        closing: threading.Event,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.spec = spec
        self.sink = sink
        self.data_dir = Path(data_dir)
        self.closing = closing
        self.heartbeat_interval = heartbeat_interval
        self.monotonic = monotonic
        self.stop_reason: str | None = None
        self._buffer: list[LogLine] = []
        self.log_limit = LOG_LIMIT_BYTES
        self._log_bytes = 0
        self._overflowed = False  # once past the cap, only error lines are stored
        self._dropped_lines = self._dropped_bytes = 0
        now = monotonic()
        self._last_flush = self._last_check = self._last_beat = now

    def log(self, output: str, level: str = "info", stage: str | None = None) -> None:
        size = len(output.encode("utf-8", errors="replace"))
        # Error lines (the provisioner's own word on how it ended) are stored past the cap.
        if level != "error" and (self._overflowed or self._log_bytes + size > self.log_limit):
            if not self._overflowed:
                self._overflowed = True
                self._store(
                    f"The job's logs reached the limit of {_size(self.log_limit)}: "
                    "further output is not stored.",
                    "warn",
                    stage,
                )
            self._dropped_lines += 1
            self._dropped_bytes += size
            return
        self._log_bytes += size
        self._store(output, level, stage)

    def close_logs(self) -> None:
        """Say what the cap dropped, if anything (one line past the cap)."""
        if self._dropped_lines:
            self._store(
                f"{self._dropped_lines} line(s) of output ({_size(self._dropped_bytes)}) were not stored.",
                "warn",
                None,
            )
            self._dropped_lines = 0

    def _store(self, output: str, level: str, stage: str | None) -> None:
        self._buffer.append(LogLine(output=output, level=level, stage=stage or stage_for(self.spec)))
        if len(self._buffer) >= FLUSH_LINES:
            self.flush()

    def flush(self) -> None:
        if not self._buffer or self.stop_reason in (STOP_GONE, STOP_LOST):
            self._buffer.clear()
            return
        lines, self._buffer = self._buffer, []
        self._last_flush = self.monotonic()
        try:
            self.sink.append_logs(lines)
        except SinkLost:
            self.stop_reason = STOP_LOST
        except Exception as exc:  # a busy database: keep the lines, in order, for the next flush
            if not outages.note_database_error(exc):
                log.warning("job %s: could not store logs; will retry", self.spec.job_id, exc_info=True)
            self._buffer[:0] = lines

    def should_stop(self) -> bool:
        """Flush, heart-beat and look for a cancel when due; cheap enough to call in a tight loop."""
        if self.stop_reason is None and self.closing.is_set():
            self.stop_reason = STOP_CLOSED
        if self.stop_reason is not None:
            return True
        now = self.monotonic()
        if self._buffer and now - self._last_flush >= FLUSH_INTERVAL:
            self.flush()
        if self.stop_reason is None and now - self._last_check >= CHECK_INTERVAL:
            self._last_check = now
            beat = now - self._last_beat >= self.heartbeat_interval
            try:
                state = self.sink.check(beat)
            except SinkLost:
                self.stop_reason = STOP_LOST
                return True
            except Exception as exc:  # a busy database: try again at the next check
                if not outages.note_database_error(exc):
                    log.warning("job %s: heartbeat failed", self.spec.job_id, exc_info=True)
                return False
            if beat:
                self._last_beat = now
            if state == CANCELED:
                self.stop_reason = STOP_CANCELED
            elif state == GONE:
                self.stop_reason = STOP_GONE
        return self.stop_reason is not None

    def sleep(self, seconds: float) -> bool:
        """Wait, still heart-beating; False as soon as the job must stop."""
        deadline = self.monotonic() + max(0.0, seconds)
        while True:
            if self.should_stop():
                return False
            remaining = deadline - self.monotonic()
            if remaining <= 0:
                return True
            self.closing.wait(min(remaining, CHECK_INTERVAL / 2))


def _size(n: int) -> str:
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:g} {unit}" if n % scale == 0 else f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


@dataclass(frozen=True)
class Outcome:
    status: str | None  # as stored; None when someone else (the reaper, a lost link) ended the job
    error: str
    seconds: float
    stopped: str | None = None  # why it stopped early: canceled, closed, gone or lost


def log_outcome(logger: logging.Logger, prefix: str, spec: JobSpec, outcome: Outcome) -> None:
    """One line per finished job, for both kinds of daemon: a failure (or a job whose end this daemon
    could not record) at WARNING with its error, so it stands out from the running traffic."""
    what = spec.describe()
    if outcome.status in ("succeeded", "canceled"):
        logger.info("%s%s: %s in %.1f s", prefix, outcome.status, what, outcome.seconds)
    elif outcome.status is None:
        reason = ERRORS.get(outcome.stopped or "", "") or "another party (the reaper, coderd) ended it"
        logger.warning("%sended without an outcome from this daemon: %s: %s", prefix, what, reason)
    else:
        logger.warning(
            "%s%s: %s after %.1f s: %s", prefix, outcome.status, what, outcome.seconds, outcome.error
        )


def _finish(spec: JobSpec, sink: JobSink, ctx: JobContext, error: str) -> str | None:
    # The outcome must be stored: a busy database is retried; only a lost link gives up (the
    # server fails the job itself, or the reaper does).
    delay = 0.1
    for attempt in range(FINISH_ATTEMPTS):
        try:
            if ctx._buffer:
                ctx.flush()
            return sink.finish(error)
        except SinkLost:
            ctx.stop_reason = STOP_LOST
            return None
        except Exception as exc:
            if attempt == FINISH_ATTEMPTS - 1:
                raise
            if not outages.note_database_error(exc):
                log.warning("job %s: could not record the outcome; retrying", spec.job_id, exc_info=True)
            ctx.closing.wait(delay)
            delay = min(delay * 2, 2.0)
    return None


def _safe(what: str, call: Callable[[], Any]) -> None:
    try:
        call()
    except Exception:  # metrics must never break a job
        log.exception("observer %s failed", what)


def execute_job(
    spec: JobSpec,
    sink: JobSink,
    runners: dict[str, Provisioner],
    *,
    data_dir: Path,
    closing: threading.Event,
    observer: JobObserver | None = None,
    heartbeat_interval: float = HEARTBEAT_INTERVAL,
    monotonic: Callable[[], float] = time.monotonic,
) -> Outcome:
    observer = observer or NullObserver()
    ctx = JobContext(
        spec,
        sink,
        data_dir=data_dir,
        closing=closing,
        heartbeat_interval=heartbeat_interval,
        monotonic=monotonic,
    )
    started = monotonic()
    runner = runners.get(spec.provisioner)
    try:
        with observer.running(spec.provisioner):
            if runner is None:
                result = RunResult(error=f"This daemon has no provisioner named {spec.provisioner!r}.")
            else:
                try:
                    result = runner.run(spec, ctx)
                except Exception as exc:
                    log.exception("job %s: provisioner %s crashed", spec.job_id, spec.provisioner)
                    result = RunResult(error=f"The {spec.provisioner} provisioner crashed: {exc!r}")
            ctx.should_stop()  # a cancel that landed at the very end still counts
            ctx.close_logs()
            ctx.flush()
    except Exception:
        log.exception("observer running() failed")
        result = RunResult(error="The provisioner daemon failed while running the job.")
    error = ERRORS.get(ctx.stop_reason or "", "") or result.error
    status: str | None = None
    if ctx.stop_reason not in (STOP_GONE, STOP_LOST):
        status = _finish(spec, sink, ctx, error)
    seconds = monotonic() - started
    if status is not None:
        build = spec.build_info()
        _safe(
            "job_finished",
            lambda: observer.job_finished(spec.provisioner, status == "succeeded", seconds, build),
        )
    elif ctx.stop_reason == STOP_LOST:
        # Nobody will hear from this daemon about the job: count it here, as failed.
        build = spec.build_info()
        _safe("job_finished", lambda: observer.job_finished(spec.provisioner, False, seconds, build))
    return Outcome(status=status, error=error, seconds=seconds, stopped=ctx.stop_reason)
