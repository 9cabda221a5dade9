from django.urls import path

from . import model_views, views

app_name = "runs"

urlpatterns = [
    path("", views.run_list, name="list"),
    path("runs/new/", views.run_new, name="new"),
    path("runs/new/validate/", views.run_validate, name="validate"),
    path("runs/new/preview/", views.run_preview, name="preview"),
    path("runs/new/method/", views.run_method_settings, name="method_settings"),
    path("runs/compare/", views.run_compare, name="compare"),
    path("models/", model_views.model_list, name="models"),
    path("models/<str:name>/delete/", model_views.model_delete, name="model_delete"),
    path("runs/<uuid:run_id>/", views.run_detail, name="detail"),
    path("runs/<uuid:run_id>/row/", views.run_row, name="row"),
    path("runs/<uuid:run_id>/cancel/", views.run_cancel, name="cancel"),
    path("runs/<uuid:run_id>/delete/", views.run_delete, name="delete"),
    path("runs/<uuid:run_id>/log.txt", views.run_log, name="log"),
    path("runs/<uuid:run_id>/files/<path:relative>", views.run_file, name="file"),
    path("runs/<uuid:run_id>/outputs.tar.gz", views.run_archive, name="archive"),
    path("runs/<uuid:run_id>/continue/", views.run_continue, name="continue"),
    path("runs/<uuid:run_id>/run-for-real/", views.run_for_real, name="for_real"),
    path(
        "runs/<uuid:run_id>/checkpoints/<int:step>.tar.gz",
        views.run_checkpoint_archive,
        name="checkpoint_archive",
    ),
    path("runs/<uuid:run_id>/evaluation/", model_views.evaluation_panel, name="evaluation"),
    path("runs/<uuid:run_id>/evaluate/", model_views.run_evaluate, name="evaluate"),
    path("runs/<uuid:run_id>/exports/", model_views.exports_panel, name="exports"),
    path("runs/<uuid:run_id>/export/", model_views.run_export, name="export"),
    path("runs/<uuid:run_id>/prompts/", model_views.playground_submit, name="prompts"),
    path("runs/<uuid:run_id>/prompts/render/", model_views.playground_render, name="render"),
    path(
        "runs/<uuid:run_id>/prompts/<uuid:prompt_id>/",
        model_views.playground_prompt_view,
        name="prompt",
    ),
    path(
        "runs/<uuid:run_id>/exports/<uuid:job_id>.tar.gz",
        model_views.export_archive,
        name="export_archive",
    ),
]
