"""prometheus_client's MultiProcessCollector, made cheap enough to scrape gunicorn every few seconds.

The stock collector decodes every key of every worker's file (a JSON string per sample) and sorts
its labels on every scrape, then merges through nested defaultdicts. With 2 workers and 100 route
patterns in use that is ~6,000 keys a scrape. Here, for counter and histogram files:
- a key is parsed once and kept (keys only come from declared metrics and label sets, so the cache
  is bounded by the series count; it is dropped if it ever grows past MAX_KEYS);
- a file's layout is read once: an MmapedDict only ever appends keys (values change in place), so
  the offsets of the values before its `used` mark stay valid, and only what was appended since is
  parsed. The layout is kept with the file's inode and a check of its first and last keys' bytes,
  so a file replaced under the same name is read afresh. Each scrape reads the values at those
  offsets, all of a file in one `struct` call;
- the shape of the result (families, label sets, bucket order) is rebuilt only when a file is
  added or grows; a scrape only adds up the values and fills it.
Gauge files (few samples, several multiprocess modes) go through the stock code unchanged.

A worker that is starting creates its files empty and only then sizes them (MmapedDict opens,
then truncates to 1 MiB): a file seen in that instant has no header yet and is skipped, by this
reader and before the stock one (which would raise on it and fail the whole scrape).

The result is the same families and samples as `MultiProcessCollector.merge(files)`: counters
summed over every file, dead workers' included; histogram buckets summed then made cumulative, with
`_count` equal to the `+Inf` bucket.
"""

from __future__ import annotations

import glob
import json
import mmap
import os
import struct
import threading
from collections.abc import Iterable

from prometheus_client.metrics_core import Metric
from prometheus_client.mmap_dict import _read_all_values
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

MAX_KEYS = 200_000

# metric name, sample name, labels (sorted, without `le`), help, bucket bound (histogram buckets)
_Parsed = tuple[str, str, tuple[tuple[str, str], ...], str, float | None]


def _parse(key: str, typ: str) -> _Parsed:
    metric_name, name, labels, help_text = json.loads(key)
    le = None
    if typ == "histogram" and "le" in labels:
        le = float(labels.pop("le"))
    return metric_name, name, tuple(sorted(labels.items())), help_text, le


_used = struct.Struct("i").unpack_from  # the file's `used` mark, in the writer's (native) order


class _Layout:
    """Where one file's entries are, up to `used`: their slots and the offsets of their values."""

    __slots__ = ("serial", "ino", "used", "slots", "offsets", "checks", "values")

    def __init__(self, serial: int, ino: int) -> None:
        self.serial = serial  # tells this layout from the one it replaced (same path, inode and size)
        self.ino = ino
        self.used = 8  # MmapedDict's header
        self.slots: list[int] = []
        self.offsets: list[int] = []
        self.checks: list[tuple[int, bytes]] = []  # (offset, bytes) of the first and last keys
        self.values = struct.Struct("=")

    def valid_for(self, ino: int, used: int, data: bytes) -> bool:
        return (
            ino == self.ino
            and used >= self.used
            and all(data[pos : pos + len(raw)] == raw for pos, raw in self.checks)
        )


def _read(path: str) -> tuple[int, int, bytes] | None:
    """(inode, used, bytes up to used) of a worker file, as MmapedDict.read_all_values_from_file reads it."""
    try:
        with open(path, "rb") as f:
            ino = os.fstat(f.fileno()).st_ino
            data = f.read(mmap.PAGESIZE)
            if len(data) < 8:
                return None  # created by a starting worker, not sized yet: nothing in it
            used = _used(data, 0)[0]
            if used > len(data):
                data += f.read(used - len(data))
    except FileNotFoundError:
        return None
    return ino, used, data


class CachingMultiProcessCollector(MultiProcessCollector):
    def __init__(self, registry, path: str | None = None) -> None:
        super().__init__(registry, path)
        self._keys: dict[str, _Parsed] = {}
        self._bounds: dict[float, str] = {}
        self._slots: dict[tuple, int] = {}  # (type, series) -> its place in a scrape's sums
        self._parsed: list[tuple[str, _Parsed]] = []  # slot -> (type, parsed key)
        self._layouts: dict[str, _Layout] = {}
        self._serial = 0
        self._shape_of: tuple | None = None  # the files (path, layout, used) the shape was built from
        self._shape: list = []
        # Scrapes run in threads of their own (the listener's); the layouts and the shape they
        # share are updated in place, so one scrape merges at a time (a few ms each).
        self._lock = threading.Lock()

    def collect(self) -> Iterable[Metric]:
        files = glob.glob(os.path.join(self._path, "*.db"))
        fast, rest = [], []
        for f in files:
            (fast if os.path.basename(f).startswith(("counter_", "histogram_")) else rest).append(f)
        with self._lock:
            families = self._merge(fast)
        rest = [f for f in rest if _sized(f)]
        if rest:
            families.extend(self.merge(rest, accumulate=True))
        return families

    def _merge(self, files: list[str]) -> list[Metric]:
        if len(self._keys) > MAX_KEYS:
            self._keys.clear()
            self._slots.clear()
            self._parsed.clear()
            self._layouts.clear()
            self._shape_of = None
        read = []  # (layout, data) of every file still there
        for path in files:
            got = _read(path)
            if got is None:
                continue
            ino, used, data = got
            layout = self._layouts.get(path)
            if layout is None or not layout.valid_for(ino, used, data):
                self._serial += 1
                layout = self._layouts[path] = _Layout(self._serial, ino)
            if used > layout.used:
                self._extend(layout, os.path.basename(path).split("_", 1)[0], data, used)
            read.append((path, layout, data))
        signature = tuple((path, layout.serial, layout.used) for path, layout, _ in read)
        if signature != self._shape_of:
            self._shape = self._build_shape([layout for _, layout, _ in read])
            self._shape_of = signature
        sums = [0.0] * len(self._parsed)
        for _, layout, data in read:
            for slot, value in zip(layout.slots, layout.values.unpack_from(data), strict=True):
                sums[slot] += value
        return self._fill(sums)

    def _extend(self, layout: _Layout, typ: str, data: bytes, used: int) -> None:
        """Parse what was appended to a file since `layout.used` (prometheus_client's own reader)."""
        keys, slots = self._keys, self._slots
        for key, _value, _timestamp, pos in _read_all_values(data, used):
            if pos < layout.used:
                continue  # already known: prometheus_client's reader always starts at the top
            parsed = keys.get(key)
            if parsed is None:
                parsed = keys[key] = _parse(key, typ)
            series = (typ, parsed[0], parsed[1], parsed[2], parsed[4])  # HELP aside, as merge() does
            slot = slots.get(series)
            if slot is None:
                slot = slots[series] = len(self._parsed)
                self._parsed.append((typ, parsed))
            layout.slots.append(slot)
            layout.offsets.append(pos)
            if len(layout.checks) < 2:
                layout.checks.append((0, b""))
            raw = key.encode()
            layout.checks[-1] = (pos - _padded(len(raw)), raw)
            if len(layout.offsets) == 1:
                layout.checks[0] = layout.checks[-1]
        layout.used = used
        fmt, at = ["="], 0
        for pos in layout.offsets:
            fmt.append(f"{pos - at}xd")
            at = pos + 8
        layout.values = struct.Struct("".join(fmt))

    def _build_shape(self, layouts: list[_Layout]) -> list:
        """The families, in the order and with the samples `MultiProcessCollector.merge` gives."""
        kinds: dict[str, tuple[str, str]] = {}  # metric name -> (type, help)
        singles: dict[str, dict[tuple[str, tuple], int]] = {}  # metric -> (sample, labels) -> slot
        buckets: dict[str, dict[tuple, dict[float, int]]] = {}  # metric -> labels -> bound -> slot
        for layout in layouts:
            for slot in layout.slots:
                typ, (metric_name, name, labels, help_text, le) = self._parsed[slot]
                if metric_name not in kinds:
                    kinds[metric_name] = (typ, help_text)
                    singles[metric_name], buckets[metric_name] = {}, {}
                if le is not None:
                    buckets[metric_name].setdefault(labels, {})[le] = slot
                elif typ == "histogram" and name.endswith("_count"):
                    continue  # recomputed from the buckets, as the stock collector does
                else:
                    singles[metric_name].setdefault((name, labels), slot)
        shape = []
        for metric_name, (typ, help_text) in kinds.items():
            metric_singles = singles[metric_name]
            histograms = []
            if typ == "histogram":
                for labels, by_bound in buckets[metric_name].items():
                    label_dict = dict(labels)
                    bucket_samples = [
                        (by_bound[b], {**label_dict, "le": self._bound(b)}) for b in sorted(by_bound)
                    ]
                    total = metric_singles.pop((f"{metric_name}_sum", labels), None)
                    histograms.append((bucket_samples, label_dict, total))
            rest = [(name, dict(labels), slot) for (name, labels), slot in metric_singles.items()]
            shape.append((metric_name, help_text, typ, histograms, rest))
        return shape

    def _fill(self, sums: list[float]) -> list[Metric]:
        out = []
        for metric_name, help_text, typ, histograms, rest in self._shape:
            metric = Metric(metric_name, help_text, typ)
            samples = metric.samples
            if histograms:
                bucket_name, count_name, sum_name = (f"{metric_name}_{s}" for s in ("bucket", "count", "sum"))
                for bucket_samples, label_dict, total in histograms:
                    acc = 0.0
                    for slot, labels in bucket_samples:
                        acc += sums[slot]
                        samples.append(Sample(bucket_name, labels, acc))
                    samples.append(Sample(count_name, label_dict, acc))
                    if total is not None:
                        samples.append(Sample(sum_name, label_dict, sums[total]))
            for name, labels, slot in rest:
                samples.append(Sample(name, labels, sums[slot]))
            out.append(metric)
        return out

    def _bound(self, bound: float) -> str:
        text = self._bounds.get(bound)
        if text is None:
            text = self._bounds[bound] = floatToGoString(bound)
        return text


def _sized(path: str) -> bool:
    """Whether a file has its header: a file only grows, so the stock reader that follows is safe."""
    try:
        return os.stat(path).st_size >= 8
    except FileNotFoundError:
        return False  # a dead worker's 'live' gauge file, removed since the glob


def _padded(length: int) -> int:
    """The bytes MmapedDict gives a key of `length` bytes (padded so its value is 8-byte aligned)."""
    return length + (8 - (length + 4) % 8)
