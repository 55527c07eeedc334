"""/favicon.ico answers with coderd's icon: browsers ask for it on every page that names no icon, and
a 404 there was a WARNING line in the log each time."""

from __future__ import annotations

import logging

from django.contrib.staticfiles import finders


def test_it_serves_the_icon_at_favicon_ico(client, caplog):
    with caplog.at_level(logging.INFO):
        response = client.get("/favicon.ico")
    assert response.status_code == 200
    assert response["Content-Type"] == "image/svg+xml"
    with open(finders.find("coderd/favicon.svg"), "rb") as icon:
        assert response.content == icon.read()
    assert "max-age" in response["Cache-Control"]
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_it_names_the_icon_on_admin_pages(client):
    html = client.get("/admin/login/").content.decode()
    assert 'rel="icon" href="/static/coderd/favicon.svg"' in html


def test_it_answers_only_reads(client):
    assert client.post("/favicon.ico").status_code == 405
