"""Websocket routes. Patterns use the same names as the HTTP routes so metrics label them alike."""

from django.urls import path

from provisioner import consumers

websocket_urlpatterns: list = [
    path("api/v2/workspacebuilds/<uuid:workspacebuild>/logs", consumers.BuildLogsConsumer.as_asgi()),
    path(
        "api/v2/templateversions/<uuid:templateversion>/logs", consumers.TemplateVersionLogsConsumer.as_asgi()
    ),
    path("api/v2/workspaces/<uuid:workspace>/watch-ws", consumers.WorkspaceWatchConsumer.as_asgi()),
    path(
        "api/v2/organizations/<str:organization>/provisionerdaemons/serve",
        consumers.ProvisionerDaemonServeConsumer.as_asgi(),
    ),
]
