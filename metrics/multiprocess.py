"""prometheus_client's MultiProcessCollector, made cheap enough to scrape gunicorn every few seconds.

The stock collector decodes every key of every worker's file (a JSON string per sample) and sorts
its labels on every scrape, then merges through nested defaultdicts. With 2 workers and 100 route
patterns in use that is ~6,000 keys a scrape. Here a key is parsed once and kept (keys only come
from declared metrics and label sets, so the cache is bounded by the series count; it is dropped
if it ever grows past MAX_KEYS), and counters and histograms are merged in flat dicts. Gauge files
(few samples, several multiprocess modes) go through the stock code unchanged.

The result is the same families and samples as `MultiProcessCollector.merge(files)`: counters
summed over every file, dead workers' included; histogram buckets summed then made cumulative, with
`_count` equal to the `+Inf` bucket.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterable

from prometheus_client.metrics_core import Metric
from prometheus_client.mmap_dict import MmapedDict
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


class CachingMultiProcessCollector(MultiProcessCollector):
    def __init__(self, registry, path: str | None = None) -> None:
        super().__init__(registry, path)
        self._keys: dict[str, _Parsed] = {}
        self._bounds: dict[float, str] = {}

    def collect(self) -> Iterable[Metric]:
        files = glob.glob(os.path.join(self._path, "*.db"))
        fast, rest = [], []
        for f in files:
            (fast if os.path.basename(f).startswith(("counter_", "histogram_")) else rest).append(f)
        families = self._merge(fast)
        if rest:
            families.extend(self.merge(rest, accumulate=True))
        return families

    def _merge(self, files: list[str]) -> list[Metric]:
        keys = self._keys
        if len(keys) > MAX_KEYS:
            keys.clear()
        kinds: dict[str, tuple[str, str]] = {}  # metric name -> (type, help)
        sums: dict[str, dict[tuple[str, tuple], float]] = {}
        buckets: dict[str, dict[tuple, dict[float, float]]] = {}
        for path in files:
            typ = os.path.basename(path).split("_", 1)[0]
            try:
                values = MmapedDict.read_all_values_from_file(path)
            except FileNotFoundError:
                continue
            for key, value, _timestamp, _pos in values:
                parsed = keys.get(key)
                if parsed is None:
                    parsed = keys[key] = _parse(key, typ)
                metric_name, name, labels, help_text, le = parsed
                if metric_name not in kinds:
                    kinds[metric_name] = (typ, help_text)
                    sums[metric_name], buckets[metric_name] = {}, {}
                if le is not None:
                    by_bound = buckets[metric_name].setdefault(labels, {})
                    by_bound[le] = by_bound.get(le, 0.0) + value
                elif typ == "histogram" and name.endswith("_count"):
                    continue  # recomputed from the buckets, as the stock collector does
                else:
                    s = sums[metric_name]
                    s[name, labels] = s.get((name, labels), 0.0) + value

        out = []
        for metric_name, (typ, help_text) in kinds.items():
            metric = Metric(metric_name, help_text, typ)
            samples = metric.samples
            if typ == "histogram":
                metric_sums = sums[metric_name]
                for labels, by_bound in buckets[metric_name].items():
                    label_dict = dict(labels)
                    acc = 0.0
                    for bound in sorted(by_bound):
                        acc += by_bound[bound]
                        samples.append(
                            Sample(f"{metric_name}_bucket", {**label_dict, "le": self._bound(bound)}, acc)
                        )
                    samples.append(Sample(f"{metric_name}_count", label_dict, acc))
                    total = metric_sums.pop((f"{metric_name}_sum", labels), None)
                    if total is not None:
                        samples.append(Sample(f"{metric_name}_sum", label_dict, total))
                for (name, labels), value in metric_sums.items():  # e.g. gauge histograms' _gsum
                    samples.append(Sample(name, dict(labels), value))
            else:
                for (name, labels), value in sums[metric_name].items():
                    samples.append(Sample(name, dict(labels), value))
            out.append(metric)
        return out

    def _bound(self, bound: float) -> str:
        text = self._bounds.get(bound)
        if text is None:
            text = self._bounds[bound] = floatToGoString(bound)
        return text
