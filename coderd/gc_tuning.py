"""The cyclic garbage collector of a serving process, tuned for a heap that is mostly start-up's.

After start-up a server holds ~160,000 objects (Django, ninja's schemas, the URL resolvers, the
models) that live as long as the process. Python's full (generation 2) collection walks all of them,
and it runs whenever the objects promoted since the last one reach a quarter of that heap: under 50
concurrent connections, requests in flight are promoted all the time, so a full collection came
every few seconds and stopped the server for 80-125 ms each (measured with `gc.callbacks`), the
requests' p99 latency. `gc.freeze()` moves everything alive after start-up into the permanent
generation, which no collection walks (what Instagram does before forking its workers; with
gunicorn's preload it also keeps the workers' copy-on-write pages shared).
"""

from __future__ import annotations

import gc


def settle_heap() -> None:
    """Collect start-up's garbage once, then leave what is alive out of every later collection."""
    gc.collect()
    gc.freeze()
