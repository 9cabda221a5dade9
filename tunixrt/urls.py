from django.conf import settings
from django.contrib import admin
from django.contrib.auth import urls as auth_urls
from django.templatetags.static import static
from django.urls import include, path
from django.views.generic import RedirectView

from .api import api

# Password reset mails a link: without a mail server configured its pages would only
# pretend to work (and tell who has an account), so they are off.
_auth_patterns = [
    pattern
    for pattern in auth_urls.urlpatterns
    if settings.EMAIL_CONFIGURED or not pattern.name.startswith("password_reset")
]

urlpatterns = [
    # Browsers ask for /favicon.ico on pages that name no icon (the admin, raw files).
    path("favicon.ico", RedirectView.as_view(url=static("runs/favicon.svg"), permanent=True)),
    path("admin/", admin.site.urls),
    path("api/", api.urls),
    path("accounts/", include(_auth_patterns)),
    path("datasets/", include("runs.datasets.urls")),
    path("", include("runs.pages.urls")),
]
