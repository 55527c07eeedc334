"""The JobObserver (provisioner/observer.py) that feeds the job metrics.

In-process daemons get the server's observer (`metrics.serving.get_observer()`); an external
`provisionerd` builds its own state and listener; tests pass a fresh `CoderMetrics`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from metrics import runtime
from metrics.registry import BUILD_TRANSITION_LABEL, CoderMetrics
from provisioner.observer import BuildInfo


class MetricsJobObserver:
    def __init__(
        self,
        metrics: CoderMetrics | None = None,
        on_change: Callable[[], None] | None = runtime.mark_database_stale,
    ) -> None:
        # None: the process's current metrics, looked up at each call (tests swap them).
        self._metrics = metrics
        self._on_change = on_change

    @property
    def metrics(self) -> CoderMetrics:
        return self._metrics or runtime.get_metrics()

    def _changed(self) -> None:
        # A job's status moved: the latest-build gauges must recount at the next scrape, even when
        # the daemon wrote with update() (which sends no signal).
        if self._on_change is not None:
            self._on_change()

    @contextmanager
    def running(self, provisioner: str) -> Iterator[None]:
        gauge = self.metrics.jobs_current.labels(provisioner)
        gauge.inc()
        self._changed()
        try:
            yield
        finally:
            gauge.dec()

    def job_finished(
        self, provisioner: str, succeeded: bool, seconds: float, build: BuildInfo | None
    ) -> None:
        m = self.metrics
        status = "success" if succeeded else "failed"
        m.job_timings_seconds.labels(provisioner, status).observe(seconds)
        if m.job_timings_ms is not None:
            m.job_timings_ms.labels(provisioner, status).observe(seconds * 1000.0)
        if build is not None:
            # Both as Coder's provisionerdserver labels them: START, STOP, DESTROY.
            transition = BUILD_TRANSITION_LABEL.get(build.transition, build.transition.upper())
            m.workspace_builds.labels(
                build.workspace_owner,
                build.workspace_name,
                build.template_name,
                build.template_version,
                transition,
                status,
            ).inc()
            m.workspace_build_timings_seconds.labels(
                build.template_name, build.template_version, transition, status
            ).observe(seconds)
        self._changed()

    def job_acquired(
        self, provisioner: str, job_type: str, transition: str, build_reason: str, waited: float
    ) -> None:
        self.metrics.job_queue_wait.labels(provisioner, job_type, transition, build_reason).observe(
            max(waited, 0.0)
        )

    def daemon_started(self) -> None:
        self.metrics.num_daemons.inc()

    def daemon_stopped(self) -> None:
        self.metrics.num_daemons.dec()
