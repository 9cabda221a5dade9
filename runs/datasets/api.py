"""The datasets router (/api/datasets). Thin: parse, call a service or selector, shape the
answer. Uploads are multipart and stream to disk; runs.uploads holds them to the limit."""

from __future__ import annotations

from ninja import Field as NField
from ninja import File, Form, Query, Router, Schema, Status
from ninja.files import UploadedFile
from pydantic import ConfigDict

from runs import hyperparameters, selectors
from runs.api.auth import api_auth
from runs.api.schemas import (
    DatasetFormatName,
    DatasetOut,
    DatasetPageOut,
    DatasetPreviewOut,
    ErrorOut,
    FamilyName,
    literal,
)
from runs.datasets import selectors as dataset_selectors
from runs.datasets import services as dataset_services
from runs.datasets.views import export_response
from runs.models import Dataset

router = Router(auth=api_auth, tags=["datasets"])

Family = FamilyName
# An upload may leave the format to be detected from the first row.
UploadFormatName = literal(["", *Dataset.Format.values])
_SEQ = hyperparameters.HYPERPARAMETERS["max_seq_length"]


class DatasetFilters(Schema):
    format: DatasetFormatName | None = None
    q: str | None = NField(None, max_length=100, description="Text search in key/description")
    page: int = NField(1, ge=1, le=1_000_000)
    page_size: int = NField(50, ge=1, le=200)


@router.get(
    "", response={200: DatasetPageOut, 401: ErrorOut, 422: ErrorOut}, summary="List datasets"
)
def dataset_list(request, filters: Query[DatasetFilters]):
    found = dataset_selectors.datasets_list(user=request.auth, q=filters.q, format=filters.format)
    page = selectors.paginate(found, page=filters.page, page_size=filters.page_size)
    return page.as_dict()


_SEGMENT = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


class DatasetUploadIn(Schema):
    name: str = NField(..., min_length=1, max_length=100, pattern=_SEGMENT)
    version: str = NField(..., min_length=1, max_length=50, pattern=_SEGMENT)
    format: UploadFormatName = NField("", description="Empty: detected from the first row.")
    description: str = NField("", max_length=2000)
    shared: bool = NField(False, description="Visible to every user (default: only to you).")


@router.post(
    "",
    response={
        201: DatasetOut,
        400: ErrorOut,
        401: ErrorOut,
        409: ErrorOut,
        413: ErrorOut,
        422: ErrorOut,
    },
    summary="Upload a JSONL dataset (multipart); validated before anything is stored",
)
def dataset_create(request, form: Form[DatasetUploadIn], file: File[UploadedFile]):
    # An over-size body never gets here: runs.uploads stops it while it streams (413).
    dataset = dataset_services.dataset_import(
        source=file,
        name=form.name,
        version=form.version,
        owner=request.auth,
        declared_format=form.format or None,
        description=form.description,
        shared=form.shared,
    )
    return Status(201, dataset_selectors.dataset_get(dataset.key, user=request.auth))


@router.get(
    "/{key}", response={200: DatasetOut, 401: ErrorOut, 404: ErrorOut}, summary="One dataset"
)
def dataset_detail(request, key: str):
    return dataset_selectors.dataset_get(key, user=request.auth)


class PreviewQuery(Schema):
    family: Family | None = NField(None, description="Chat template; default llama3.")
    model_id: str | None = NField(
        None,
        max_length=200,
        description="A model reference; decides the family, and a local model's "
        "tokenizer.json counts tokens (else characters are counted).",
    )
    max_seq_length: int = NField(_SEQ.default, ge=_SEQ.minimum, le=_SEQ.maximum)
    limit: int = NField(5, ge=1, le=50, description="Rows to show.")


@router.get(
    "/{key}/preview",
    response={200: DatasetPreviewOut, 401: ErrorOut, 404: ErrorOut, 409: ErrorOut, 422: ErrorOut},
    summary="First rows, as stored and as rendered training text, with length statistics",
)
def dataset_preview(request, key: str, params: Query[PreviewQuery]):
    dataset = dataset_selectors.dataset_get(key, user=request.auth)
    family, model = dataset_selectors.dataset_target(family=params.family, model_id=params.model_id)
    return {
        "dataset": dataset,
        "family": family,
        "model_id": model.model_id if model else None,
        "rows": dataset_selectors.dataset_preview_rows(dataset, family=family, limit=params.limit),
        "stats": dataset_selectors.dataset_truncation(
            dataset, family=family, model=model, max_seq_length=params.max_seq_length
        ),
    }


@router.get(
    "/{key}/export",
    response={200: None, 401: ErrorOut, 404: ErrorOut, 409: ErrorOut, 422: ErrorOut},
    summary="Download the rendered training JSONL ({prompt, completion} per line)",
    openapi_extra={
        "responses": {
            200: {
                "description": "The rendered rows, one JSON object per line.",
                "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
            }
        }
    },
)
def dataset_export(request, key: str, family: Family | None = None, model_id: str | None = None):
    dataset = dataset_selectors.dataset_get(key, user=request.auth)
    family, _ = dataset_selectors.dataset_target(family=family, model_id=model_id)
    return export_response(dataset, family)


@router.delete(
    "/{key}",
    response={204: None, 401: ErrorOut, 403: ErrorOut, 404: ErrorOut, 409: ErrorOut},
    summary="Delete a dataset (409 while runs refer to it)",
)
def dataset_delete(request, key: str):
    dataset_services.dataset_delete(
        dataset=dataset_selectors.dataset_get(key, user=request.auth), user=request.auth
    )
    return Status(204, None)


class DatasetChangeIn(Schema):
    model_config = ConfigDict(extra="forbid", strict=True)

    shared: bool = NField(..., description="Visible to every user, or only to its owner.")


@router.patch(
    "/{key}",
    response={
        200: DatasetOut,
        400: ErrorOut,
        401: ErrorOut,
        403: ErrorOut,
        404: ErrorOut,
        413: ErrorOut,
        422: ErrorOut,
    },
    summary="Share a dataset with everyone, or make it private again (owner or staff)",
)
def dataset_change(request, key: str, payload: DatasetChangeIn):
    dataset = dataset_selectors.dataset_get(key, user=request.auth)
    dataset_services.dataset_set_shared(dataset=dataset, user=request.auth, shared=payload.shared)
    return dataset_selectors.dataset_get(key, user=request.auth)
