"""The project's URLs plus a stand-in `datasets` namespace (for the navigation test)."""

from django.http import HttpResponse
from django.urls import include, path

from tunixrt.urls import urlpatterns as project_urlpatterns

datasets_patterns = ([path("", lambda request: HttpResponse("datasets"), name="list")], "datasets")

urlpatterns = [path("datasets/", include(datasets_patterns)), *project_urlpatterns]
