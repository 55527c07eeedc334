"""The ASGI application: Django for HTTP (with the admin's static files), Channels for websockets."""

import os
import sys

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "coderd.settings")

from coderd.env import EnvError

try:
    from django.core.asgi import get_asgi_application

    django_asgi_app = get_asgi_application()
except EnvError as exc:
    print(f"coderd: {exc}", file=sys.stderr)
    sys.exit(2)

from channels.routing import ProtocolTypeRouter, URLRouter
from channels.security.websocket import AllowedHostsOriginValidator
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.urls import re_path

from coderd.routing import websocket_urlpatterns
from coderd.ws_notfound import not_found
from metrics.asgi import MetricsWebsocketMiddleware

application = ProtocolTypeRouter(
    {
        # Static files (the admin's styles) are served here, with DEBUG off too, so that
        # `manage.py server` and gunicorn need no web server in front.
        "http": ASGIStaticFilesHandler(django_asgi_app),
        "websocket": MetricsWebsocketMiddleware(
            AllowedHostsOriginValidator(
                # The catch-all stays out of websocket_urlpatterns: the metrics label it path="".
                URLRouter([*websocket_urlpatterns, re_path(r"", not_found)])
            )
        ),
    }
)
