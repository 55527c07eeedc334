"""Start-up and shut-down hooks of the process that serves (`manage.py server`, `runserver`).

Apps register callbacks (in their AppConfig.ready(), registration only) and the serving commands
call `serve_started()` once, in the process that actually serves: never in runserver's autoreloader
parent, never in other management commands. A start hook may put a JobObserver in the context
(the metrics app does) for the in-process provisioner daemons, and may add a stop callback.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class ServeContext:
    command: str  # "server" or "runserver"
    observer: Any = None  # a provisioner.observer.JobObserver, or None
    stops: list[Callable[[], None]] = field(default_factory=list)


_start_hooks: list[tuple[int, Callable[[ServeContext], None]]] = []
_lock = threading.Lock()


def on_serve_start(hook: Callable[[ServeContext], None], order: int = 100) -> Callable[[ServeContext], None]:
    """Register `hook(ctx)`; lower `order` runs first (metrics: 10, so its observer is there for
    the daemons). Registering the same function twice is a no-op."""
    with _lock:
        if all(h is not hook for _, h in _start_hooks):
            _start_hooks.append((order, hook))
            _start_hooks.sort(key=lambda pair: pair[0])
    return hook


def serve_started(command: str) -> ServeContext:
    """Run every start hook; a hook that fails is logged, the others still run."""
    ctx = ServeContext(command=command)
    with _lock:
        hooks = [h for _, h in _start_hooks]
    for hook in hooks:
        try:
            hook(ctx)
        except SystemExit:
            raise
        except Exception:
            log.exception("serve start hook %s failed", getattr(hook, "__qualname__", hook))
    return ctx


def serve_stopping(ctx: ServeContext) -> None:
    """Run the stop callbacks the start hooks added, last first."""
    while ctx.stops:
        stop = ctx.stops.pop()
        try:
            stop()
        except Exception:
            log.exception("serve stop callback failed")
