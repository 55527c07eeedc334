"""Websocket routes. Patterns use the same names as the HTTP routes so metrics label them alike."""

websocket_urlpatterns: list = [
    # Filled by the provisioner and workspaces apps: logs?follow, watch-ws, provisionerdaemons/serve.
]
