"""coderd's Prometheus metrics (METRICS.md). Entry points: `metrics.serving` (listener, start-up),
`metrics.runtime` (this process's state; the multiprocess seam), `metrics.registry` (every metric)."""


def get_observer():
    """The JobObserver feeding this process's metrics (for in-process provisioner daemons)."""
    from metrics.serving import get_observer as observer

    return observer()
