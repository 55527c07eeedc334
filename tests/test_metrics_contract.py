"""The golden test: a real scrape equals the contract of METRICS.md, and the seed set equals
Coder's November 2022 scrape family by family (parsed, never matched as raw text)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from metrics import runtime
from metrics.serving import expose
from provisioner.observer import BuildInfo

REFERENCE = Path("/work/shared/reference/coder-2022-11-scrape.prom")
if not REFERENCE.exists():  # the copy kept in the repository
    REFERENCE = Path(__file__).parent / "data" / "coder-2022-11-scrape.prom"

MS = (1, 5, 10, 25, 50, 100, 500, 1000, 5000, 10000, 30000)
WS_MS = (1, 1000, 60000, 3.6e06, 5.4e07, 1.08e08)
JOB_MS = (1000, 10000, 30000, 60000, 300000, 600000, 1.8e06, 3.6e06)
QUEUE_WAIT_S = (0.1, 0.5, 1, 5, 10, 30, 60, 120, 300, 600, 900, 1800)
DB_QUERY_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)  # Go's prometheus.DefBuckets


def _s(ms):
    return tuple(b / 1000 for b in ms)


# name (as the text parser names it) -> (type, HELP, label names, bucket bounds or None)
SEED = {
    "coderd_api_active_users_duration_hour": (
        "gauge",
        "The number of users that have been active within the last hour.",
        (),
        None,
    ),
    "coderd_api_concurrent_requests": ("gauge", "The number of concurrent API requests", (), None),
    "coderd_api_concurrent_websockets": (
        "gauge",
        "The total number of concurrent API websockets",
        (),
        None,
    ),
    "coderd_api_request_latencies_ms": (
        "histogram",
        "Latency distribution of requests in milliseconds",
        ("method", "path"),
        MS,
    ),
    "coderd_api_requests_processed": (
        "counter",
        "The total number of processed API requests",
        ("code", "method", "path"),
        None,
    ),
    "coderd_api_websocket_durations_ms": (
        "histogram",
        "Websocket duration distribution of requests in milliseconds",
        ("path",),
        WS_MS,
    ),
    "coderd_api_workspace_latest_build_total": (
        "gauge",
        "The latest workspace builds with a status.",
        ("status",),
        None,
    ),
    "coderd_provisionerd_jobs_current": (
        "gauge",
        "The number of currently running provisioner jobs.",
        ("provisioner",),
        None,
    ),
    "coderd_provisionerd_job_timings_ms": (
        "histogram",
        "The provisioner job time duration.",
        ("provisioner", "status"),
        JOB_MS,
    ),
    "promhttp_metric_handler_requests": (
        "counter",
        "Total number of scrapes by HTTP status code.",
        ("code",),
        None,
    ),
    "promhttp_metric_handler_requests_in_flight": (
        "gauge",
        "Current number of scrapes being served.",
        (),
        None,
    ),
}
CURRENT = {
    "coderd_api_request_latencies_seconds": (
        "histogram",
        "Latency distribution of requests in seconds.",
        ("method", "path"),
        _s(MS),
    ),
    "coderd_api_websocket_durations_seconds": (
        "histogram",
        "Websocket duration distribution of requests in seconds.",
        ("path",),
        _s(WS_MS),
    ),
    "coderd_provisionerd_job_timings_seconds": (
        "histogram",
        "The provisioner job time duration in seconds.",
        ("provisioner", "status"),
        _s(JOB_MS),
    ),
    "coderd_api_workspace_latest_build": (
        "gauge",
        "The current number of workspace builds by status for all non-deleted workspaces.",
        ("status",),
        None,
    ),
    "coderd_api_total_user_count": (
        "gauge",
        "The total number of registered users, partitioned by status.",
        ("status",),
        None,
    ),
    "coderd_provisionerd_num_daemons": ("gauge", "The number of provisioner daemons.", (), None),
    "coderd_workspace_builds": (
        "counter",
        "The number of workspaces started, updated, or deleted.",
        (
            "workspace_owner",
            "workspace_name",
            "template_name",
            "template_version",
            "workspace_transition",
            "status",
        ),
        None,
    ),
    "coderd_workspace_latest_build_status": (
        "gauge",
        "The current workspace statuses by template, transition, and owner for all non-deleted workspaces.",
        ("status", "template_name", "template_version", "workspace_owner", "workspace_transition"),
        None,
    ),
    "coderd_provisionerd_workspace_build_timings_seconds": (
        "histogram",
        "The time taken for a workspace to build.",
        ("template_name", "template_version", "workspace_transition", "status"),
        _s(JOB_MS),
    ),
    "coderd_provisioner_job_queue_wait_seconds": (
        "histogram",
        "Time from job creation to acquisition by a provisioner daemon.",
        ("provisioner_type", "job_type", "transition", "build_reason"),
        QUEUE_WAIT_S,
    ),
    "coderd_workspace_creation": (
        "counter",
        "Total regular (non-prebuilt) workspace creations by organization, template, and preset.",
        ("organization_name", "template_name", "preset_name"),
        None,
    ),
    "coderd_db_query_latencies_seconds": (
        "histogram",
        "Latency distribution of queries in seconds.",
        ("query",),
        DB_QUERY_S,
    ),
    "coderd_db_query_counts": (
        "counter",
        "Total number of queries labelled by HTTP route, method, and query name.",
        ("route", "method", "query"),
        None,
    ),
}
# With legacy names off the concurrency gauges are today's Coder's: labelled, HELP with a period.
CURRENT_LEGACY_OFF = {
    "coderd_api_concurrent_requests": (
        "gauge",
        "The number of concurrent API requests.",
        ("method", "path"),
        None,
    ),
    "coderd_api_concurrent_websockets": (
        "gauge",
        "The total number of concurrent API websockets.",
        ("path",),
        None,
    ),
}
PROCESS = {
    "process_cpu_seconds": "counter",
    "process_resident_memory_bytes": "gauge",
    "process_virtual_memory_bytes": "gauge",
    "process_start_time_seconds": "gauge",
    "process_open_fds": "gauge",
    "process_max_fds": "gauge",
    "process_threads": "gauge",
    "python_info": "gauge",
    "python_asyncio_tasks": "gauge",
}
# METRICS.md names `coderd_api_total_user_count` (as today's Coder does) as a gauge, which promtool's
# lint reports whatever the legacy setting: the contract's name wins over the lint (see docs/metrics.md).
PROMTOOL_NAME_FINDING = (
    'coderd_api_total_user_count non-histogram and non-summary metrics should not have "_count" suffix'
)
PROMTOOL_LEGACY_FINDINGS = {
    PROMTOOL_NAME_FINDING,
    "coderd_api_request_latencies_ms metric names should not contain abbreviated units",
    "coderd_api_websocket_durations_ms metric names should not contain abbreviated units",
    "coderd_provisionerd_job_timings_ms metric names should not contain abbreviated units",
    'coderd_api_workspace_latest_build_total non-counter metrics should not have "_total" suffix',
}


def _exercise(state: runtime.MetricsState, workspace) -> None:
    """Put one sample in every labelled family, so bucket strings and label names show."""
    m = state.metrics
    m.observe_request("GET", "/api/v2/buildinfo", 200, 0.002)
    m.observe_websocket("/api/v2/workspaces/{workspace}/watch-ws", 101, 12.0)
    from metrics.observer import MetricsJobObserver

    observer = MetricsJobObserver(m, on_change=None)
    with observer.running("echo"):
        pass
    observer.job_acquired("echo", "workspace_build", "start", "initiator", 0.3)
    m.observe_query("select workspaces_workspace", "/api/v2/workspaces/{workspace}", "GET", 0.0004)
    if not m.legacy:  # one request and one socket in flight, so the labelled gauges show a series
        m.request_gauge("GET", "/api/v2/buildinfo").inc()
        m.websocket_gauge("/api/v2/workspaces/{workspace}/watch-ws").inc()
    build = BuildInfo("owner", workspace.name, workspace.template.name, "echo-v1", "start")
    observer.job_finished("echo", True, 3.5, build)


@pytest.fixture
def scrape_text(owner, workspace_for):
    workspace = workspace_for(owner)

    def scrape(legacy: bool = True, accept: str | None = None) -> str:
        state = runtime.build_state(legacy=legacy)
        previous = runtime._state
        runtime.install(state)
        try:
            _exercise(state, workspace)
            status, headers, body = expose(state, accept, None)
        finally:
            runtime.install(previous)
        assert status == "200 OK"
        return body.decode()

    return scrape


def _families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def _bounds(family) -> tuple[float, ...]:
    seen: list[float] = []
    for s in family.samples:
        if s.name.endswith("_bucket") and s.labels["le"] != "+Inf":
            bound = float(s.labels["le"])
            if bound not in seen:
                seen.append(bound)
    return tuple(seen)


def _label_names(family) -> tuple[str, ...]:
    names: set[str] = set()
    for s in family.samples:
        names |= set(s.labels) - {"le"}
    return tuple(sorted(names))


def _check(families: dict, contract: dict) -> None:
    for name, (kind, help_text, labels, buckets) in contract.items():
        assert name in families, f"{name} missing from the scrape"
        family = families[name]
        assert (family.type, family.documentation) == (kind, help_text), name
        assert family.samples, f"{name} has no sample"
        assert _label_names(family) == tuple(sorted(labels)), name
        if buckets is not None:
            assert _bounds(family) == tuple(float(b) for b in buckets), name


def test_it_exposes_the_seed_and_current_sets_exactly(scrape_text):
    families = _families(scrape_text())
    _check(families, SEED)
    _check(families, CURRENT)
    for name, kind in PROCESS.items():
        assert families[name].type == kind, name
    statuses = {s.labels["status"] for s in families["coderd_api_workspace_latest_build"].samples}
    assert statuses == {"pending", "running", "succeeded", "canceling", "canceled", "failed"}
    users = {s.labels["status"] for s in families["coderd_api_total_user_count"].samples}
    assert users == {"active", "dormant", "suspended"}
    scrapes = {s.labels["code"]: s.value for s in families["promhttp_metric_handler_requests"].samples}
    assert scrapes == {"200": 0.0, "500": 0.0, "503": 0.0}


def test_it_matches_the_reference_scrape_family_by_family(scrape_text):
    ours = _families(scrape_text())
    reference = {
        name: f
        for name, f in _families(REFERENCE.read_text()).items()
        if name.startswith(("coderd_", "promhttp_"))
    }
    assert set(reference) == set(SEED)
    for name, ref in reference.items():
        mine = ours[name]
        assert mine.type == ref.type, name
        # Coder filled in the two empty provisionerd HELP texts days after this scrape.
        if ref.documentation:
            assert mine.documentation == ref.documentation, name
        assert _label_names(mine) == _label_names(ref), name
        if ref.type == "histogram":
            assert _bounds(mine) == _bounds(ref), name


def test_it_drops_only_the_legacy_families_when_legacy_is_off(scrape_text):
    on, off = _families(scrape_text(legacy=True)), _families(scrape_text(legacy=False))
    legacy = {
        "coderd_api_request_latencies_ms",
        "coderd_api_websocket_durations_ms",
        "coderd_provisionerd_job_timings_ms",
        "coderd_api_workspace_latest_build_total",
    }
    assert set(on) - set(off) == legacy
    assert not legacy & set(off)
    _check(off, CURRENT)
    _check(off, CURRENT_LEGACY_OFF)
    # With legacy names on, the seed's bare gauges (checked in full above) stay as they were.
    assert _label_names(on["coderd_api_concurrent_requests"]) == ()


def test_it_negotiates_openmetrics(scrape_text):
    text = scrape_text(accept="application/openmetrics-text; version=1.0.0")
    assert text.endswith("# EOF\n")
    from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse

    names = {f.name for f in om_parse(text)}
    assert {"coderd_api_requests_processed", "coderd_api_workspace_latest_build"} <= names


def _promtool_findings(text: str) -> tuple[int, set[str]]:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: apt-get install -y --no-install-recommends prometheus")
    done = subprocess.run(
        [promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=60
    )
    out = (done.stdout + done.stderr).decode()
    return done.returncode, {line.strip() for line in out.splitlines() if line.strip()}


def test_it_passes_promtool_with_legacy_off_but_for_the_contract_name(scrape_text):
    code, findings = _promtool_findings(scrape_text(legacy=False))
    assert (code, findings) == (3, {PROMTOOL_NAME_FINDING})


def test_it_has_only_the_listed_promtool_findings_with_legacy_on(scrape_text):
    code, findings = _promtool_findings(scrape_text(legacy=True))
    assert code == 3
    assert findings == PROMTOOL_LEGACY_FINDINGS
