from django.contrib import admin
from django.urls import path

from coderd.api import api

urlpatterns = [
    path("api/v2/", api.urls),
    path("admin/", admin.site.urls),
]
