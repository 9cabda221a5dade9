"""Request and response schemas of the JSON API."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from django.conf import settings
from ninja import Field, Schema

from .tunix import HYPERPARAMETERS


def hp(name: str) -> Any:
    """A hyperparameter field with the bounds and default of the one table in runs.tunix."""
    bound = HYPERPARAMETERS[name]
    return Field(bound.default, ge=bound.minimum, le=bound.maximum, description=bound.help)


class ErrorOut(Schema):
    detail: Any = Field(..., description="What went wrong; a list of field errors for 422.")
    fields: dict[str, str] | None = Field(None, description="Messages by field name.")


class HealthOut(Schema):
    status: Literal["ok"]
    database: bool


class TunixStatusOut(Schema):
    available: bool
    version: str | None
    jax_version: str | None
    python: str
    message: str
    versions: dict[str, str | None] | None
    supported_families: list[str]


class RunIn(Schema):
    dataset_key: str = Field(..., min_length=1, max_length=160)
    model_id: str = Field(..., min_length=1, max_length=200, description="local:NAME or ORG/NAME")
    output_dir: str | None = Field(
        None, max_length=255, description="Relative to the artifacts root; default runs/<id>."
    )
    dry_run: bool = Field(True, description="Validate and build the config; execute nothing.")
    name: str = Field("", max_length=200)
    timeout_seconds: int | None = Field(None, ge=10, le=settings.RUN_TIMEOUT_MAX)
    learning_rate: float = hp("learning_rate")
    num_epochs: int = hp("num_epochs")
    batch_size: int = hp("batch_size")
    max_seq_length: int = hp("max_seq_length")
    max_steps: int | None = hp("max_steps")
    lora_rank: int = hp("lora_rank")
    lora_alpha: float = hp("lora_alpha")
    seed: int = hp("seed")
    eval_every_n_steps: int = hp("eval_every_n_steps")


class RunOut(Schema):
    id: UUID
    owner: str = Field(..., alias="owner.username")
    status: str
    mode: str
    name: str
    dataset_key: str
    dataset_sha256: str
    model_id: str
    model_family: str
    output_dir: str
    learning_rate: float
    num_epochs: int
    batch_size: int
    max_seq_length: int
    max_steps: int | None
    lora_rank: int
    lora_alpha: float
    seed: int
    eval_every_n_steps: int
    timeout_seconds: int
    config: dict[str, Any]
    command: list[str]
    environment: dict[str, Any]
    exit_code: int | None
    message: str
    phase: str
    progress_step: int | None
    progress_total: int | None
    eta_seconds: float | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    duration_seconds: float | None
    parent_id: UUID | None
    pinned: bool


class RunPageOut(Schema):
    items: list[RunOut]
    count: int
    page: int
    page_size: int
    pages: int


# --- datasets ---------------------------------------------------------------------------


class DatasetOut(Schema):
    key: str
    name: str
    version: str
    format: Literal["reasoning", "prompt_completion", "messages"]
    row_count: int
    size_bytes: int
    sha256: str
    description: str
    owner: str | None
    created_at: datetime
    run_count: int = Field(0, description="Runs that refer to this dataset.")

    @staticmethod
    def resolve_owner(obj) -> str | None:
        return obj.owner.username if obj.owner_id else None

    @staticmethod
    def resolve_run_count(obj) -> int:
        return getattr(obj, "run_count", 0)


class DatasetPageOut(Schema):
    items: list[DatasetOut]
    count: int
    page: int
    page_size: int
    pages: int


class DatasetRowOut(Schema):
    line: int = Field(..., description="Line number in the stored file.")
    data: dict[str, Any] = Field(..., description="The row as stored.")
    prompt: str = Field(..., description="Training text masked from the loss.")
    completion: str = Field(..., description="Training text the loss is computed on.")


class HistogramBinOut(Schema):
    start: int
    end: int = Field(..., description="Exclusive.")
    count: int


class DatasetStatsOut(Schema):
    rows: int
    measured_rows: int = Field(..., description="Fewer than rows when tokens were sampled.")
    unit: Literal["tokens", "characters"]
    counted_with: str = Field(..., description="How lengths were counted, in words.")
    family: str
    max_seq_length: int
    truncated_rows: int = Field(..., description="Rows longer than max_seq_length.")
    truncated_share: float
    dropped_rows: int = Field(..., description="Rows whose prompt alone fills max_seq_length.")
    min: int
    median: int
    p95: int
    max: int
    histogram: list[HistogramBinOut]


class DatasetPreviewOut(Schema):
    dataset: DatasetOut
    family: str
    model_id: str | None
    rows: list[DatasetRowOut]
    stats: DatasetStatsOut
