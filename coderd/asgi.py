"""The ASGI application: Django for HTTP (two middleware chains, coderd/handlers.py; the admin's
static files), Channels for websockets."""

import os
import sys

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "coderd.settings")

from coderd.env import EnvError, invoked_as

try:
    import django

    django.setup(set_prefix=False)  # as get_asgi_application(): the prefix comes from each request
    from django.conf import settings

    from coderd import datadir
    from coderd.handlers import HTTPApplication

    # A server is starting (uvicorn coderd.asgi:application too): its data folder is made now, so a
    # folder that cannot be made stops it here in one line rather than failing its first request.
    datadir.make(settings.DATA_DIR)

    http_app = HTTPApplication()
except EnvError as exc:
    print(f"{invoked_as()}: {exc}", file=sys.stderr)
    sys.exit(2)

from channels.routing import ProtocolTypeRouter, URLRouter
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.exceptions import SuspiciousFileOperation
from django.http import Http404
from django.urls import re_path

from coderd.gc_tuning import settle_heap
from coderd.logredact import redact_server_logs
from coderd.routing import websocket_urlpatterns
from coderd.ws_notfound import RefusalMiddleware, allowed_hosts_origin_check, not_found, quiet_uvicorn_denials
from metrics.asgi import MetricsWebsocketMiddleware
from metrics.middleware import StaticFilesMetrics


class StaticFilesHandler(ASGIStaticFilesHandler):
    """Django's handler, but a path that climbs out of the static folders (`/static/../x`) is a 404:
    Django's `safe_join` raises SuspiciousFileOperation there, which its handler lets escape as a 500
    with a traceback (it only turns Http404 into a response)."""

    async def get_response_async(self, request):
        # Counted by the metrics with legacy names off (path="STATIC"), as today's Coder does.
        metered = self.__dict__.get("_metered")
        if metered is None:
            metered = self._metered = StaticFilesMetrics(super().get_response_async)
        return await metered(request)

    def serve(self, request):
        try:
            return super().serve(request)
        except SuspiciousFileOperation:
            raise Http404("No such static file.") from None


application = ProtocolTypeRouter(
    {
        # Static files (the admin's styles) are served here, with DEBUG off too, so that
        # `manage.py server` and gunicorn need no web server in front.
        "http": StaticFilesHandler(http_app),
        # Refusals inside the metrics, so that they count the status the client got (401, 404...).
        "websocket": MetricsWebsocketMiddleware(
            RefusalMiddleware(
                allowed_hosts_origin_check(
                    # The catch-all stays out of websocket_urlpatterns: the metrics label it path="".
                    URLRouter([*websocket_urlpatterns, re_path(r"", not_found)])
                )
            )
        ),
    }
)
quiet_uvicorn_denials()
redact_server_logs()
settle_heap()
