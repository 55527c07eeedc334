"""End to end: a real Prometheus server scrapes a running `manage.py server` listener on loopback."""

from __future__ import annotations

import pytest

from tests.services import (
    Prometheus,
    http_get,
    metrics_server,
    parse_samples,
    total,
    wait_for,
)


@pytest.fixture
def server(tmp_path):
    with metrics_server(tmp_path, daemons=2, name="coderd-metrics") as started:
        yield started


def test_it_is_scraped_and_queried_by_a_real_prometheus(server, prometheus_bin):
    process, http_port, metrics_port = server
    for _ in range(20):
        assert http_get(f"http://127.0.0.1:{http_port}/api/v2/buildinfo")[0] == 200
    status, _, body = http_get(f"http://127.0.0.1:{metrics_port}/")
    samples = parse_samples(body.decode())
    assert total(samples, "coderd_api_requests_processed_total", path="/api/v2/buildinfo", code="200") >= 20
    assert total(samples, "coderd_provisionerd_num_daemons") == 2

    prom = Prometheus(prometheus_bin, [f"127.0.0.1:{metrics_port}"])
    try:

        def rate_and_quantile():
            # Requests keep coming while Prometheus gathers the two samples rate() needs.
            http_get(f"http://127.0.0.1:{http_port}/api/v2/buildinfo")
            rate = prom.query("sum(rate(coderd_api_requests_processed_total[1m]))")
            p95 = prom.query(
                "histogram_quantile(0.95, sum by (le) (rate(coderd_api_request_latencies_seconds_bucket[1m])))"
            )
            if rate and p95 and float(rate[0]["value"][1]) > 0 and p95[0]["value"][1] != "NaN":
                return rate, p95
            return None

        rate, p95 = wait_for(rate_and_quantile, 25, "PromQL answers over the scraped metrics", interval=0.5)
        assert float(rate[0]["value"][1]) > 0
        assert 0 < float(p95[0]["value"][1]) <= 30
        up = prom.query('up{job="coderd"}')
        assert [float(r["value"][1]) for r in up] == [1.0]
        users = prom.query('coderd_api_total_user_count{status="active"}')
        assert [float(r["value"][1]) for r in users] == [0.0]
    finally:
        prom.stop()
