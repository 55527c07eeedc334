from django.contrib import admin
from django.urls import path

from coderd.api import api
from metrics.views import metrics_view

urlpatterns = [
    path("api/v2/", api.urls),
    path("admin/", admin.site.urls),
    path("metrics", metrics_view, name="metrics"),
]
