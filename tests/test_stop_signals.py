"""One Ctrl-C/SIGTERM rule for `manage.py server` and `manage.py provisionerd` (coderd.cli.StopSignals):
the first signal stops gracefully and says how to stop now, the second stops now."""

from __future__ import annotations

import logging
import signal

from coderd.cli import StopSignals


def make(busy: int) -> tuple[StopSignals, list[str]]:
    calls: list[str] = []
    stop = StopSignals(
        logging.getLogger("test.stop"),
        graceful=lambda: calls.append("graceful"),
        now=lambda: calls.append("now"),
        busy=lambda: busy,
    )
    return stop, calls


def test_it_stops_gracefully_then_now_and_says_how(caplog):
    stop, calls = make(busy=2)
    with caplog.at_level(logging.INFO, logger="test.stop"):
        stop.handle(signal.SIGINT)
        assert calls == ["graceful"] and stop.requested and not stop.forced
        stop.handle(signal.SIGINT)
        stop.handle(signal.SIGINT)  # a third changes nothing
    assert calls == ["graceful", "now"] and stop.forced
    assert [r.getMessage() for r in caplog.records] == [
        "received SIGINT: stopping",
        "waiting for 2 running job(s) to finish: press Ctrl-C again to stop now (they are recorded as failed)",
        "received SIGINT again: stopping running jobs now (they are recorded as failed)",
    ]


def test_it_says_the_wait_once_and_in_the_words_of_the_signal(caplog):
    stop, _ = make(busy=0)
    with caplog.at_level(logging.INFO, logger="test.stop"):
        stop.handle(signal.SIGTERM)
        stop.waiting_for(1)  # a job noticed later, by the thread that waits
        stop.waiting_for(1)
    assert [r.getMessage() for r in caplog.records] == [
        "received SIGTERM: stopping",
        "waiting for 1 running job(s) to finish: send SIGTERM again to stop now (they are recorded as failed)",
    ]
