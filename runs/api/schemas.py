"""Request and response schemas of the JSON API."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from django.conf import settings
from ninja import Field, Schema
from pydantic import ConfigDict

from runs import protocol
from runs.hyperparameters import HYPERPARAMETERS
from runs.models import Dataset, LogChunk, RunMode, RunStatus
from runs.selectors import STREAM_TAIL_BYTES, run_stream_tail


def hp(name: str, *, change: bool = False) -> Any:
    """A field with the bounds and default of the one table in runs.hyperparameters. Strict:
    JSON `true` is not the integer 1, and "5" is not a number. For a change (rerun), absent
    unless given."""
    bound = HYPERPARAMETERS[name]
    default = None if change else bound.default
    if bound.kind is str:
        if bound.choices:
            return Field(default, description=bound.help)
        return Field(
            default, max_length=int(bound.maximum), pattern=r"^[^\x00\n]*$", description=bound.help
        )
    return Field(default, ge=bound.minimum, le=bound.maximum, description=bound.help, strict=True)


def hp_type(bound) -> Any:
    """The annotation of a setting: a Literal of its choices, or its kind."""
    return literal(bound.choices) if bound.choices else bound.kind


def hyperparameter_fields(*, change: bool = False) -> dict[str, Any]:
    """Annotations and fields of every hyperparameter, for a schema's namespace."""
    annotations = {
        name: (hp_type(bound) | None) if (bound.optional or change) else hp_type(bound)
        for name, bound in HYPERPARAMETERS.items()
    }
    fields = {name: hp(name, change=change) for name in HYPERPARAMETERS}
    return {"__annotations__": annotations, **fields}


def literal(values) -> Any:
    """A Literal type of the given choices (derived, never written out by hand)."""
    return Literal[tuple(values)]


RunStatusName = literal(RunStatus.values)
RunModeName = literal(RunMode.values)
DatasetFormatName = literal(Dataset.Format.values)
FamilyName = literal(protocol.FAMILIES)
LogStreamName = literal(LogChunk.Stream.values)

# The hyperparameters of a new run and of a rerun's changes, from the one table.
HyperparametersIn = type("HyperparametersIn", (Schema,), hyperparameter_fields())
HyperparameterChangesIn = type(
    "HyperparameterChangesIn", (Schema,), hyperparameter_fields(change=True)
)
HyperparametersOut = type(
    "HyperparametersOut",
    (Schema,),
    {
        "__annotations__": {
            name: (hp_type(b) | None) if b.optional else hp_type(b)
            for name, b in HYPERPARAMETERS.items()
        }
    },
)


# Strings end up in PostgreSQL text columns, which cannot hold NUL: refuse it at the edge
# (422) instead of failing at the database (500).
TEXT = r"^[^\x00]*$"
# Dataset keys are `name-version`, both safe path segments: nothing that could walk a path.
DATASET_KEY = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
# Model references (local:NAME, ORG/NAME, kaggle:...) start with a letter or digit, so none
# can be read as an option; runs.training.parse_model_ref checks the exact forms.
MODEL_ID = r"^[A-Za-z0-9][A-Za-z0-9:/._-]*$"


class FieldErrorOut(Schema):
    loc: list[str | int] = Field(..., description="Where: source, parameter and field path.")
    msg: str
    type: str


class ErrorOut(Schema):
    """The one shape of every error the API answers."""

    detail: str | list[FieldErrorOut] = Field(
        ..., description="What went wrong; for a schema error (422), one entry per problem."
    )
    fields: dict[str, str] | None = Field(None, description="Messages by field name.")


class HealthOut(Schema):
    status: Literal["ok"]


class ReadyOut(Schema):
    status: Literal["ok", "unavailable"]
    detail: str | None = None


class TunixStatusOut(Schema):
    available: bool
    version: str | None
    jax_version: str | None
    python: str
    message: str
    versions: dict[str, str | None] | None
    supported_families: list[str]


class RunIn(HyperparametersIn):
    # Strict: `true` is not 1 and "5" is not a number. Unknown fields are refused, among them
    # `output_dir`: every run's folder is runs/<id>, so no run's folder can hold another's.
    model_config = ConfigDict(extra="forbid", strict=True)

    dataset_key: str = Field(..., min_length=1, max_length=160, pattern=DATASET_KEY)
    model_id: str = Field(
        ...,
        min_length=1,
        max_length=200,
        pattern=MODEL_ID,
        description="local:NAME, ORG/NAME (Hugging Face) or kaggle:OWNER/MODEL/...",
    )
    dry_run: bool = Field(True, description="Validate and build the config; execute nothing.")
    # Not strict: the schema is strict, and a strict UUID refuses the string JSON carries.
    base_run_id: UUID | None = Field(
        None,
        strict=False,
        description="Start from this completed LoRA run's result (merged into the base).",
    )
    name: str = Field("", max_length=200, pattern=TEXT)
    timeout_seconds: int | None = Field(None, ge=10, le=settings.RUN_TIMEOUT_MAX, strict=True)
    evaluate_after: bool | None = Field(
        None,
        description="Evaluate by generation when the run completes "
        "(default: the server's TUNIXRT_EVALUATE_AFTER_RUN).",
    )


class RunOut(HyperparametersOut):
    id: UUID
    owner: str = Field(..., alias="owner.username")
    status: RunStatusName
    mode: RunModeName
    name: str
    dataset_key: str
    dataset_sha256: str
    model_id: str
    model_family: str
    output_dir: str
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
    kind: str = Field(..., description="train, evaluate or export")
    source_id: UUID | None = Field(None, description="The trained run of an evaluation/export.")


def _stream_tails(run) -> dict[str, tuple[str, bool]]:
    """Both stream tails of a run, read once per answer (each field resolver asks)."""
    tails = getattr(run, "_stream_tails", None)
    if tails is None:
        tails = {name: run_stream_tail(run, name) for name in ("stdout", "stderr")}
        run._stream_tails = tails
    return tails


class RunDetailOut(RunOut):
    """One run, with the fields of the original tunix-rt's `TunixRunResponse` beside ours,
    so scripts written against it keep working: `run_id` (= `id`), `completed_at`
    (= `finished_at`) and the tails of the training process's streams."""

    run_id: UUID = Field(..., description="The run's id (the same as `id`).")
    completed_at: datetime | None = Field(
        None, description="When the run ended (the same as `finished_at`); null while active."
    )
    stdout: str = Field(
        "",
        description=f"The last {STREAM_TAIL_BYTES // 1024} KiB (UTF-8 bytes, cut on a "
        "character boundary) of the training process's standard output.",
    )
    stdout_truncated: bool = Field(False, description="`stdout` leaves earlier output out.")
    stderr: str = Field(
        "",
        description=f"The last {STREAM_TAIL_BYTES // 1024} KiB of its standard error, "
        "cut the same way.",
    )
    stderr_truncated: bool = Field(False, description="`stderr` leaves earlier output out.")

    @staticmethod
    def resolve_run_id(obj) -> UUID:
        return obj.id

    @staticmethod
    def resolve_completed_at(obj) -> datetime | None:
        return obj.finished_at

    @staticmethod
    def resolve_stdout(obj) -> str:
        return _stream_tails(obj)["stdout"][0]

    @staticmethod
    def resolve_stdout_truncated(obj) -> bool:
        return _stream_tails(obj)["stdout"][1]

    @staticmethod
    def resolve_stderr(obj) -> str:
        return _stream_tails(obj)["stderr"][0]

    @staticmethod
    def resolve_stderr_truncated(obj) -> bool:
        return _stream_tails(obj)["stderr"][1]


class RunListItemOut(Schema):
    """What a list row shows; `GET /api/tunix/runs/{id}` has the rest (config, command, ...)."""

    id: UUID
    owner: str = Field(..., alias="owner.username")
    name: str
    status: RunStatusName
    mode: RunModeName
    model_id: str
    dataset_key: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    duration_seconds: float | None
    phase: str
    progress_step: int | None
    progress_total: int | None
    final_loss: float | None = Field(
        None, description="The last train/loss reported (so far, for an active run)."
    )
    pinned: bool

    @staticmethod
    def resolve_final_loss(obj) -> float | None:
        value = getattr(obj, "final_loss", None)
        return value if value is not None and math.isfinite(value) else None


class RunPageOut(Schema):
    items: list[RunListItemOut]
    count: int = Field(..., description="Runs matching the filters; 1,000 when there are more.")
    count_exact: bool = Field(..., description="false: there are more than `count` runs.")
    next_cursor: str | None = Field(..., description="Pass as `cursor` for older runs.")
    prev_cursor: str | None = Field(..., description="Pass as `before` for newer runs.")
    page: int | None = Field(..., description="The page number, when paged by number.")
    page_size: int
    pages: int | None = Field(..., description="Number of pages, when paged by number and exact.")


# --- datasets ---------------------------------------------------------------------------


class DatasetOut(Schema):
    key: str
    name: str
    version: str
    format: DatasetFormatName
    row_count: int
    size_bytes: int
    sha256: str
    description: str
    owner: str | None
    shared: bool = Field(..., description="Visible to every user, not only its owner and staff.")
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


# --- following a run, its outputs, and changing it ---------------------------------------


class LogChunkOut(Schema):
    seq: int
    stream: LogStreamName
    text: str


class LogPageOut(Schema):
    run_id: UUID
    status: str
    final: bool = Field(..., description="The run has ended: no chunk will be added.")
    chunks: list[LogChunkOut] = Field(..., description="Chunks after `after`, oldest first.")
    next_after: int = Field(..., description="Pass as `after` to get what follows.")
    has_more: bool = Field(..., description="More chunks are already stored; ask again now.")


class MetricPointOut(Schema):
    step: int
    value: float | None = Field(..., description="null where the trainer reported NaN or ±inf.")


class MetricsOut(Schema):
    run_id: UUID
    series: dict[str, list[MetricPointOut]] = Field(
        ..., description="Points by metric name (train/loss, eval/loss, ...), ordered by step."
    )


class OutputFileOut(Schema):
    path: str = Field(..., description="Relative to the run's output folder.")
    size: int


class OutputsOut(Schema):
    run_id: UUID
    files: list[OutputFileOut]
    truncated: bool = Field(..., description="The folder holds more files than listed.")


class DeletedOut(Schema):
    id: UUID
    freed_bytes: int


class RerunIn(HyperparameterChangesIn):
    """Fields to change; every field left out keeps the original run's value."""

    # A rerun always gets its own output folder; say so instead of ignoring `output_dir`.
    model_config = ConfigDict(extra="forbid", strict=True)

    dataset_key: str = Field(None, min_length=1, max_length=160, pattern=DATASET_KEY)
    model_id: str = Field(None, min_length=1, max_length=200, pattern=MODEL_ID)
    dry_run: bool = Field(None, description="Default: the original run's mode.")
    name: str = Field(None, max_length=200, pattern=TEXT)
    timeout_seconds: int = Field(None, ge=10, le=settings.RUN_TIMEOUT_MAX, strict=True)


class ResumeIn(Schema):
    max_steps: int = Field(
        ...,
        ge=1,
        le=HYPERPARAMETERS["max_steps"].maximum,
        description="Train until this step; must exceed the checkpoint's step.",
    )
