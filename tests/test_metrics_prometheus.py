"""End to end: a real Prometheus server scrapes a running `manage.py server` listener on loopback."""

from __future__ import annotations

import pytest

from tests.services import (
    Prometheus,
    ServerProcess,
    free_port,
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


def test_it_counts_each_daemon_once_in_a_sum_over_coderd_and_an_external_daemon(tmp_path, prometheus_bin):
    """coderd exports its in-process daemons only; the external one exports itself: Coder's dashboards
    `sum(coderd_provisionerd_num_daemons)` over every pod, which must not count it twice."""
    import sys

    psk = "sum-of-daemons-psk"
    data = tmp_path / "coderd"
    with metrics_server(data, daemons=1, name="coderd", env={"CODER_PROVISIONER_DAEMON_PSK": psk}) as started:
        _, http_port, coderd_metrics = started
        external_metrics = free_port()
        (tmp_path / "external").mkdir()
        argv = [
            sys.executable,
            "manage.py",
            "provisionerd",
            "start",
            "--url",
            f"http://127.0.0.1:{http_port}",
        ]
        argv += ["--psk", psk, "--name", "outside", "--prometheus-address", f"127.0.0.1:{external_metrics}"]
        external = ServerProcess(argv, env={"CODER_DATA_DIR": str(tmp_path / "external")}, name="outside")
        prom = None
        try:
            external.wait_http(f"http://127.0.0.1:{external_metrics}/", timeout=60)
            wait_for(lambda: "connected to" in external.log(), 30, "the external daemon to connect")

            def daemons(port: int) -> float:
                return total(parse_samples(http_get(f"http://127.0.0.1:{port}/")[2].decode()),
                             "coderd_provisionerd_num_daemons")  # fmt: skip

            assert daemons(coderd_metrics) == 1
            assert daemons(external_metrics) == 1
            prom = Prometheus(
                prometheus_bin, [f"127.0.0.1:{coderd_metrics}", f"127.0.0.1:{external_metrics}"]
            )
            summed = wait_for(
                lambda: (
                    (r := prom.query("sum(coderd_provisionerd_num_daemons)"))
                    and prom.query("count(up == 1)")
                    and float(prom.query("count(up == 1)")[0]["value"][1]) == 2
                    and r
                ),
                30,
                "Prometheus to scrape both",
                interval=0.5,
            )
            assert float(summed[0]["value"][1]) == 2
        finally:
            if prom is not None:
                prom.stop()
            external.stop()
