"""The shipped Grafana dashboard (metrics/grafana/coderd.json): what its generator writes, and every
panel query answered with data by a real Prometheus scraping a running server that served a little
traffic, builds included. The alert rules are loaded into the same Prometheus and must evaluate."""

from __future__ import annotations

import json
import math
import re
import time
import urllib.error
import urllib.request
import uuid

import pytest
import yaml
from websockets.sync.client import connect

from metrics.grafana import dashboard
from tests.services import REPO, Prometheus, http_get, metrics_server, wait_for

DASHBOARD = REPO / "metrics" / "grafana" / "coderd.json"
RULES = REPO / "metrics" / "prometheus" / "alerts.yml"
PASSWORD = "correct-horse-battery"

# Grafana's own interval variables (the rate window wider than Grafana's for a 1 s scrape: a loaded CI
# machine may take a while between the traffic and the queries).
GRAFANA_INTERVALS = {"$__rate_interval": "2m", "$__interval": "15s", "$__range": "5m"}
# An echo template: a start that logs while it runs, a stop that fails.
ECHO_SOURCE = {
    "start": {"duration_ms": 1200, "logs": ["pulling image", "starting container", "ready"]},
    "stop": {"duration_ms": 200, "fail": True},
}


def panels() -> list[dict]:
    return [p for p in json.loads(DASHBOARD.read_text())["panels"] if p["type"] != "row"]


def panel_queries() -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in panels() for t in p["targets"]]


def test_it_commits_what_the_generator_writes():
    assert DASHBOARD.read_text() == dashboard.render(), "run: .venv/bin/python -m metrics.grafana.dashboard"


def test_it_check_mode_says_whether_the_file_is_stale(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(dashboard, "OUTPUT", tmp_path / "coderd.json")
    assert dashboard.main(["--check"]) == 1
    assert "stale" in capsys.readouterr().err
    assert dashboard.main([]) == 0
    assert dashboard.main(["--check"]) == 0


def test_it_shows_each_area_of_the_deployment():
    text = " ".join(expr for _, expr in panel_queries())
    for family in (
        "coderd_api_requests_processed_total",
        "coderd_api_request_latencies_seconds_bucket",
        "coderd_api_concurrent_websockets",
        "coderd_api_websocket_durations_seconds_bucket",
        "coderd_provisionerd_jobs_current",
        "coderd_provisionerd_job_timings_seconds_bucket",
        "coderd_provisionerd_num_daemons",
        "coderd_workspace_builds_total",
        "coderd_api_total_user_count",
        "coderd_api_active_users_duration_hour",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "coderd_provisioner_job_queue_wait_seconds_bucket",
        "coderd_workspace_creation_total",
        "coderd_db_query_latencies_seconds_bucket",
        "coderd_db_query_counts_total",
    ):
        assert family in text, family
    assert "by (code)" in text and "by (method, path)" in text and "by (template_name, status)" in text
    # Every query is filtered by the dashboard's variables, and reads the chosen data source.
    for title, expr in panel_queries():
        assert 'instance=~"$instance"' in expr and 'job=~"$job"' in expr, title
    for panel in panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]


# --- against a running server ----------------------------------------------------------------


class Api:
    def __init__(self, base: str) -> None:
        self.base = base
        self.token = ""

    def call(self, method: str, path: str, body: object = None, expect: int = 200) -> dict:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Coder-Session-Token", self.token)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        assert status == expect, (method, path, status, raw[:300])
        return json.loads(raw) if raw else {}

    def follow_build(self, build_id: str) -> list[dict]:
        """Read a build's logs over the follow websocket until the server closes it (the job ended)."""
        url = self.base.replace("http://", "ws://") + f"/api/v2/workspacebuilds/{build_id}/logs?follow"
        lines = []
        with connect(url, additional_headers={"Coder-Session-Token": self.token}, origin=self.base,
                     open_timeout=30) as ws:  # fmt: skip
            for message in ws:
                lines.append(json.loads(message))
        return lines

    def build(self, workspace_id: str, transition: str) -> dict:
        build = self.call(
            "POST", f"/api/v2/workspaces/{workspace_id}/builds", {"transition": transition}, 201
        )
        self.follow_build(build["id"])
        return self.call("GET", f"/api/v2/workspacebuilds/{build['id']}")


def serve_traffic(api: Api) -> None:
    """A first user, a template, a workspace whose start succeeds and stop fails, twice (with a pause
    so that Prometheus sees every counter before and after it moves: rate() needs an increase)."""
    api.call("POST", "/api/v2/users/first", {"email": "alice@example.com", "username": "alice", "password": PASSWORD}, 201)  # fmt: skip
    api.token = api.call(
        "POST", "/api/v2/users/login", {"email": "alice@example.com", "password": PASSWORD}, 201
    )["session_token"]
    version = api.call("POST", "/api/v2/organizations/default/templateversions",
                       {"name": "v1", "provisioner": "echo", "source": ECHO_SOURCE}, 201)  # fmt: skip
    wait_for(
        lambda: api.call("GET", f"/api/v2/templateversions/{version['id']}")["job"]["status"] == "succeeded",
        30,
        "the template import",
    )
    template = api.call("POST", "/api/v2/organizations/default/templates",
                        {"name": "python", "template_version_id": version["id"]}, 201)  # fmt: skip
    workspace = api.call("POST", "/api/v2/organizations/default/members/me/workspaces",
                         {"name": "dev", "template_id": template["id"]}, 201)  # fmt: skip
    api.follow_build(workspace["latest_build"]["id"])
    for round_ in range(2):
        if round_:
            api.build(workspace["id"], "start")
        stopped = api.build(workspace["id"], "stop")
        assert stopped["job"]["status"] == "failed", stopped
        api.call("GET", f"/api/v2/workspaces/{uuid.uuid4()}", expect=404)
        api.call("GET", "/api/v2/workspaces?q=owner:me")
        time.sleep(2.5)  # two scrapes (1 s apart) between the rounds


def resolve_variables(prom: Prometheus, text: str) -> str:
    """Put in a query what Grafana would: the values of $job and $instance (every value, as "All"
    selected by values would), and its interval variables."""
    variables = {v["name"]: v for v in json.loads(DASHBOARD.read_text())["templating"]["list"]}
    values: dict[str, str] = {}
    for name in ("job", "instance"):  # instance's query uses $job
        match = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", variables[name]["query"])
        assert match, variables[name]["query"]
        selector = match.group(1)
        for known, value in values.items():
            selector = selector.replace(f"${known}", value)
        found = prom.api(f"label/{match.group(2)}/values", **{"match[]": selector})
        assert found, f"variable {name} has no value"
        # As Grafana does: regex-escaped, and the backslashes escaped again inside a PromQL string.
        values[name] = "(" + "|".join(re.escape(v).replace("\\", "\\\\") for v in found) + ")"
    for key, value in [*GRAFANA_INTERVALS.items(), *((f"${k}", v) for k, v in values.items())]:
        text = text.replace(key, value)
    return text


@pytest.fixture(scope="module")
def scraped_server(tmp_path_factory, prometheus_bin):
    """One server and one Prometheus for this file's tests (starting them is the slow part), after
    the traffic of `serve_traffic`."""
    data_dir = tmp_path_factory.mktemp("coderd-dashboards")
    with metrics_server(data_dir, daemons=2, name="coderd-dashboards") as (_process, http_port, metrics_port):
        prom = Prometheus(prometheus_bin, [f"127.0.0.1:{metrics_port}"], rule_files=(RULES,))
        try:
            api = Api(f"http://127.0.0.1:{http_port}")
            # Traffic after the first scrape: a counter whose every increment came before it has no
            # rate (its histogram_quantile is NaN), as the job queue wait's did on a slow machine.
            prom.wait_value('count(up{job="coderd"} == 1)', 1)
            serve_traffic(api)
            yield api, prom
        finally:
            prom.stop()


def test_it_answers_every_panel_query_with_data(scraped_server):
    api, prom = scraped_server
    pending = dict.fromkeys(panel_queries())
    answers: dict[tuple[str, str], list] = {}

    def every_query_has_data() -> bool:
        http_get(api.base + "/api/v2/buildinfo")  # keep requests coming while Prometheus samples
        for title, expr in list(pending):
            result = prom.query(resolve_variables(prom, expr))
            answers[(title, expr)] = result
            if any(not math.isnan(float(r["value"][1])) for r in result):
                del pending[(title, expr)]
        return not pending

    try:
        wait_for(every_query_has_data, 30, "every panel query to answer", interval=1)
    except TimeoutError as exc:
        raise AssertionError(
            f"{exc}\npanels without data: "
            + "; ".join(f"{t}: {e} -> {answers.get((t, e))}" for t, e in pending)
        ) from None
    assert len(answers) == len(panel_queries()) >= 25


def test_it_loads_alert_rules_that_evaluate_over_real_metrics(scraped_server):
    api, prom = scraped_server
    http_get(api.base + "/api/v2/buildinfo")

    def evaluated() -> list[dict]:
        rules = [r for g in prom.api("rules")["groups"] for r in g["rules"]]
        return rules if rules and all(r.get("lastEvaluation", "").startswith("20") for r in rules) else []

    rules = wait_for(evaluated, 30, "the alert rules to be evaluated", interval=0.5)
    assert {r["name"] for r in rules} >= {"CoderdScrapeDown", "CoderdHighLatency"}
    assert [(r["name"], r["health"], r.get("lastError", "")) for r in rules if r["health"] != "ok"] == []
    # Every metric a rule reads is one the server exports (a renamed family would silence it).
    exprs = " ".join(r["expr"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"])
    names = set(re.findall(r"\b(coderd_\w+|up)\b", exprs))
    assert len(names) >= 6, names
    for name in sorted(names):
        base = re.sub(r"_(bucket|count|sum)$", "", name)
        wait_for(lambda: prom.query(f'count({{__name__=~"{base}(_bucket)?"}})'), 15, f"{name} scraped")  # noqa: B023
    # A healthy server with daemons pages for nothing.
    assert [r["name"] for r in rules if r["state"] == "firing"] == []
