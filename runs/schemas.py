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
