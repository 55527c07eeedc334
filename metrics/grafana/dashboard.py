"""The Grafana dashboard of a coderd deployment, built with Grafana's typed Python SDK.

`python -m metrics.grafana.dashboard` writes `metrics/grafana/coderd.json` (the file people import
into Grafana); `--check` only compares and exits 1 when the committed file is stale. Edit this file,
never the JSON: tests/test_metrics_dashboards.py fails when the two disagree, and evaluates every
panel's query against a real Prometheus scraping a running server.

Aggregation follows docs/metrics.md: request, websocket, job and process figures are per replica
(`sum`), the database-derived gauges are deployment-wide and identical on every replica (`max`).
Every query filters on the dashboard's `$job` and `$instance` variables.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.builders.dashboard import (
    Dashboard,
    DatasourceVariable,
    QueryVariable,
    Row,
    ThresholdsConfig,
)
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DataSourceRef,
    Threshold,
    ThresholdsMode,
    VariableOption,
    VariableRefresh,
    VariableSort,
)

OUTPUT = Path(__file__).resolve().parent / "coderd.json"
UID = "coderd-deployment"

# Every panel reads the data source the importer picks for `$datasource`.
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
# Label matchers every query carries, so one Prometheus can hold several deployments.
SEL = 'job=~"$job", instance=~"$instance"'
RATE = "$__rate_interval"


def sel(extra: str = "") -> str:
    """The `{...}` selector of a query: the dashboard's filters plus `extra` matchers."""
    return "{" + SEL + (", " + extra if extra else "") + "}"


def query(expr: str, legend: str, ref_id: str = "A") -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref_id).datasource(DATASOURCE)


def quantile(q: float, bucket: str, by: str, extra: str = "") -> str:
    """The q-quantile of a histogram's `_bucket` series over the rate window, per `by` labels."""
    keep = ", ".join(["le", *[label.strip() for label in by.split(",") if label.strip()]])
    return f"histogram_quantile({q}, sum by ({keep}) (rate({bucket}{sel(extra)}[{RATE}])))"


def ratio_per(counter: str, bad: str, by: str) -> str:
    """Share of `counter` increments matching `bad`, per `by`; 0 (not empty) while none match, so the
    panel reads 0 % rather than "No data" on a healthy deployment."""
    total = f"sum by ({by}) (rate({counter}{sel()}[{RATE}]))"
    failed = f"sum by ({by}) (rate({counter}{sel(bad)}[{RATE}]))"
    return f"({failed} or {total} * 0) / {total}"


def timeseries_panel(
    title: str,
    description: str,
    unit: str,
    targets: list[tuple[str, str]],
    *,
    span: int = 12,
    stacked: bool = False,
) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .span(span)
        .height(8)
        .fill_opacity(10)
        .legend(
            common_builders.VizLegendOptions()
            .show_legend(True)
            .display_mode(common.LegendDisplayMode.TABLE)
            .placement(common.LegendPlacement.BOTTOM)
            .calcs(["lastNotNull", "max"])
        )
        .tooltip(common_builders.VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI))
    )
    if stacked:
        panel = panel.stacking(common_builders.StackingConfig().mode(common.StackingMode.NORMAL))
    for index, (expr, legend) in enumerate(targets):
        panel = panel.with_target(query(expr, legend, ref_id=chr(ord("A") + index)))
    return panel


def stat_panel(
    title: str, description: str, unit: str, expr: str, *, red_below: float | None = None
) -> stat.Panel:
    """A single number; `red_below` colours it red under that value (green otherwise)."""
    if red_below is None:
        steps = [Threshold(value=None, color="text")]
    else:
        steps = [Threshold(value=None, color="red"), Threshold(value=red_below, color="green")]
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .span(4)
        .height(4)
        .graph_mode(common.BigValueGraphMode.AREA)
        .thresholds(ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps(steps))
        .with_target(query(expr, title))
    )


class Section:
    """A row title and its panels. Grafana keeps an expanded row's panels beside it, after it, at the
    top level of the dashboard (only a collapsed row holds them inside), so they are added that way."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.panels: list[timeseries.Panel | stat.Panel] = []

    def with_panel(self, panel: timeseries.Panel | stat.Panel) -> Section:
        self.panels.append(panel)
        return self

    def add_to(self, dashboard: Dashboard) -> Dashboard:
        dashboard = dashboard.with_row(Row(self.title))
        for panel in self.panels:
            dashboard = dashboard.with_panel(panel)
        return dashboard


def overview_row() -> Section:
    requests = f"coderd_api_requests_processed_total{sel()}"
    return (
        Section("Overview")
        .with_panel(stat_panel("Requests/s", "HTTP requests and websockets, every replica.", "reqps",
                               f"sum(rate({requests}[{RATE}]))"))
        .with_panel(stat_panel("5xx ratio", "Share of answers with a 5xx status (alert: CoderdHigh5xxRatio).",
                               "percentunit", ratio_per("coderd_api_requests_processed_total", 'code=~"5.."', "job")))
        .with_panel(stat_panel("p95 latency", "95th percentile of API request latency (websockets excluded).",
                               "s", quantile(0.95, "coderd_api_request_latencies_seconds_bucket", "")))
        .with_panel(stat_panel("Provisioner daemons", "Daemons serving builds, in-process and external "
                               "(alert: CoderdNoProvisionerDaemons).", "short",
                               f"sum(coderd_provisionerd_num_daemons{sel()})", red_below=1))
        .with_panel(stat_panel("Jobs running", "Provisioner jobs running now.", "short",
                               f"sum(coderd_provisionerd_jobs_current{sel()})"))
        .with_panel(stat_panel("Active users (1h)", "Distinct users whose token or session was used in the "
                               "last hour.", "short", f"max(coderd_api_active_users_duration_hour{sel()})"))
    )  # fmt: skip


def api_row() -> Section:
    requests = f"coderd_api_requests_processed_total{sel()}"
    latency = "coderd_api_request_latencies_seconds_bucket"
    websocket = "coderd_api_websocket_durations_seconds_bucket"
    return (
        Section("API")
        .with_panel(timeseries_panel(
            "Requests by status code", "Answers per second by status: 101 an accepted websocket, 0 a client "
            "that left before the answer.", "reqps",
            [(f"sum by (code) (rate({requests}[{RATE}]))", "{{code}}")], stacked=True))
        .with_panel(timeseries_panel(
            "Requests by route", "Answers per second by method and route pattern (\"\" when no route "
            "matched).", "reqps",
            [(f"sum by (method, path) (rate({requests}[{RATE}]))", "{{method}} {{path}}")]))
        .with_panel(timeseries_panel(
            "Requests by instance", "Answers per second, per replica (and external daemon).", "reqps",
            [(f"sum by (instance) (rate({requests}[{RATE}]))", "{{instance}}")], stacked=True))
        .with_panel(timeseries_panel(
            "5xx ratio by instance", "Share of answers with a 5xx status, per replica.", "percentunit",
            [(ratio_per("coderd_api_requests_processed_total", 'code=~"5.."', "instance"), "{{instance}}")]))
        .with_panel(timeseries_panel(
            "Latency quantiles", "API request latency, every replica (websockets excluded).", "s",
            [(quantile(q, latency, ""), f"p{round(q * 100)}") for q in (0.5, 0.9, 0.95, 0.99)]))
        .with_panel(timeseries_panel(
            "p95 latency by route", "95th percentile of latency per method and route.", "s",
            [(quantile(0.95, latency, "method, path"), "{{method}} {{path}}")]))
        .with_panel(timeseries_panel(
            "Requests in flight by instance", "HTTP requests being served (websockets excluded).", "short",
            [(f"sum by (instance) (coderd_api_concurrent_requests{sel()})", "{{instance}}")], span=8))
        .with_panel(timeseries_panel(
            "Websockets open by instance", "Websocket connections open (build log follows, watchers).", "short",
            [(f"sum by (instance) (coderd_api_concurrent_websockets{sel()})", "{{instance}}")], span=8))
        .with_panel(timeseries_panel(
            "Websocket lifetimes", "How long websockets stayed open, by route (observed when they close).",
            "s", [(quantile(0.5, websocket, "path"), "p50 {{path}}"),
                  (quantile(0.95, websocket, "path"), "p95 {{path}}")], span=8))
    )  # fmt: skip


def jobs_row() -> Section:
    timings = "coderd_provisionerd_job_timings_seconds"
    return (
        Section("Provisioner jobs")
        .with_panel(timeseries_panel(
            "Daemons by instance", "Provisioner daemons each process runs (coderd's in-process ones, 1 per "
            "external daemon).", "short",
            [(f"sum by (instance) (coderd_provisionerd_num_daemons{sel()})", "{{instance}}")], span=8, stacked=True))
        .with_panel(timeseries_panel(
            "Jobs running", "Jobs running now, by instance and provisioner.", "short",
            [(f"sum by (instance, provisioner) (coderd_provisionerd_jobs_current{sel()})",
              "{{instance}} {{provisioner}}")], span=8, stacked=True))
        .with_panel(timeseries_panel(
            "Workspaces by latest build status", "Live workspaces by their latest build's job status "
            "(pending ones wait for a daemon).", "short",
            [(f"max by (status) (coderd_api_workspace_latest_build{sel()})", "{{status}}")], span=8))
        .with_panel(timeseries_panel(
            "Jobs finished by status", "Jobs finished per second: success or failed (cancelled, timed out "
            "and crashed jobs are failed).", "ops",
            [(f"sum by (status) (rate({timings}_count{sel()}[{RATE}]))", "{{status}}")], stacked=True))
        .with_panel(timeseries_panel(
            "Job duration by status", "Job duration quantiles, by outcome.", "s",
            [(quantile(0.5, f"{timings}_bucket", "status"), "p50 {{status}}"),
             (quantile(0.95, f"{timings}_bucket", "status"), "p95 {{status}}")]))
        .with_panel(timeseries_panel(
            "Queue wait by job type", "From a job's creation until a daemon claims it (alert: "
            "CoderdJobsWaitingTooLong watches jobs still waiting).", "s",
            [(quantile(0.5, "coderd_provisioner_job_queue_wait_seconds_bucket", "job_type"), "p50 {{job_type}}"),
             (quantile(0.95, "coderd_provisioner_job_queue_wait_seconds_bucket", "job_type"), "p95 {{job_type}}")],
            span=24))
    )  # fmt: skip


def builds_row() -> Section:
    builds = "coderd_workspace_builds_total"
    return (
        Section("Workspace builds")
        .with_panel(timeseries_panel(
            "Build outcomes by template", "Finished workspace builds per second, by template and outcome.",
            "ops", [(f"sum by (template_name, status) (rate({builds}{sel()}[{RATE}]))",
                     "{{template_name}} {{status}}")], stacked=True))
        .with_panel(timeseries_panel(
            "Build failure ratio by template", "Share of finished builds that failed (alert: "
            "CoderdBuildFailureRatioHigh).", "percentunit",
            [(ratio_per(builds, 'status="failed"', "template_name"), "{{template_name}}")]))
        .with_panel(timeseries_panel(
            "Build duration by template and transition", "95th percentile of build time.", "s",
            [(quantile(0.95, "coderd_provisionerd_workspace_build_timings_seconds_bucket",
                       "template_name, workspace_transition"), "{{template_name}} {{workspace_transition}}")]))
        .with_panel(timeseries_panel(
            "Workspaces by template and state", "Live workspaces by template, their latest build's "
            "transition and job status.", "short",
            [(f"max by (template_name, workspace_transition, status) "
              f"(coderd_workspace_latest_build_status{sel()})",
              "{{template_name}} {{workspace_transition}} {{status}}")], stacked=True))
        .with_panel(timeseries_panel(
            "Workspaces created by template", "Workspaces created in the last hour (counted from the "
            "database: the same on every replica).", "short",
            [(f"max by (template_name) (increase(coderd_workspace_creation_total{sel()}[1h]))",
              "{{template_name}}")], span=24))
    )  # fmt: skip


def database_row() -> Section:
    return (
        Section("Database")
        .with_panel(timeseries_panel(
            "Query latency by query", "95th percentile of database query time, by statement "
            "(--prometheus-collect-db-metrics).", "s",
            [(quantile(0.95, "coderd_db_query_latencies_seconds_bucket", "query"), "{{query}}")]))
        .with_panel(timeseries_panel(
            "Queries by route", "Database queries per second, by the HTTP route that made them (\"\" "
            "for daemons and background work).", "ops",
            [(f"sum by (method, route) (rate(coderd_db_query_counts_total{sel()}[{RATE}]))",
              "{{method}} {{route}}")], stacked=True))
    )  # fmt: skip


def users_row() -> Section:
    return (
        Section("Users")
        .with_panel(timeseries_panel(
            "Users by status", "Registered users: active, dormant, suspended.", "short",
            [(f"max by (status) (coderd_api_total_user_count{sel()})", "{{status}}")], stacked=True))
        .with_panel(timeseries_panel(
            "Active users (last hour)", "Distinct users whose token or session was used in the last hour.",
            "short", [(f"max(coderd_api_active_users_duration_hour{sel()})", "active")]))
    )  # fmt: skip


def processes_row() -> Section:
    return (
        Section("Processes")
        .with_panel(timeseries_panel(
            "CPU by instance", "CPU time used per second (1 = one core), each server with its workers.",
            "percentunit", [(f"sum by (instance) (rate(process_cpu_seconds_total{sel()}[{RATE}]))",
                             "{{instance}}")], span=8))
        .with_panel(timeseries_panel(
            "Resident memory by instance", "Resident memory of each server and its workers.", "bytes",
            [(f"sum by (instance) (process_resident_memory_bytes{sel()})", "{{instance}}")], span=8))
        .with_panel(timeseries_panel(
            "Scrape targets up", "1 while Prometheus scrapes the instance (alert: CoderdScrapeDown).",
            "short", [(f"up{sel()}", "{{instance}}")], span=8))
        .with_panel(timeseries_panel(
            "Open file descriptors by instance", "Open files and sockets, against the limit.", "short",
            [(f"sum by (instance) (process_open_fds{sel()})", "open {{instance}}"),
             (f"max by (instance) (process_max_fds{sel()})", "limit {{instance}}")], span=8))
        .with_panel(timeseries_panel(
            "Threads and event-loop tasks", "OS threads and asyncio tasks alive, per instance.", "short",
            [(f"sum by (instance) (process_threads{sel()})", "threads {{instance}}"),
             (f"sum by (instance) (python_asyncio_tasks{sel()})", "tasks {{instance}}")], span=8))
        .with_panel(timeseries_panel(
            "Scrapes served by code", "Scrapes the metrics listener answered, by status.", "reqps",
            [(f"sum by (instance, code) (rate(promhttp_metric_handler_requests_total{sel()}[{RATE}]))",
              "{{instance}} {{code}}")], span=8))
    )  # fmt: skip


def label_variable(name: str, label: str, query_text: str) -> QueryVariable:
    """A multi-select of a label's values, "All" meaning any value."""
    return (
        QueryVariable(name)
        .label(label)
        .datasource(DATASOURCE)
        .query(query_text)
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(VariableOption(selected=True, text="All", value="$__all"))
    )


def build() -> Dashboard:
    dashboard = (
        Dashboard("coderd")
        .uid(UID)
        .description("A coderd deployment: API traffic, provisioner jobs, workspace builds, users, the "
                     "database and processes, per replica. Generated by metrics/grafana/dashboard.py.")
        .tags(["coderd", "coder"])
        .time("now-6h", "now")
        .refresh("30s")
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .with_variable(DatasourceVariable("datasource").label("Data source").type("prometheus"))
        .with_variable(label_variable("job", "Job", "label_values(coderd_api_concurrent_requests, job)"))
        .with_variable(label_variable(
            "instance", "Instance", 'label_values(coderd_api_concurrent_requests{job=~"$job"}, instance)'))
    )  # fmt: skip
    sections = (
        overview_row(),
        api_row(),
        jobs_row(),
        builds_row(),
        users_row(),
        database_row(),
        processes_row(),
    )
    for section in sections:
        dashboard = section.add_to(dashboard)
    return dashboard


def render() -> str:
    """The dashboard's JSON, as committed (stable key order, trailing newline)."""
    return json.dumps(build().build(), cls=JSONEncoder, sort_keys=True, indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--check", action="store_true", help=f"only compare with {OUTPUT.name}; exit 1 if stale"
    )
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not OUTPUT.exists() or OUTPUT.read_text() != text:
            print(f"dashboard: {OUTPUT} is stale: run python -m metrics.grafana.dashboard", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
