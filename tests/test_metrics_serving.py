"""Where the metrics are served: the listener, the authenticated /metrics view, runserver's start,
and prometheus_client's multiprocess mode."""

from __future__ import annotations

import gzip
import os
import socket
import subprocess
import sys
import textwrap

import pytest
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from metrics import runtime
from metrics.autostart import should_start
from metrics.serving import ListenerError, start_listener
from tests.fixtures import metrics_installed, token_for
from tests.services import REPO, ServerProcess, free_port, http_get


@pytest.fixture
def state(db):
    with metrics_installed() as fresh:
        yield fresh


@pytest.fixture
def listener(state):
    server = start_listener("127.0.0.1", 0, state)
    yield server
    server.stop()


def _url(listener, path: str = "/") -> str:
    host, port = listener.address
    return f"http://{host}:{port}{path}"


def _names(text: str) -> set[str]:
    return {f.name for f in text_string_to_metric_families(text)}


def test_it_answers_every_path_and_counts_its_scrapes(listener, state):
    for path in ("/", "/metrics", "/anything/else?x=1"):
        status, headers, body = http_get(_url(listener, path))
        assert status == 200
        assert headers["Content-Type"].startswith("text/plain")
        assert "coderd_api_requests_processed" in _names(body.decode())
    status, _, body = http_get(_url(listener))
    samples = {
        s.labels["code"]: s.value
        for f in text_string_to_metric_families(body.decode())
        if f.name == "promhttp_metric_handler_requests"
        for s in f.samples
    }
    # The scrape in progress is counted once it is served, as Go's promhttp does.
    assert samples == {"200": 3.0, "500": 0.0, "503": 0.0}
    assert state.registry.get_sample_value("promhttp_metric_handler_requests_total", {"code": "200"}) == 4
    assert state.registry.get_sample_value("promhttp_metric_handler_requests_in_flight") == 0


def test_it_negotiates_openmetrics_and_gzip(listener):
    status, headers, body = http_get(
        _url(listener),
        {"Accept": "application/openmetrics-text; version=1.0.0", "Accept-Encoding": "gzip"},
    )
    assert status == 200
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    assert headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(body).decode().endswith("# EOF\n")


def test_it_refuses_a_port_in_use_with_one_line():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ListenerError) as info:
            start_listener("127.0.0.1", port, runtime.build_state(with_database=False))
    message = str(info.value)
    assert "\n" not in message
    assert f"127.0.0.1:{port}" in message and "address already in use" in message


def test_it_refuses_a_bad_address_with_one_line():
    with pytest.raises(ListenerError) as info:
        start_listener("no-such-host.invalid", 2112, runtime.build_state(with_database=False))
    assert "\n" not in str(info.value) and "no-such-host.invalid:2112" in str(info.value)


@pytest.mark.parametrize(
    ("command", "enabled", "expected"),
    [("runserver", True, True), ("runserver", False, False), ("server", True, False)],
)
def test_it_starts_from_the_serve_hook_only_for_runserver(command, enabled, expected):
    assert should_start(command, enabled) is expected


def test_it_serves_metrics_under_runserver_from_the_reloaders_child_only(tmp_path):
    http_port, metrics_port = free_port(), free_port()
    env = {
        "CODER_DATA_DIR": str(tmp_path),
        "CODER_PROMETHEUS_ENABLE": "true",
        "CODER_PROMETHEUS_ADDRESS": f"127.0.0.1:{metrics_port}",
        "PYTHONUNBUFFERED": "1",
    }
    # runserver, like Django's, does not migrate (and starts no daemon or metrics until migrated).
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "-v0"], cwd=REPO, env={**os.environ, **env}, check=True
    )
    process = ServerProcess(
        [sys.executable, "manage.py", "runserver", f"127.0.0.1:{http_port}", "--provisioner-daemons", "1"],
        env,
        name="runserver",
    )
    try:
        process.wait_http(f"http://127.0.0.1:{metrics_port}/", timeout=60)
        process.wait_http(f"http://127.0.0.1:{http_port}/api/v2/buildinfo", timeout=60)
        status, _, body = http_get(f"http://127.0.0.1:{metrics_port}/")
        assert status == 200
        daemons = next(
            f
            for f in text_string_to_metric_families(body.decode())
            if f.name == "coderd_provisionerd_num_daemons"
        )
        assert daemons.samples[0].value == 1
        # Had the reloader's parent bound the port too, its child would have died on "address in use".
        process.check_alive()
        assert "address already in use" not in process.log()
    finally:
        process.stop()


# --- /metrics on the main port ---------------------------------------------------------------------


@pytest.fixture
def enabled(settings):
    settings.PROMETHEUS_ENABLE = True
    settings.PROMETHEUS_PUBLIC = False
    return settings


def test_it_hides_the_view_when_metrics_are_disabled(state, settings, owner):
    settings.PROMETHEUS_ENABLE = False
    response = Client().get("/metrics", headers={"Coder-Session-Token": token_for(owner)})
    assert response.status_code == 404


def test_it_asks_for_authentication(state, enabled):
    response = Client().get("/metrics")
    assert response.status_code == 401
    assert response.json()["message"]


def test_it_refuses_a_member(state, enabled, member):
    response = Client().get("/metrics", headers={"Authorization": f"Bearer {token_for(member)}"})
    assert response.status_code == 403


def test_it_serves_owners_and_auditors_by_token(state, enabled, owner, auditor):
    by_header = Client().get("/metrics", headers={"Coder-Session-Token": token_for(owner)})
    by_bearer = Client().get("/metrics", headers={"Authorization": f"Bearer {token_for(auditor)}"})
    for response in (by_header, by_bearer):
        assert response.status_code == 200
        assert "coderd_api_workspace_latest_build" in _names(response.content.decode())


def test_it_serves_an_owners_admin_session(state, enabled, owner):
    client = Client()
    client.force_login(owner)
    response = client.get("/metrics", headers={"Accept-Encoding": "gzip"})
    assert response.status_code == 200
    assert response["Content-Encoding"] == "gzip"
    assert "coderd_api_concurrent_requests" in _names(gzip.decompress(response.content).decode())


def test_it_can_be_made_public(state, enabled):
    enabled.PROMETHEUS_PUBLIC = True
    assert Client().get("/metrics").status_code == 200


# --- several processes -----------------------------------------------------------------------------

WORKER = textwrap.dedent(
    """
    import os, sys
    import django
    django.setup()
    from metrics import runtime
    m = runtime.get_metrics()
    n = int(sys.argv[1])
    for _ in range(n):
        m.observe_request("GET", "/api/v2/buildinfo", 200, 0.003)
    m.concurrent_requests.inc()  # still in flight when the worker dies
    m.concurrent_websockets.inc()
    """
)


def test_it_sums_workers_in_multiprocess_mode_and_forgets_dead_ones(tmp_path):
    directory = tmp_path / "prom"
    env = {
        **os.environ,
        "PROMETHEUS_MULTIPROC_DIR": str(directory),
        "DJANGO_SETTINGS_MODULE": "coderd.settings",
        "CODER_DATA_DIR": str(tmp_path / "data"),
    }
    runtime.prepare_multiprocess_dir(directory)
    (directory / "gauge_livesum_1.db").write_bytes(b"")  # a previous run's file is removed
    runtime.prepare_multiprocess_dir(directory)
    assert not list(directory.iterdir())

    for n in (3, 4):
        done = subprocess.run([sys.executable, "-c", WORKER, str(n)], env=env, cwd=REPO, capture_output=True)
        assert done.returncode == 0, done.stderr.decode()[-2000:]
    scrape = textwrap.dedent(
        """
        import sys, glob, os, re
        import django
        django.setup()
        from metrics import runtime
        from metrics.serving import expose
        if len(sys.argv) > 1:
            for path in glob.glob(os.path.join(os.environ["PROMETHEUS_MULTIPROC_DIR"], "gauge_livesum_*.db")):
                runtime.mark_process_dead(int(re.findall(r"_(\\d+)\\.db$", path)[0]))
        state = runtime.build_state(with_database=False, multiproc_dir=os.environ["PROMETHEUS_MULTIPROC_DIR"])
        print(expose(state, None, None)[2].decode())
        """
    )

    def collect(*args: str) -> dict:
        done = subprocess.run([sys.executable, "-c", scrape, *args], env=env, cwd=REPO, capture_output=True)
        assert done.returncode == 0, done.stderr.decode()[-2000:]
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(done.stdout.decode())
            for s in f.samples
        }

    samples = collect()
    key = (
        "coderd_api_requests_processed_total",
        (("code", "200"), ("method", "GET"), ("path", "/api/v2/buildinfo")),
    )
    assert samples[key] == 7
    assert (
        samples[
            ("coderd_api_request_latencies_seconds_count", (("method", "GET"), ("path", "/api/v2/buildinfo")))
        ]
        == 7
    )
    assert samples[("coderd_api_concurrent_requests", ())] == 2
    samples = collect("mark-dead")
    assert samples[key] == 7  # counters stay
    assert samples.get(("coderd_api_concurrent_requests", ()), 0) == 0  # live gauges vanish


def test_it_serves_the_same_exposition_gzipped_and_plain_and_follows_refreshes(state, owner):
    from metrics.serving import expose
    from tests.fixtures import make_user

    for accept in (None, "application/openmetrics-text; version=1.0.0"):
        _, _, plain = expose(state, accept, None)
        _, headers, zipped = expose(state, accept, "gzip")
        assert dict(headers)["Content-Encoding"] == "gzip"
        # Process and GC values move between two scrapes; the families and the text's start do not.
        unzipped = gzip.decompress(zipped)
        assert _names(unzipped.decode()) == _names(plain.decode())
        assert unzipped[:2000] == plain[:2000]
    _, _, before = expose(state, None, "gzip")
    make_user(owner, "newcomer")  # a signal marks the gauges stale: the next scrape recounts
    _, _, after = expose(state, None, "gzip")

    def active_users(body: bytes) -> float:
        families = text_string_to_metric_families(gzip.decompress(body).decode())
        users = next(f for f in families if f.name == "coderd_api_total_user_count")
        return next(s.value for s in users.samples if s.labels["status"] == "active")

    assert (active_users(before), active_users(after)) == (1, 2)


DJANGO_DB = textwrap.dedent(
    """
    import django
    django.setup()
    from django.core.management import call_command
    call_command("migrate", verbosity=0)
    from coderd.users.models import User
    User.objects.count()
    from metrics import runtime
    from metrics.serving import expose
    print(expose(runtime.current(), None, None)[2].decode())
    """
)


def test_it_adds_django_prometheus_database_metrics_when_asked(tmp_path):
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "coderd.settings",
        "CODER_DATA_DIR": str(tmp_path),
        "CODER_PROMETHEUS_DJANGO_DB_METRICS": "true",
    }
    env.pop("CODER_PG_CONNECTION_URL", None)
    done = subprocess.run([sys.executable, "-c", DJANGO_DB], env=env, cwd=REPO, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    families = {f.name: f for f in text_string_to_metric_families(done.stdout.decode())}
    executed = sum(s.value for s in families["django_db_execute"].samples)
    assert executed > 0
    assert "django_db_query_duration_seconds" in families


def test_it_filters_families_by_name(listener):
    query = "?name[]=coderd_api_total_user_count&name[]=coderd_api_requests_processed_total"
    status, _, body = http_get(_url(listener, "/" + query))
    assert status == 200
    assert _names(body.decode()) == {"coderd_api_total_user_count", "coderd_api_requests_processed"}


@pytest.mark.parametrize(
    "accept_encoding", ["gzip;q=0", "gzip; q=0.0", "identity, gzip;q=0", "deflate", "gzip;q=0, br"]
)
def test_it_does_not_gzip_when_gzip_is_not_acceptable(listener, accept_encoding):
    status, headers, body = http_get(_url(listener), {"Accept-Encoding": accept_encoding})
    assert status == 200
    assert "Content-Encoding" not in headers
    assert "coderd_api_requests_processed" in _names(body.decode())


@pytest.mark.parametrize("accept_encoding", ["gzip;q=0.5", "br;q=1, GZIP", "deflate, gzip;q=1.0"])
def test_it_gzips_when_gzip_is_acceptable(listener, accept_encoding):
    status, headers, body = http_get(_url(listener), {"Accept-Encoding": accept_encoding})
    assert status == 200 and headers["Content-Encoding"] == "gzip"
    assert "coderd_api_requests_processed" in _names(gzip.decompress(body).decode())


@pytest.mark.parametrize(
    ("accept", "content_type"),
    [
        ("application/openmetrics-text; version=9", "text/plain; version=0.0.4"),
        ("application/openmetrics-text; version=1.5.0", "text/plain; version=0.0.4"),
        ("application/openmetrics-text; version=1.0.0", "application/openmetrics-text; version=1.0.0"),
        ("application/openmetrics-text", "application/openmetrics-text; version=1.0.0"),
        (
            "application/openmetrics-text; version=9, application/openmetrics-text; version=1.0.0",
            "application/openmetrics-text; version=1.0.0",
        ),
        ("application/openmetrics-text; version=1.0.0; q=0", "text/plain; version=0.0.4"),
        (
            # Prometheus' own header: OpenMetrics 1.0.0 first
            "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;"
            "q=0.4,text/plain;version=0.0.4;q=0.2,*/*;q=0.1",
            "application/openmetrics-text; version=1.0.0",
        ),
    ],
)
def test_it_negotiates_only_exposition_versions_it_can_write(listener, accept, content_type):
    status, headers, body = http_get(_url(listener), {"Accept": accept})
    assert status == 200
    assert headers["Content-Type"].startswith(content_type), headers["Content-Type"]
    assert "version=9" not in headers["Content-Type"] and "1.5.0" not in headers["Content-Type"]
    assert body.decode().endswith("# EOF\n") == content_type.startswith("application/openmetrics-text")


@pytest.mark.parametrize("headers", [{}, {"Accept-Encoding": "gzip"}])
def test_it_answers_head_with_gets_length_and_no_body(listener, headers):
    import http.client

    host, port = listener.address
    lengths = {}
    for method in ("GET", "HEAD"):
        conn = http.client.HTTPConnection(host, port, timeout=10)
        try:
            conn.request(method, "/", headers=headers)
            response = conn.getresponse()
            body = response.read()
            assert response.status == 200
            lengths[method] = int(response.headers["Content-Length"])
            if method == "HEAD":
                assert body == b""
            else:
                assert lengths[method] == len(body) > 0
        finally:
            conn.close()
    # The families are the same between the two scrapes; only some values (the scrape counter,
    # process stats) move, and with them a few bytes (more once gzipped).
    assert lengths["HEAD"] > 0 and abs(lengths["HEAD"] - lengths["GET"]) <= 64
