"""The external daemon: runs jobs on this machine for a coderd reached over its serve websocket.

It holds no database: coderd claims the job and sends its spec, the daemon runs the provisioner
and streams back logs, heartbeats and the outcome (see ProvisionerDaemonServeConsumer). When the
link drops it stops the running job, then reconnects with exponential backoff. `shutdown()` lets
the running job finish; `close()` stops it (it is recorded failed).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
from websockets.sync.client import ClientConnection, connect

from provisioner.execution import (
    HEARTBEAT_INTERVAL,
    STOP_LOST,
    LogLine,
    Outcome,
    SinkLost,
    execute_job,
    log_outcome,
)
from provisioner.observer import JobObserver, NullObserver
from provisioner.runners import KNOWN_PROVISIONERS, JobSpec, Provisioner, default_runners

log = logging.getLogger(__name__)

PSK_HEADER = "Coder-Provisioner-Daemon-PSK"
REPLY_TIMEOUT = 15.0
BACKOFF_INITIAL = 0.5
BACKOFF_MAX = 30.0
POLL_INTERVAL = 1.0


# Answers that retrying cannot change: a wrong key or an unknown organization (coderd closes the
# handshake: 403), a URL that is not coderd's (404). Anything else (a 502 from a proxy while coderd
# restarts, a refused connection) is retried with backoff.
FINAL_REFUSALS = frozenset({401, 403, 404})


class Refused(Exception):
    """coderd answered the handshake with an HTTP error (a wrong key, an unknown organization)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status

    @property
    def final(self) -> bool:
        return self.status in FINAL_REFUSALS


def serve_url(url: str, organization: str = "default") -> str:
    """http(s)://host[:port][/prefix] -> ws(s)://host[:port][/prefix]/api/v2/organizations/ORG/provisionerdaemons/serve"""
    parts = urlsplit(url.strip())
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None or not parts.hostname:
        raise ValueError(f"{url!r} is not an http(s) URL")
    path = (
        parts.path.rstrip("/")
        + f"/api/v2/organizations/{quote(organization, safe='')}/provisionerdaemons/serve"
    )
    return urlunsplit((scheme, parts.netloc, path, "", ""))


class Link:
    """One serve websocket: strictly request/reply (logs have no reply), used by one thread."""

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn

    def send(self, message: dict[str, Any]) -> None:
        try:
            self.conn.send(json.dumps(message))
        except (ConnectionClosed, OSError) as exc:
            raise SinkLost(str(exc)) from exc

    def request(self, message: dict[str, Any], reply_type: str) -> dict[str, Any]:
        self.send(message)
        while True:
            try:
                raw = self.conn.recv(timeout=REPLY_TIMEOUT)
            except (ConnectionClosed, OSError, TimeoutError) as exc:
                raise SinkLost(f"no reply to {message['type']}: {exc!r}") from exc
            try:
                reply = json.loads(raw)
            except ValueError:
                continue
            if reply.get("type") == reply_type:
                return reply
            if reply.get("type") == "error":
                raise SinkLost(f"coderd refused {message['type']}: {reply.get('message')}")

    def close(self) -> None:
        try:
            self.conn.close()
        except Exception:
            pass


class RemoteSink:
    def __init__(self, link: Link, job_id: str) -> None:
        self.link, self.job_id = link, job_id

    def append_logs(self, lines: list[LogLine]) -> None:
        self.link.send({"type": "logs", "job_id": self.job_id, "logs": [x.to_dict() for x in lines]})

    def check(self, beat: bool) -> str:
        # The server decides when to write the heartbeat; every call reads the cancel state.
        reply = self.link.request({"type": "heartbeat", "job_id": self.job_id}, "heartbeat")
        return str(reply.get("state") or "running")

    def finish(self, error: str) -> str | None:
        reply = self.link.request({"type": "complete", "job_id": self.job_id, "error": error}, "completed")
        return reply.get("status")


class RemoteDaemon:
    """An external daemon. `run()` is the loop; `run_once(link)` is one unit of work."""

    def __init__(
        self,
        url: str,
        psk: str,
        name: str,
        provisioners: list[str] | tuple[str, ...] = KNOWN_PROVISIONERS,
        *,
        organization: str = "default",
        observer: JobObserver | None = None,
        runners: dict[str, Provisioner] | None = None,
        data_dir: Path | None = None,
        poll_interval: float = POLL_INTERVAL,
        version: str = "",
        on_job: Callable[[JobSpec], None] = lambda spec: None,
    ) -> None:
        """`on_job` is told of each job as it starts running here (provisionerd's stop notice)."""
        from django.conf import settings

        self.url = serve_url(url, organization)
        self.origin = urlunsplit(
            ("https" if self.url.startswith("wss") else "http", urlsplit(self.url).netloc, "", "", "")
        )
        self.psk = psk
        self.name = name
        self.provisioners = list(provisioners)
        self.observer = observer or NullObserver()
        self.runners = runners or default_runners()
        self.data_dir = Path(data_dir or settings.DATA_DIR)
        self.poll_interval = poll_interval
        self.version = version
        self.daemon_id: str | None = None
        self.last_outcome: Outcome | None = None
        self.running: JobSpec | None = None  # the job being run, for the stop notice
        self.on_job = on_job
        self._stopping = threading.Event()
        self._closing = threading.Event()
        self._wake = threading.Event()

    # --- the link ---

    def open(self) -> Link:
        try:
            conn = connect(
                self.url,
                origin=self.origin,  # type: ignore[arg-type]
                additional_headers={PSK_HEADER: self.psk},
                proxy=None,
                open_timeout=10,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            raise Refused(f"coderd refused the connection (HTTP {status})", status) from exc
        link = Link(conn)
        try:
            welcome = link.request(
                {
                    "type": "hello",
                    "name": self.name,
                    "provisioners": self.provisioners,
                    "version": self.version,
                },
                "welcome",
            )
        except SinkLost:
            link.close()
            raise
        self.daemon_id = welcome.get("daemon_id")
        return link

    # --- one unit of work ---

    def run_once(self, link: Link) -> bool:
        """Ask for a job and run it to its end. False when none waits. Raises SinkLost."""
        if self._stopping.is_set():
            return False
        reply = self._acquire(link)
        if reply is None:
            return False
        spec = JobSpec.from_dict(reply)
        log.info("running %s", spec.describe())
        self.running = spec
        self.on_job(spec)
        try:
            self.last_outcome = execute_job(
                spec,
                RemoteSink(link, spec.job_id),
                self.runners,
                data_dir=self.data_dir,
                closing=self._closing,
                observer=self.observer,
                heartbeat_interval=HEARTBEAT_INTERVAL,
            )
        finally:
            self.running = None
        log_outcome(log, "", spec, self.last_outcome)
        if self.last_outcome.stopped == STOP_LOST:
            raise SinkLost("the link dropped during the job")
        return True

    def _acquire(self, link: Link) -> dict[str, Any] | None:
        link.send({"type": "acquire"})
        while True:
            try:
                raw = link.conn.recv(timeout=REPLY_TIMEOUT)
            except (ConnectionClosed, OSError, TimeoutError) as exc:
                raise SinkLost(f"no reply to acquire: {exc!r}") from exc
            try:
                reply = json.loads(raw)
            except ValueError:
                continue
            if reply.get("type") == "job":
                return reply.get("job") or None
            if reply.get("type") == "no_job":
                return None
            if reply.get("type") == "error":
                raise SinkLost(f"coderd refused acquire: {reply.get('message')}")

    # --- the loop ---

    def run(self) -> None:
        """Serve until shut down, reconnecting with backoff whenever the link is lost.

        Raises Refused when coderd refuses the daemon for good (see FINAL_REFUSALS)."""
        self.observer.daemon_started()
        backoff = BACKOFF_INITIAL
        try:
            while not self._stopping.is_set():
                try:
                    link = self.open()
                except (Refused, SinkLost, OSError, WebSocketException, TimeoutError) as exc:
                    if isinstance(exc, Refused) and exc.final:
                        raise
                    log.warning("cannot reach coderd at %s: %s; retrying in %.1f s", self.url, exc, backoff)
                    self._wake.wait(backoff)
                    self._wake.clear()
                    backoff = min(backoff * 2, BACKOFF_MAX)
                    continue
                log.info("connected to %s as %s", self.url, self.name)
                backoff = BACKOFF_INITIAL
                try:
                    while not self._stopping.is_set():
                        if not self.run_once(link):
                            self._wake.wait(self.poll_interval)
                            self._wake.clear()
                except SinkLost as exc:
                    log.warning("lost the link to coderd: %s; reconnecting", exc)
                finally:
                    link.close()
        finally:
            self.observer.daemon_stopped()

    def shutdown(self) -> None:
        """Graceful: take no new job; the running one finishes and is reported."""
        self._stopping.set()
        self._wake.set()

    def close(self) -> None:
        """Hard: stop the running job now (it is reported failed), then stop."""
        self._closing.set()
        self.shutdown()
