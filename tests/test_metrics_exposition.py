"""The cached exposition (metrics.serving.CachedEncoder) writes exactly what prometheus_client writes."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Exemplar, Sample

from metrics.process import ProcessCollector
from metrics.registry import build_metrics
from metrics.serving import CachedEncoder, cached_encoder

ACCEPTS = [
    None,  # the text format 0.0.4
    "text/plain;version=1.0.0;escaping=allow-utf-8",
    "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",  # Prometheus
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8",
    "application/openmetrics-text;version=1.0.0;escaping=dots",
    "application/openmetrics-text",
]


class Odd:
    """Families the cache must hand to the encoder whole, or whose names need escaping."""

    def __init__(self) -> None:
        self.value = 1.0

    def collect(self):
        created = Metric("odd_requests", "With a _created sample.", "counter")
        created.samples += [
            Sample("odd_requests_total", {"a": "1"}, self.value),
            Sample("odd_requests_created", {"a": "1"}, 1700000000.0),
        ]
        stamped = Metric("odd_stamped", "A sample with a timestamp.", "gauge")
        stamped.samples.append(Sample("odd_stamped", {}, self.value, timestamp=1700000000.5))
        exemplar = Metric("odd_exemplar", "A bucket with an exemplar.", "histogram")
        exemplar.samples += [
            Sample("odd_exemplar_bucket", {"le": "+Inf"}, self.value, exemplar=Exemplar({"trace": "x"}, 0.5)),
            Sample("odd_exemplar_count", {}, self.value),
            Sample("odd_exemplar_sum", {}, 0.5),
        ]
        escaped = Metric("odd.dotted-name", 'Help with "quotes", \\ and\na newline.', "gauge")
        escaped.samples += [
            Sample("odd.dotted-name", {"path": 'a "quoted"\\ path\nline', "ünï": "ç"}, self.value),
            Sample("odd.dotted-name", {}, float("nan")),
            Sample("odd.dotted-name", {"x": "inf"}, float("inf")),
            Sample("odd.dotted-name", {"x": "-inf"}, float("-inf")),
            Sample("odd.dotted-name", {"x": "big"}, 1.5e300),
        ]
        unit = Metric("odd_size_bytes", "With a unit.", "gauge", unit="bytes")
        unit.samples.append(Sample("odd_size_bytes", {"z": "1", "a": "2"}, -0.0))
        return [created, stamped, exemplar, escaped, unit]


def realistic_registry(routes: int = 100) -> tuple[CollectorRegistry, object, Odd]:
    registry = CollectorRegistry()
    metrics = build_metrics(registry, legacy=True)
    ProcessCollector(registry=registry)
    odd = Odd()
    registry.register(odd)
    for r in range(routes):
        for code, seconds in ((200, 0.003), (404, 0.4), (500, 12.0)):
            metrics.observe_request("GET", f"/api/v2/things{r}/{{thing}}", code, seconds * (r + 1) / routes)
    metrics.observe_websocket("/api/v2/workspaceagents/{agent}/watch", 101, 61.5)
    metrics.scrapes.labels("200").inc()
    return registry, metrics, odd


@pytest.mark.parametrize("accept", ACCEPTS)
def test_it_writes_the_same_bytes_as_prometheus_client(accept):
    registry, metrics, odd = realistic_registry()
    encoder, _ = choose_encoder(accept)
    cached = CachedEncoder(encoder)
    # ProcessCollector reads /proc at each collect: compare renderings of the same families.
    families = list(registry.collect())
    frozen = type("Frozen", (), {"collect": lambda self: iter(families)})()
    first = cached(frozen)
    assert first == encoder(frozen)
    assert b'path="/api/v2/things99/{thing}"' in first
    # Values change, label sets come and go: the cached lines follow.
    for r in range(100):
        metrics.observe_request("GET", f"/api/v2/things{r}/{{thing}}", 200, 0.05)
    metrics.observe_request("POST", "/api/v2/new/{thing}", 201, 0.01)
    odd.value = 2.5
    families = list(registry.collect())
    second = cached(frozen)
    assert second == encoder(frozen)
    assert second != first
    assert b'path="/api/v2/new/{thing}"' in second


def test_it_keeps_one_cache_per_format():
    text, text_type = choose_encoder(None)
    om, om_type = choose_encoder("application/openmetrics-text;version=1.0.0")
    assert cached_encoder(text_type, text) is cached_encoder(text_type, text)
    assert cached_encoder(om_type, om) is not cached_encoder(text_type, text)
    assert cached_encoder(om_type, om).trailer == b"# EOF\n"
    assert cached_encoder(text_type, text).trailer == b""


def test_it_drops_its_cache_past_its_bound(monkeypatch):
    registry, metrics, _ = realistic_registry(routes=5)
    encoder, _ = choose_encoder(None)
    cached = CachedEncoder(encoder)
    monkeypatch.setattr(CachedEncoder, "MAX_ENTRIES", 10)
    families = list(registry.collect())
    frozen = type("Frozen", (), {"collect": lambda self: iter(families)})()
    assert cached(frozen) == encoder(frozen)
    assert cached(frozen) == encoder(frozen)
    assert len(cached._prefixes) < 200  # cleared on the way rather than grown without bound
