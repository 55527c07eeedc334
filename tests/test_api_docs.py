"""/api/v2/docs works offline: Swagger UI's files come from this server, never from a CDN, and a
real (headless) Chromium with every other host unresolvable renders the API's operations."""

from __future__ import annotations

import json
import subprocess
import urllib.parse
from html.parser import HTMLParser

import pytest

from tests.services import Coderd, http_get

DOCS = "/api/v2/docs"


class References(HTMLParser):
    """Every URL the page's markup makes a browser load or link to (src, href)."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in {"src", "href"} and value]


def references(html: str) -> list[str]:
    parser = References()
    parser.feed(html)
    return parser.urls


def test_it_references_only_this_server(client):
    response = client.get(DOCS)
    assert response.status_code == 200
    html = response.content.decode()
    urls = references(html)
    assert any(url.endswith("swagger-ui-bundle.js") for url in urls), urls
    for url in urls:
        parts = urllib.parse.urlsplit(url)
        assert not parts.scheme and not parts.netloc and url.startswith("/"), url
    assert "cdn.jsdelivr.net" not in html and "//" not in "".join(urls)
    # Swagger UI's validator badge would be an image from validator.swagger.io.
    assert '"validatorUrl": null' in html


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    started = Coderd(tmp_path_factory.mktemp("coderd-docs"), kind="server", workers=1, metrics=False)
    try:
        yield started
    finally:
        started.stop()


def test_it_serves_every_asset_of_the_page(server):
    status, _, body = http_get(server.base + DOCS)
    assert status == 200
    urls = references(body.decode())
    assert len(urls) >= 4, urls  # stylesheet, two scripts, icons
    for url in urls:
        status, headers, asset = http_get(server.base + url)
        assert status == 200, url
        assert len(asset) > 100, url
    status, headers, spec = http_get(server.base + "/api/v2/openapi.json")
    assert status == 200 and json.loads(spec)["paths"]


def test_it_renders_the_operations_in_a_browser_that_reaches_no_other_host(server, chromium_bin, tmp_path):
    net_log = tmp_path / "net.json"
    argv = [
        chromium_bin,
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    # The browser's own background traffic off; every host but this machine unresolvable (offline).
    argv += [
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
    ]
    argv += ["--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1", f"--log-net-log={net_log}"]
    argv += ["--virtual-time-budget=20000", "--dump-dom", server.base + DOCS]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    # Swagger UI ran: one block per operation, read from our openapi.json.
    assert dom.count('class="opblock-summary-path"') >= 20, dom[-2000:]
    assert 'data-path="/api/v2/users/first"' in dom and 'data-path="/api/v2/workspaces"' in dom

    # What the page itself requested (initiator = its origin), from Chromium's network log.
    log = json.loads(net_log.read_text())
    event_types = {value: key for key, value in log["constants"]["logEventTypes"].items()}
    page_requests = [
        event["params"]["url"]
        for event in log["events"]
        if event_types.get(event["type"]) == "URL_REQUEST_START_JOB"
        and event.get("params", {}).get("initiator") == server.base
    ]
    assert any(url.endswith("/api/v2/openapi.json") for url in page_requests), page_requests
    assert [url for url in page_requests if not url.startswith(server.base + "/")] == []
