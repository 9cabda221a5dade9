from django.urls import path

from runs.datasets import views as dataset_views

app_name = "datasets"

urlpatterns = [
    path("", dataset_views.dataset_list, name="list"),
    path("upload/", dataset_views.dataset_upload, name="upload"),
    path("upload/check/", dataset_views.dataset_upload_check, name="upload-check"),
    path("<str:key>/", dataset_views.dataset_detail, name="detail"),
    path("<str:key>/export/", dataset_views.dataset_export, name="export"),
    path("<str:key>/delete/", dataset_views.dataset_delete, name="delete"),
]
