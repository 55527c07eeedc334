"""metrics.multiprocess: the layouts of worker files it keeps between scrapes never go stale."""

from __future__ import annotations

import os
import struct
import threading

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector

from metrics.multiprocess import CachingMultiProcessCollector

LATENCY = "coderd_api_request_latencies_seconds"
REQUESTS = "coderd_api_requests_processed"


def write(path, entries: list[tuple[str, str, dict[str, str], float]]) -> None:
    f = MmapedDict(str(path))
    for metric, sample, labels, value in entries:
        f.write_value(
            mmap_key(metric, sample, list(labels), list(labels.values()), f"{metric} help"), value, 0.0
        )
    f.close()


def worker(directory, pid: int, routes: range, scale: float, kinds=("counter", "histogram")) -> None:
    """A worker's files, written aside then moved in (as a new file, like a new start would make)."""
    counters, histogram = [], []
    for r in routes:
        labels = {"method": "GET", "path": f"/r{r}/{{id}}"}
        counters.append((REQUESTS, f"{REQUESTS}_total", {"code": "200", **labels}, scale * (r + 1)))
        for i, le in enumerate(("0.001", "0.1", "1.0", "+Inf")):
            histogram.append((LATENCY, f"{LATENCY}_bucket", {**labels, "le": le}, scale * (i + r)))
        histogram.append((LATENCY, f"{LATENCY}_count", labels, 0.0))
        histogram.append((LATENCY, f"{LATENCY}_sum", labels, scale * 0.125 * r))
    aside = directory.parent / f"aside-{directory.name}"
    aside.mkdir(exist_ok=True)
    for kind, entries in (("counter", counters), ("histogram", histogram)):
        if kind in kinds:
            write(aside / f"{kind}_{pid}.db", entries)
            os.replace(aside / f"{kind}_{pid}.db", directory / f"{kind}_{pid}.db")


def samples(registry) -> list:
    return sorted(
        (f.name, f.type, f.documentation, s.name, sorted(s.labels.items()), s.value)
        for f in registry.collect()
        for s in f.samples
    )


def pair(directory) -> tuple[CollectorRegistry, CollectorRegistry, CachingMultiProcessCollector]:
    stock, ours = CollectorRegistry(), CollectorRegistry()
    MultiProcessCollector(stock, path=str(directory))
    collector = CachingMultiProcessCollector(ours, path=str(directory))
    return stock, ours, collector


@pytest.fixture
def mp(tmp_path):
    directory = tmp_path / "mp"
    directory.mkdir()
    return directory


def test_it_follows_values_written_in_place_and_keys_appended(mp):
    worker(mp, 11, range(5), 1.0)
    worker(mp, 12, range(5), 3.0)
    stock, ours, collector = pair(mp)
    first = samples(ours)
    assert first == samples(stock)
    assert any(name == f"{LATENCY}_bucket" for _, _, _, name, _, _ in first)

    # A worker goes on: values change in place, new label sets are appended (past the first page).
    f = MmapedDict(str(mp / "counter_11.db"))
    for r in range(300):
        labels = {"code": "404", "method": "GET", "path": f"/r{r}/{{id}}"}
        f.write_value(
            mmap_key(REQUESTS, f"{REQUESTS}_total", list(labels), list(labels.values()), f"{REQUESTS} help"),
            7.5,
            0.0,
        )
    labels = {"code": "200", "method": "GET", "path": "/r0/{id}"}
    f.write_value(
        mmap_key(REQUESTS, f"{REQUESTS}_total", list(labels), list(labels.values()), f"{REQUESTS} help"),
        1000.0,
        0.0,
    )
    f.close()
    second = samples(ours)
    assert second == samples(stock)
    assert second != first
    assert (
        REQUESTS,
        "counter",
        f"{REQUESTS} help",
        f"{REQUESTS}_total",
        sorted(labels.items()),
        1003.0,
    ) in second

    # Values only: the layouts and the shape are reused, and still right.
    shape = collector._shape
    f = MmapedDict(str(mp / "histogram_12.db"))
    labels = {"method": "GET", "path": "/r4/{id}", "le": "+Inf"}
    f.write_value(
        mmap_key(LATENCY, f"{LATENCY}_bucket", list(labels), list(labels.values()), f"{LATENCY} help"),
        99.0,
        0.0,
    )
    f.close()
    third = samples(ours)
    assert collector._shape is shape
    assert third == samples(stock)
    assert third != second


def test_it_reads_afresh_a_file_replaced_under_the_same_name(mp):
    worker(mp, 21, range(3), 1.0)
    stock, ours, _ = pair(mp)
    assert samples(ours) == samples(stock)
    # A new start (the directory emptied) where a worker got the same pid: other keys, same name.
    worker(mp, 21, range(10, 16), 2.0)
    after = samples(ours)
    assert after == samples(stock)
    assert not any(("path", "/r0/{id}") in labels for _, _, _, _, labels, _ in after)
    assert any(("path", "/r15/{id}") in labels for _, _, _, _, labels, _ in after)


def test_it_adds_a_new_workers_files_and_forgets_removed_ones(mp):
    worker(mp, 31, range(4), 1.0, kinds=("counter",))
    stock, ours, _ = pair(mp)
    assert samples(ours) == samples(stock)
    worker(mp, 32, range(2, 8), 0.5)
    assert samples(ours) == samples(stock)
    os.remove(mp / "counter_31.db")
    left = samples(ours)
    assert left == samples(stock)
    assert not any(("path", "/r0/{id}") in labels for _, _, _, _, labels, _ in left)


def test_it_sums_one_series_written_under_two_help_texts_as_prometheus_client_does(mp):
    write(mp / "counter_41.db", [(REQUESTS, f"{REQUESTS}_total", {"code": "200"}, 1.0)])
    f = MmapedDict(str(mp / "counter_41.db"))
    f.write_value(mmap_key(REQUESTS, f"{REQUESTS}_total", ["code"], ["200"], "another help"), 2.0, 0.0)
    f.close()
    stock, ours, _ = pair(mp)
    assert samples(ours) == samples(stock)
    assert [s[-1] for s in samples(ours)] == [3.0]


def test_it_serves_concurrent_scrapes_while_workers_append(mp):
    worker(mp, 51, range(3), 1.0)
    _, ours, _ = pair(mp)
    errors: list[BaseException] = []
    done = threading.Event()

    def scrape() -> None:
        try:
            while not done.is_set():
                list(ours.collect())
        except BaseException as exc:
            errors.append(exc)
            done.set()

    threads = [threading.Thread(target=scrape) for _ in range(3)]
    for t in threads:
        t.start()
    f = MmapedDict(str(mp / "counter_51.db"))
    for r in range(400):  # new label sets while the scrapes run
        labels = {"code": "201", "method": "POST", "path": f"/n{r}"}
        f.write_value(
            mmap_key(REQUESTS, f"{REQUESTS}_total", list(labels), list(labels.values()), f"{REQUESTS} help"),
            1.0,
            0.0,
        )
    f.close()
    done.set()
    for t in threads:
        t.join()
    assert errors == []
    stock = CollectorRegistry()
    MultiProcessCollector(stock, path=str(mp))
    assert samples(ours) == samples(stock)


def test_it_reads_afresh_a_file_rewritten_in_place_to_the_same_size(mp):
    worker(mp, 61, range(1, 4), 1.0)
    stock, ours, _ = pair(mp)
    assert samples(ours) == samples(stock)
    # Same inode, same `used`, other keys of the same lengths (/r5../r7 for /r1../r3).
    other = mp.parent / "other"
    other.mkdir()
    worker(other, 61, range(5, 8), 2.0)
    for kind in ("counter", "histogram"):
        with open(mp / f"{kind}_61.db", "r+b") as f:
            f.write((other / f"{kind}_61.db").read_bytes())
    after = samples(ours)
    assert after == samples(stock)
    assert any(("path", "/r7/{id}") in labels for _, _, _, _, labels, _ in after)
    assert not any(("path", "/r1/{id}") in labels for _, _, _, _, labels, _ in after)


def test_it_skips_the_empty_files_of_a_worker_that_is_starting(mp):
    """MmapedDict creates a file empty, then sizes it: a scrape in between still answers."""
    worker(mp, 101, range(3), 1.0)
    gauge = "coderd_api_concurrent_requests"
    write(mp / "gauge_livesum_101.db", [(gauge, gauge, {}, 2.0)])
    stock, ours, _ = pair(mp)
    expected = samples(stock)
    for kind in ("counter", "histogram", "gauge_livesum"):
        (mp / f"{kind}_202.db").touch()  # the new worker, between open() and truncate()
    assert samples(ours) == expected
    with pytest.raises(struct.error):  # the stock reader alone fails the whole scrape
        samples(stock)
