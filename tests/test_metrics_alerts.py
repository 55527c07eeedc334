"""The shipped alert rules (metrics/prometheus/alerts.yml): valid for promtool, each one documented,
and each one tested by alerts_test.yml with synthetic series that make it fire and not fire."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from tests.services import REPO

RULES_DIR = REPO / "metrics" / "prometheus"
RULES = RULES_DIR / "alerts.yml"
RULES_TEST = RULES_DIR / "alerts_test.yml"

# What an operator is promised a page for (issue 8): one rule each.
EXPECTED_ALERTS = {
    "CoderdScrapeDown",
    "CoderdNoProvisionerDaemons",
    "CoderdJobsWaitingTooLong",
    "CoderdBuildFailureRatioHigh",
    "CoderdHigh5xxRatio",
    "CoderdHighLatency",
}


def alert_rules() -> dict[str, dict]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"] if "alert" in rule}


def promtool(binary: str, *args: str, cwd: Path = RULES_DIR) -> subprocess.CompletedProcess[str]:
    return subprocess.run([binary, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_it_passes_promtool_check_rules(promtool_bin):
    done = promtool(promtool_bin, "check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(EXPECTED_ALERTS)} rules found" in done.stdout


def test_it_passes_promtool_test_rules(promtool_bin):
    done = promtool(promtool_bin, "test", "rules", RULES_TEST.name)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_it_has_the_alerts_an_operator_pages_on():
    assert set(alert_rules()) == EXPECTED_ALERTS


def test_it_gives_every_alert_a_severity_a_summary_and_a_runbook():
    for name, rule in alert_rules().items():
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        annotations = rule["annotations"]
        assert annotations["summary"].strip(), name
        # A runbook paragraph: what it means and what to do, several sentences long.
        assert len(annotations["description"].split(". ")) >= 2, name
        assert len(annotations["description"]) >= 200, name


def test_it_tests_every_alert_both_firing_and_not_firing():
    cases: dict[str, set[bool]] = {}
    for test in yaml.safe_load(RULES_TEST.read_text())["tests"]:
        for case in test["alert_rule_test"]:
            cases.setdefault(case["alertname"], set()).add(bool(case.get("exp_alerts")))
    assert {name: {True, False} for name in EXPECTED_ALERTS} == cases
