"""The audit trail in a real browser: an admin action taken by clicking appears in the trail's admin
page and in GET /api/v2/audit, with the browser's address and user agent. Reuses the console's
browser harness (one gunicorn server, Debian's Chromium through Playwright)."""

from __future__ import annotations

from tests.test_console_browser import (  # noqa: F401  (fixtures, found by name)
    Deployment,
    Watched,
    browser,
    deployment,
    watched,
)


def test_it_shows_an_admin_action_in_the_trail(watched: Watched, deployment: Deployment) -> None:  # noqa: F811
    deployment.api(
        "POST",
        "/users",
        {"email": "grace@example.com", "username": "grace", "password": "correct-horse-battery"},
    )
    page = watched.page
    page.goto(f"{watched.base}/admin/users/user/?q=grace")
    page.check("input[name=_selected_action]")
    page.select_option("select[name=action]", "suspend_users")
    page.click("button[name=index]")
    page.locator("text=Suspended 1 user").wait_for()

    page.goto(f"{watched.base}/admin/audit/auditlog/?resource_type__exact=user&action__exact=write")
    first = page.locator("#result_list tbody tr").first
    row = first.inner_text()
    assert "grace" in row and "status: active → suspended" in row and "200" in row, row
    watched.shot("audit-trail")
    first.locator("th a").click()
    user_agent = page.locator(".field-user_agent .readonly").inner_text()
    assert "Chrome" in user_agent, user_agent

    entries = deployment.api("GET", "/audit?q=username:admin+action:write+resource_target:grace")[
        "audit_logs"
    ]
    assert len(entries) == 1
    assert entries[0]["diff"]["status"] == {"old": "active", "new": "suspended", "secret": False}
    assert "Chrome" in entries[0]["user_agent"] and entries[0]["ip"] == "127.0.0.1"
