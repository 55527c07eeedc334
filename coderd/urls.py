from django.contrib import admin
from django.urls import path

from coderd.api import api
from coderd.views import healthz
from metrics.views import metrics_view

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("api/v2/", api.urls),
    path("admin/", admin.site.urls),
    path("metrics", metrics_view, name="metrics"),
]

# API clients get JSON for unknown paths and malformed ids (path converters reject them), and for
# errors outside the API's own handlers.
handler404 = "coderd.views.not_found"
handler500 = "coderd.views.server_error"
