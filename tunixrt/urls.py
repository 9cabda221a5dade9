from django.contrib import admin
from django.templatetags.static import static
from django.urls import include, path
from django.views.generic import RedirectView

from .api import api

urlpatterns = [
    # Browsers ask for /favicon.ico on pages that name no icon (the admin, raw files).
    path("favicon.ico", RedirectView.as_view(url=static("runs/favicon.svg"), permanent=True)),
    path("admin/", admin.site.urls),
    path("api/", api.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("datasets/", include("runs.datasets.urls")),
    path("", include("runs.pages.urls")),
]
