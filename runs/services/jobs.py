"""Evaluations and exports of a trained run. Each is a run of its own kind (`RunKind`) whose
source is the trained run: the same queue, claim, supervisor, logs, heartbeat, cancel and reaper
carry it (runs/services/lifecycle.py); only its config and launcher module differ
(runs.launcher.evaluate, runs.launcher.export). `job_after_finish` is the queue task's
follow-up: evaluation rows are stored, and a completed training run gets its evaluation."""

from __future__ import annotations

import io
import json
import logging
import uuid
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from .. import protocol, storage
from ..errors import Conflict, InvalidInput, NotFound
from ..models import Dataset, EvaluationRow, Metric, RunKind, RunMode, RunStatus, TunixRun
from .lifecycle import run_enqueue

log = logging.getLogger(__name__)

ROWS_FILENAME = "evaluation_rows.jsonl"
LAUNCHER_MODULES = {
    RunKind.EVALUATE: "runs.launcher.evaluate",
    RunKind.EXPORT: "runs.launcher.export",
}
# Bounds of the evaluation settings: (default, minimum, maximum).
GENERATION_BOUNDS: dict[str, tuple[float, float, float]] = {
    "max_rows": (50, 1, 1000),
    "max_new_tokens": (64, 1, 1024),
    "temperature": (0.0, 0.0, 2.0),
    "top_p": (1.0, 0.01, 1.0),
    "seed": (0, 0, 2**31 - 1),
}
_INTEGER_SETTINGS = ("max_rows", "max_new_tokens", "seed")


def generation_settings(values: dict[str, Any] | None) -> dict[str, Any]:
    """Validated decoding settings (greedy unless a temperature is given)."""
    values, out, fields = values or {}, {}, {}
    for name, (default, low, high) in GENERATION_BOUNDS.items():
        value = values.get(name)
        if value in (None, ""):
            value = default
        try:
            value = int(value) if name in _INTEGER_SETTINGS else float(value)
        except (TypeError, ValueError):
            fields[name] = "Must be a number."
            continue
        if not low <= value <= high:
            fields[name] = f"Must be between {low} and {high}."
        out[name] = value
    if fields:
        raise InvalidInput("The generation settings are not valid.", fields=fields)
    return out


def _check_source(run: TunixRun) -> None:
    if run.kind != RunKind.TRAIN or run.mode != RunMode.LOCAL:
        raise Conflict("Only a local training run can be evaluated or exported.")
    if run.status != RunStatus.COMPLETED:
        raise Conflict(f"The run is {run.status}; only a completed run can be used.")
    if storage.run_latest_checkpoint(run) is None:
        raise Conflict("The run has no complete checkpoint to load.")


def _source_section(run: TunixRun) -> dict[str, Any]:
    config = run.config
    return {
        "run_id": str(run.id),
        "model_dir": config["model"]["path"],
        "model_id": run.model_id,
        "family": run.model_family,
        # GRPO's step folders are one level down (checkpoints/actor/<step>).
        "checkpoint_dir": str(
            Path(config["output"]["checkpoint_dir"]).joinpath(
                *protocol.checkpoint_folder(run.method).split("/")[1:]
            )
        ),
        "lora": config.get("lora") or {"enabled": False},
        "seed": config["training"]["seed"],
    }


def _new_job(source: TunixRun, kind: str, owner, dataset: Dataset | None, name: str) -> TunixRun:
    job_id = uuid.uuid4()
    output_dir = f"runs/{job_id}"
    output_path = Path(settings.ARTIFACTS_DIR) / output_dir
    config_path = output_path / protocol.CONFIG_FILENAME
    return TunixRun(
        id=job_id,
        owner=owner,
        kind=kind,
        source=source,
        mode=RunMode.LOCAL,
        name=name[:200],
        dataset=dataset,
        dataset_key=dataset.key if dataset else source.dataset_key,
        dataset_sha256=dataset.sha256 if dataset else source.dataset_sha256,
        model_id=source.model_id,
        model_family=source.model_family,
        output_dir=output_dir,
        **{
            f: getattr(source, f)
            for f in (
                "learning_rate",
                "num_epochs",
                "batch_size",
                "max_seq_length",
                "max_steps",
                "lora_rank",
                "lora_alpha",
                "seed",
                "eval_every_n_steps",
            )
        },
        timeout_seconds=settings.RUN_TIMEOUT_DEFAULT,
        command=[settings.TUNIX_PYTHON, "-m", LAUNCHER_MODULES[kind], str(config_path)],
        enqueued_at=timezone.now(),
    )


def _store_and_enqueue(job: TunixRun) -> TunixRun:
    job.save(force_insert=True)
    transaction.on_commit(lambda: run_enqueue(run_id=job.id))
    return job


@transaction.atomic
def evaluation_create(
    *, run: TunixRun, owner, dataset: Dataset | None = None, generation: dict | None = None
) -> TunixRun:
    """Queue an evaluation by generation of a completed run, on its own held-out rows or on
    all rows of another dataset (up to max_rows)."""
    _check_source(run)
    settings_ = generation_settings(generation)
    other = dataset is not None and dataset.pk != run.dataset_id
    target = dataset if dataset is not None else run.dataset
    if target is None:
        raise Conflict(f"The run's dataset {run.dataset_key} no longer exists; choose another.")
    job = _new_job(run, RunKind.EVALUATE, owner, target, f"Evaluation of {run.name or run.id}")
    output_path = Path(settings.ARTIFACTS_DIR) / job.output_dir
    job.config = {
        "schema": protocol.SCHEMA_VERSION,
        "run_id": str(job.id),
        "source": _source_section(run),
        "dataset": {
            "path": str(output_path / protocol.TRAIN_DATA_FILENAME),
            "key": target.key,
            "format": target.format,
            "eval_fraction": 0.0 if other else run.config["dataset"]["eval_fraction"],
            # The split's seed as training used it (older configs: the training seed).
            "seed": run.config["dataset"].get("split_seed", run.config["training"]["seed"]),
        },
        "generation": {**settings_, "batch_size": 8},
        "output": {"dir": str(output_path), "rows": str(output_path / ROWS_FILENAME)},
    }
    return _store_and_enqueue(job)


@transaction.atomic
def export_create(*, run: TunixRun, owner, name: str = "") -> TunixRun:
    """Queue the export of a completed run as the local model `name` (local:NAME)."""
    _check_source(run)
    name = name or f"{run.model_id.split(':')[-1].split('/')[-1]}-{str(run.id)[:8]}"
    if not storage.is_safe_segment(name):
        raise InvalidInput(
            "The model name is not valid.",
            fields={"name": "Letters, digits, '.', '_' and '-', starting with a letter or digit."},
        )
    target = Path(settings.MODELS_DIR) / name
    if (
        target.exists()
        or TunixRun.objects.filter(
            kind=RunKind.EXPORT, status__in=(RunStatus.PENDING, RunStatus.RUNNING), name=name
        ).exists()
    ):
        raise InvalidInput("The model name is taken.", fields={"name": f"local:{name} exists."})
    job = _new_job(run, RunKind.EXPORT, owner, run.dataset, name)
    metrics = {
        m.name: round(m.value, 6)
        for m in Metric.objects.filter(run=run).order_by("step")  # the last step wins
    }
    job.config = {
        "schema": protocol.SCHEMA_VERSION,
        "run_id": str(job.id),
        "source": _source_section(run),
        "export": {
            "dir": str(target),
            "name": name,
            "card": {
                "base_model": run.model_id,
                "run_id": str(run.id),
                "method": "LoRA merged into the base weights."
                if run.lora_rank
                else "Full fine-tuning.",
                "dataset_key": run.dataset_key,
                "dataset_sha256": run.dataset_sha256,
                "hyperparameters": run.config.get("training", {})
                | {
                    "lora_rank": run.lora_rank,
                    "lora_alpha": run.lora_alpha,
                },
                "metrics": metrics,
                "evaluation": _latest_scores(run),
            },
        },
        "output": {"dir": str(Path(settings.ARTIFACTS_DIR) / job.output_dir)},
    }
    return _store_and_enqueue(job)


def _latest_scores(run: TunixRun) -> dict[str, float]:
    evaluation = (
        TunixRun.objects.filter(source=run, kind=RunKind.EVALUATE, status=RunStatus.COMPLETED)
        .order_by("-created_at")
        .first()
    )
    if evaluation is None:
        return {}
    return {
        m.name.removeprefix("generation/"): round(m.value, 4)
        for m in Metric.objects.filter(run=evaluation, name__startswith="generation/")
    }


def _change(base: float, tuned: float) -> str:
    if tuned > base:
        return EvaluationRow.Change.BETTER
    if tuned < base:
        return EvaluationRow.Change.WORSE
    return EvaluationRow.Change.STILL_RIGHT if tuned >= 1.0 else EvaluationRow.Change.STILL_WRONG


def db_text(value) -> str:
    """Text a model generated, storable in any database: PostgreSQL text cannot hold NUL,
    which a byte-level tokenizer can decode from a random model's output."""
    return str(value).replace("\x00", "\ufffd")


def evaluation_store_rows(*, job: TunixRun) -> int:
    """Read the rows file the evaluation wrote into the database (once)."""
    if EvaluationRow.objects.filter(evaluation=job).exists():
        return 0
    try:  # from the job's folder, or the store it was published to
        handle = io.TextIOWrapper(storage.run_output_file(job, ROWS_FILENAME), encoding="utf-8")
    except NotFound:
        return 0
    headline = None
    rows = []
    with handle:
        for line in handle:
            record = json.loads(line)
            headline = headline or next(iter(record["tuned_scores"]), None)
            base = float(record["base_scores"].get(headline, 0.0)) if headline else 0.0
            tuned = float(record["tuned_scores"].get(headline, 0.0)) if headline else 0.0
            rows.append(
                EvaluationRow(
                    evaluation=job,
                    index=record["index"],
                    prompt=db_text(record["prompt"]),
                    reference=db_text(record["reference"]),
                    base_output=db_text(record["base_output"]),
                    tuned_output=db_text(record["tuned_output"]),
                    base_scores=record["base_scores"],
                    tuned_scores=record["tuned_scores"],
                    base_score=base,
                    tuned_score=tuned,
                    change=_change(base, tuned),
                )
            )
    EvaluationRow.objects.bulk_create(rows, ignore_conflicts=True)
    return len(rows)


def job_after_finish(*, run_id) -> str:
    """After the queue task: store a completed evaluation's rows; evaluate a completed
    training run when its config asks for it (TUNIXRT_EVALUATE_AFTER_RUN by default)."""
    run = TunixRun.objects.filter(id=run_id).select_related("owner", "dataset").first()
    if run is None or run.status != RunStatus.COMPLETED:
        return "nothing to do"
    if run.kind == RunKind.EVALUATE:
        return f"stored {evaluation_store_rows(job=run)} evaluation rows"
    wanted = run.config.get("evaluate_after", settings.EVALUATE_AFTER_RUN)
    if (
        run.kind == RunKind.TRAIN
        and wanted
        and run.command[2:3] == [protocol.LAUNCHER_MODULE]  # real Tunix runs have weights
    ):
        try:
            job = evaluation_create(run=run, owner=run.owner)
        except (Conflict, InvalidInput) as exc:
            return f"no evaluation: {exc}"
        return f"queued evaluation {job.id}"
    return "nothing to do"
