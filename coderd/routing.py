"""Websocket routes. Patterns use the same names as the HTTP routes so metrics label them alike.

Ids are matched as `str` and checked by the consumer, so a malformed id is a clean refusal (403)
rather than "no route" (an exception in the router).
"""

from django.urls import path

from provisioner import consumers

websocket_urlpatterns: list = [
    path("api/v2/workspacebuilds/<str:workspacebuild>/logs", consumers.BuildLogsConsumer.as_asgi()),
    path(
        "api/v2/templateversions/<str:templateversion>/logs", consumers.TemplateVersionLogsConsumer.as_asgi()
    ),
    path("api/v2/workspaces/<str:workspace>/watch-ws", consumers.WorkspaceWatchConsumer.as_asgi()),
    path(
        "api/v2/organizations/<str:organization>/provisionerdaemons/serve",
        consumers.ProvisionerDaemonServeConsumer.as_asgi(),
    ),
]
