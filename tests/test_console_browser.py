"""The admin console in a real browser: Debian's Chromium driven by Playwright, against a real server
(gunicorn, one uvicorn worker: the console reads the merged multiprocess metrics there).

One server and one browser for the module; each test opens its pages in a fresh context that
records the host of every request and websocket (none may go to another host) and every console
error (there must be none). In CI a missing Chromium or Playwright fails these tests.

Screenshots go to CODER_TEST_SCREENSHOTS when set (a folder), so a person can look at the pages.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.services import Coderd, missing, wait_for

CHROMIUM = os.environ.get("CODER_TEST_CHROMIUM", "/usr/bin/chromium")
PASSWORD = "correct-horse-battery"
# A start that takes 6 s and writes a line a second: followers see lines arrive.
SLOW_SOURCE = {
    "start": {"duration_ms": 6000, "logs": [f"step {i} of 6" for i in range(1, 7)]},
    "stop": {"duration_ms": 200, "logs": ["stopping"]},
}
QUICK_SOURCE = {"start": {"duration_ms": 100, "logs": ["up"]}, "stop": {"duration_ms": 100, "logs": ["down"]}}
FAILING_SOURCE = {"start": {"duration_ms": 100, "logs": ["pulling image"], "fail": True}}


def _playwright() -> Any:
    if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
        missing(f"Chromium ({CHROMIUM})")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("Playwright (pip install -r requirements-dev.txt)")
    return sync_playwright


class Deployment:
    """The server, an owner's token, and a few API helpers."""

    def __init__(self, server: Coderd) -> None:
        self.server = server
        self.token = server.first_user("admin", PASSWORD)
        self.templates = {
            name: self.template(name, source)
            for name, source in (("quick", QUICK_SOURCE), ("slow", SLOW_SOURCE), ("failing", FAILING_SOURCE))
        }

    def api(self, method: str, path: str, body: Any = None) -> Any:
        status, data = self.server.request(method, "/api/v2" + path, body, token=self.token)
        assert status < 300, (method, path, status, data)
        return data

    def template(self, name: str, source: dict[str, Any]) -> str:
        version = self.api(
            "POST",
            "/organizations/default/templateversions",
            {"name": f"{name}-v1", "provisioner": "echo", "source": source},
        )
        wait_for(
            lambda: self.api("GET", f"/templateversions/{version['id']}")["job"]["status"] == "succeeded",
            30,
            f"the import of {name}",
        )
        return self.api(
            "POST", "/organizations/default/templates", {"name": name, "template_version_id": version["id"]}
        )["id"]

    def workspace(self, name: str, template: str) -> dict[str, Any]:
        return self.api(
            "POST",
            "/organizations/default/members/me/workspaces",
            {"name": name, "template_id": self.templates[template]},
        )

    def settled(self) -> None:
        """Every build has ended."""

        def done() -> bool:
            jobs = [w["latest_build"]["job"]["status"] for w in self.api("GET", "/workspaces")["workspaces"]]
            return all(s in ("succeeded", "failed", "canceled") for s in jobs)

        wait_for(done, 60, "builds to end")

    def states(self) -> dict[str, int]:
        """Workspaces by Coder's state, as the API reports them (the build's status)."""
        out: dict[str, int] = {}
        for w in self.api("GET", "/workspaces")["workspaces"]:
            status = w["latest_build"]["status"]
            out[status] = out.get(status, 0) + 1
        return out

    def daemons_online(self) -> int:
        daemons = self.api("GET", "/organizations/default/provisionerdaemons")
        return sum(1 for d in daemons if d["status"] != "offline")


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    _playwright()  # fail or skip before starting anything
    server = Coderd(
        tmp_path_factory.mktemp("console-browser"),
        kind="gunicorn",
        workers=1,
        env={"CODER_PROVISIONER_DAEMONS": "2"},
    )
    try:
        yield Deployment(server)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser(deployment: Deployment) -> Iterator[Any]:
    with _playwright()() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


class Watched:
    """A logged-in page whose requests, websockets and console errors are all recorded."""

    def __init__(self, browser: Any, deployment: Deployment) -> None:
        self.base = deployment.server.base
        self.context = browser.new_context(viewport={"width": 1400, "height": 1000})
        self.hosts: set[str] = set()
        self.errors: list[str] = []

        def record(route: Any) -> None:
            self.hosts.add(urlsplit(route.request.url).netloc)
            route.continue_()

        self.context.route("**/*", record)
        self.page = self.context.new_page()
        self.page.on("websocket", lambda ws: self.hosts.add(urlsplit(ws.url).netloc))
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.goto(f"{self.base}/admin/login/")
        self.page.fill("#id_username", "admin@example.com")
        self.page.fill("#id_password", PASSWORD)
        self.page.click("input[type=submit]")
        self.page.wait_for_url(f"{self.base}/admin/")

    def shot(self, name: str) -> None:
        folder = os.environ.get("CODER_TEST_SCREENSHOTS")
        if folder:
            Path(folder).mkdir(parents=True, exist_ok=True)
            self.page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)

    def number(self, key: str) -> int:
        return int(self.page.locator(f'#coderd-overview [data-k="{key}"]').inner_text().replace(",", ""))

    def states(self) -> dict[str, int]:
        out = {}
        for link in self.page.locator("#coderd-overview .coderd-state").all():
            n = int(link.locator(".coderd-state-n").inner_text().replace(",", ""))
            if n:
                out[link.get_attribute("data-state")] = n
        return out


@pytest.fixture
def watched(browser: Any, deployment: Deployment) -> Iterator[Watched]:
    w = Watched(browser, deployment)
    try:
        yield w
        host = urlsplit(deployment.server.base).netloc
        assert w.hosts == {host}, f"requests to other hosts: {w.hosts - {host}}"
        assert w.errors == [], w.errors
    finally:
        w.context.close()


def until(check: Any, what: str, timeout: float = 20) -> None:
    """Wait for `check()` to hold, reading the page as it updates itself."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last is True:
            return
        time.sleep(0.25)
    raise AssertionError(f"{what}: {last}")


def test_it_shows_the_apis_counts_on_the_overview(watched: Watched, deployment: Deployment) -> None:
    deployment.workspace("dev", "quick")
    deployment.workspace("broken", "failing")
    deployment.settled()
    page = watched.page
    page.goto(f"{watched.base}/admin/")
    api_states = deployment.states()
    assert api_states == {"running": 1, "failed": 1}

    def same() -> bool | tuple:
        shown = (watched.states(), watched.number("daemons.online"), watched.number("failed_builds.count"))
        wanted = (api_states, deployment.daemons_online(), 1)
        return shown == wanted or (shown, wanted)

    until(same, "the overview's counts against the API's")
    failed = page.locator('#coderd-overview [data-k="failed_builds.newest"] tr')
    assert "admin/broken" in failed.first.inner_text()
    assert watched.number("users.active_last_hour") == 1  # the owner, logged in
    # Times people read: "… ago", with the exact UTC time on hover.
    assert " ago" in failed.first.locator("td").first.inner_text()
    assert failed.first.locator("td").first.get_attribute("title").endswith(" UTC")
    until(lambda: page.locator("figure[data-chart] polyline").count() > 0 or "no chart yet", "a chart", 40)
    watched.shot("overview")


def test_it_updates_the_overview_while_it_is_open(watched: Watched, deployment: Deployment) -> None:
    page = watched.page
    page.goto(f"{watched.base}/admin/")
    page.evaluate("window.__sameDocument = true")
    before = sum(watched.states().values())
    deployment.workspace("fresh", "slow")
    until(lambda: sum(watched.states().values()) == before + 1, "a new workspace counted without a reload")
    until(lambda: watched.number("jobs.running") >= 1, "its build counted as running")
    assert page.evaluate("window.__sameDocument") is True  # the same document: nothing reloaded
    watched.shot("overview-updated")
    deployment.settled()


def test_it_shows_log_lines_as_they_arrive(watched: Watched, deployment: Deployment) -> None:
    build = deployment.workspace("streaming", "slow")["latest_build"]
    page = watched.page
    page.goto(f"{watched.base}/admin/workspaces/workspacebuild/{build['id']}/change/")
    page.evaluate("window.__sameDocument = true")
    lines = page.locator("pre.coderd-logs .coderd-log")
    at_open = lines.count()
    assert at_open < 6  # the build had not written them all yet
    until(lambda: lines.count() >= 6 or lines.count(), "every line, followed live", timeout=30)
    assert "step 6 of 6" in lines.last.inner_text()
    assert page.evaluate("window.__sameDocument") is True
    watched.shot("build-live-logs")

    # Error lines stand out: a failed build's page shows its error line in the error colour.
    failed = deployment.workspace("failing-again", "failing")["latest_build"]
    deployment.settled()
    page.goto(f"{watched.base}/admin/workspaces/workspacebuild/{failed['id']}/change/")
    error = page.locator("pre.coderd-logs .coderd-log-error").first
    info = page.locator("pre.coderd-logs .coderd-log-info").first
    assert error.evaluate("e => getComputedStyle(e).color") != info.evaluate("e => getComputedStyle(e).color")
    watched.shot("build-failed")


def test_it_starts_and_stops_a_workspace_from_its_page(watched: Watched, deployment: Deployment) -> None:
    workspace = deployment.workspace("buttons", "quick")
    deployment.settled()
    page = watched.page
    page.goto(f"{watched.base}/admin/workspaces/workspace/{workspace['id']}/change/")
    assert page.locator(".coderd-builds tbody tr").count() == 1
    page.click("button.coderd-tool[value=stop]")
    page.wait_for_url("**/workspacebuild/**")  # to the new build's page
    deployment.settled()
    assert deployment.api("GET", f"/workspaces/{workspace['id']}")["latest_build"]["status"] == "stopped"
    # The admin's button is in the audit trail: who, what, from this browser.
    [row] = deployment.api("GET", "/audit?q=action:stop+resource_type:workspace_build")["audit_logs"]
    assert row["user"]["username"] == "admin" and row["status_code"] < 400
    assert row["additional_fields"]["workspace_name"] == "buttons"
    assert "Chrome" in row["user_agent"]
    page.goto(f"{watched.base}/admin/workspaces/workspace/{workspace['id']}/change/")
    assert page.locator(".coderd-builds tbody tr").count() == 2
    assert "stopped" in page.locator(".field-state_badge").inner_text()
    page.click("a.coderd-danger")  # delete asks first
    page.locator('input[value="Yes, delete it"]').wait_for()
    watched.shot("workspace-delete-confirm")
    page.click("text=No, take me back")
    page.wait_for_url(f"**/workspace/{workspace['id']}/change/")
    watched.shot("workspace")
