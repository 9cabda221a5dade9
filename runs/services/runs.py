"""Creating runs: validate a request into a plan, record it (dry-run or queued), run again,
continue from a checkpoint."""

from __future__ import annotations

import logging
import re
import uuid
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from .. import protocol, storage, training
from ..datasets.selectors import (
    dataset_preference_check,
    dataset_reward_check,
    dataset_truncation,
    datasets_visible,
    pair_sentence,
    truncation_sentence,
)
from ..datasets.services import dataset_check
from ..errors import Conflict, InvalidInput, LimitExceeded, TunixUnavailable
from ..formatting import plan_sentence
from ..hyperparameters import HYPERPARAMETERS, validate_hyperparameters
from ..models import Dataset, RunMode, RunStatus, TunixRun
from ..storage import UnsafePath, safe_relative
from .hosts import mesh_fits_hosts
from .lifecycle import run_enqueue
from .methods import base_run_section, check_fit, method_problems

log = logging.getLogger(__name__)


def _queue_lock() -> None:
    """Serialise the queue-limit check. SQLite's IMMEDIATE transactions already serialise
    writers; PostgreSQL needs a lock, or two submissions could both count below the limit."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [0x7475_6E69])


def _check_queue_limits(owner) -> None:
    active = TunixRun.objects.filter(mode=RunMode.LOCAL, status=RunStatus.PENDING)
    if active.filter(owner=owner).count() >= settings.MAX_QUEUED_RUNS_PER_USER:
        raise LimitExceeded(
            f"You already have {settings.MAX_QUEUED_RUNS_PER_USER} queued runs, the most "
            "allowed per user; wait for some to start or cancel them."
        )
    if active.count() >= settings.MAX_QUEUED_RUNS_TOTAL:
        raise LimitExceeded(
            f"The queue is full ({settings.MAX_QUEUED_RUNS_TOTAL} queued runs); try again later."
        )


def _check_dry_run_rate(owner) -> None:
    """At most DRY_RUNS_PER_MINUTE dry-runs per user in any minute: counted from the runs
    recorded (index run_owner_mode_newest), so every web process sees the same count."""
    limit = settings.DRY_RUNS_PER_MINUTE
    if not limit or owner is None:
        return
    since = timezone.now() - timedelta(minutes=1)
    recent = TunixRun.objects.filter(owner=owner, mode=RunMode.DRY_RUN, created_at__gte=since)
    if recent.count() >= limit:
        raise LimitExceeded(
            f"You created {limit} dry-runs in the last minute, the most allowed per user "
            "(TUNIXRT_DRY_RUNS_PER_MINUTE); wait a minute and try again."
        )


@dataclass(frozen=True)
class RunRequest:
    """A run's inputs, as a form, the API, "run again" and "continue" give them. The one shape
    that run_plan, run_create and run_request share."""

    dataset_key: str
    model_id: str
    mode: str = RunMode.DRY_RUN
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    output_dir: str | None = None
    timeout_seconds: int | None = None
    name: str = ""
    # Start from this run's result (its LoRA merged into the base model).
    base_run_id: str | None = None
    # Evaluate by generation when the run completes; None: TUNIXRT_EVALUATE_AFTER_RUN.
    evaluate_after: bool | None = None

    # Fields that "run again" may change besides the hyperparameters.
    CHANGEABLE = (
        "dataset_key",
        "model_id",
        "mode",
        "timeout_seconds",
        "name",
        "base_run_id",
        "evaluate_after",
    )


@dataclass
class RunPlan:
    """A validated, resolved run that is not stored yet (see run_plan)."""

    run: TunixRun
    problem: str | None  # what is wrong with the dataset (a dry-run records it as failed)
    rows: int | None  # valid rows, when the dataset's content was checked
    training: dict = field(default_factory=dict)  # what will train (see training_plan)


@dataclass
class _Checked:
    """The request's fields after validation (run_plan's first step)."""

    hyperparameters: dict[str, Any]
    timeout_seconds: int
    model: training.ModelRef
    output_dir: str
    output_path: Path


def _check_request(request: RunRequest, run_id: uuid.UUID) -> _Checked:
    """Validate every field; InvalidInput with one message per bad field."""
    if request.mode not in RunMode.values:
        raise InvalidInput("Unknown mode.", fields={"mode": "Must be 'dry-run' or 'local'."})
    hp, fields = validate_hyperparameters(request.hyperparameters or {})
    if not fields.keys() & {"mesh_fsdp", "mesh_tp"}:
        problem = mesh_fits_hosts(fsdp=hp["mesh_fsdp"], tp=hp["mesh_tp"])
        if problem:
            fields["mesh_fsdp"] = problem
    timeout = request.timeout_seconds
    if timeout is None:
        timeout = settings.RUN_TIMEOUT_DEFAULT
    elif not (isinstance(timeout, int) and 10 <= timeout <= settings.RUN_TIMEOUT_MAX):
        fields["timeout_seconds"] = f"Must be between 10 and {settings.RUN_TIMEOUT_MAX} seconds."
    model = None
    try:
        model = training.parse_model_ref(request.model_id)
    except training.ModelRefError as exc:
        fields["model_id"] = str(exc)
    # Every run's folder is runs/<id>: no run's folder can contain or sit inside another's,
    # which a free choice of folder could not promise (see README, "Security").
    output_dir, output_path = f"runs/{run_id}", None
    if request.output_dir is not None:
        fields["output_dir"] = (
            "The output folder cannot be chosen: every run writes to runs/<its id>."
        )
    else:
        try:
            output_path = safe_relative(Path(settings.ARTIFACTS_DIR), output_dir)
            if output_path.exists():
                fields["output_dir"] = "This output folder is already in use."
        except UnsafePath as exc:  # the artifacts root itself is a symlink loop or similar
            fields["output_dir"] = f"Output folder {exc}."
    if len(request.name) > 200:
        fields["name"] = "At most 200 characters."
    fields.update(method_problems(hp))
    if fields:
        raise InvalidInput("The run request is not valid.", fields=fields)
    return _Checked(hp, timeout, model, output_dir, output_path)


def _check_dataset(request: RunRequest, *, owner, read_file: bool):
    """(dataset or None, problem or None, validation report or None). A dry-run records the
    problem; a local run refuses to queue (InvalidInput). Another user's private dataset
    is unknown here, as everywhere."""
    key = request.dataset_key
    dataset = datasets_visible(owner).filter(key=key).first() if key else None
    report = None
    if dataset is None:
        problem = f"Unknown dataset '{str(key)[:160]}'."
    elif not read_file:
        problem = None
    else:
        report = dataset_check(dataset)
        problem = None if report.ok else f"Dataset {dataset.key} is not usable: {report.summary()}."
    if problem and request.mode == RunMode.LOCAL:
        raise InvalidInput(problem, fields={"dataset_key": problem})
    return dataset, problem, report


def _resume_dir(parent: TunixRun | None) -> str | None:
    if parent is None:
        return None
    return str(Path(settings.ARTIFACTS_DIR) / parent.output_dir / protocol.CHECKPOINTS_DIRNAME)


def run_plan(
    *,
    owner,
    request: RunRequest,
    parent: TunixRun | None = None,
    command: list[str] | None = None,
    check_dataset: bool = True,
) -> RunPlan:
    """Validate a run request and resolve its exact config and command, storing nothing.

    run_create records what this returns; the run form previews it. Bad input raises
    InvalidInput; a local run also raises when the dataset is unusable or Tunix is
    unavailable. `check_dataset=False` skips re-reading the dataset file (the form's live
    preview calls this on every change; the config does not depend on the file's rows).
    """
    run_id = uuid.uuid4()
    checked = _check_request(request, run_id)
    dataset, problem, report = _check_dataset(request, owner=owner, read_file=check_dataset)
    check_fit(dataset, checked.hyperparameters["method"])
    base_run = base_run_section(
        owner, request.base_run_id, request.model_id, checked.hyperparameters["method"]
    )
    status = training.probe() if command is None else None
    if request.mode == RunMode.LOCAL and status is not None and not status.available:
        raise TunixUnavailable(status.message)
    problem = problem or _checkpoint_problem(checked.model, request.mode)
    sha256 = dataset.sha256 if dataset else ""
    config = training.build_config(
        run_id=str(run_id),
        model=checked.model,
        dataset_key=request.dataset_key,
        dataset_sha256=sha256,
        output_path=checked.output_path,
        hyperparameters=checked.hyperparameters,
        resume_checkpoint_dir=_resume_dir(parent),
        base_run=base_run,
    )
    config["evaluate_after"] = _evaluate_after(request)
    run = TunixRun(
        id=run_id,
        owner=owner,
        mode=request.mode,
        name=request.name,
        dataset=dataset,
        dataset_key=str(request.dataset_key)[:160],
        dataset_sha256=sha256,
        model_id=request.model_id,
        model_family=checked.model.family,
        output_dir=checked.output_dir,
        timeout_seconds=checked.timeout_seconds,
        config=config,
        command=command if command is not None else training.build_command(checked.output_path),
        environment=_environment_from_probe(status),
        parent=parent,
        base_run_id=base_run["run_id"] if base_run else None,
        **checked.hyperparameters,
    )
    plan = training_plan(dataset, checked.hyperparameters, checked.model, parent)
    run.environment["plan"] = plan
    return RunPlan(run=run, problem=problem, rows=report.rows if report else None, training=plan)


def _evaluate_after(request: RunRequest) -> bool:
    """Whether the run is evaluated by generation when it completes (the server's default
    TUNIXRT_EVALUATE_AFTER_RUN unless the request says)."""
    wanted = request.evaluate_after
    return bool(settings.EVALUATE_AFTER_RUN if wanted is None else wanted)


def _checkpoint_problem(model: training.ModelRef, mode: str) -> str | None:
    """Why a local checkpoint cannot be trained correctly (config.json fields Tunix's model
    code does not honour), or None; a local run refuses to queue. A hub model's config is
    checked by the launcher after the download."""
    if model.source != "local":
        return None
    _, refusals = training.checkpoint_check(model)
    if not refusals:
        return None
    problem = f"Model {model.model_id} cannot be trained correctly: " + "; ".join(refusals) + "."
    if mode == RunMode.LOCAL:
        raise InvalidInput(problem, fields={"model_id": problem})
    return problem


def training_plan(dataset, hp: dict, model: training.ModelRef, parent=None) -> dict[str, Any]:
    """What a run will train, before anything runs: steps, epochs, rows for training and
    evaluation (before rows dropped for length; the launcher logs the exact figures),
    the chat template, which turns are trained, and the dtypes."""
    rows = dataset.row_count if dataset else 0
    train_rows, eval_rows = protocol.split_sizes(rows, protocol.EVAL_FRACTION)
    plan = protocol.schedule(train_rows, hp["batch_size"], hp["num_epochs"], hp["max_steps"])
    plan |= {
        "train_rows": train_rows,
        "eval_rows": eval_rows,
        "chat_template": training.template_name(model),
        "trained_turns": "every assistant turn",
        "compute_dtype": hp["compute_dtype"],
        "eval_loss": "per-token mean over the whole held-out split",
    }
    if parent is not None:
        step = storage.run_latest_checkpoint(parent)
        if step is not None:
            plan["from_step"] = step
    return plan


def run_create(
    *,
    owner,
    parent: TunixRun | None = None,
    command: list[str] | None = None,
    request: RunRequest | None = None,
    **inputs: Any,
) -> TunixRun:
    """Validate and record a run, given as a RunRequest or as its fields by keyword.

    A dry-run checks everything a local run would need, builds the exact config and
    command, and finishes `completed` (or `failed`, naming the dataset problem) without
    starting any process. A local run is validated the same way, then queued; bad input
    raises InvalidInput and stores nothing. `command` replaces the Tunix launcher with
    another argv; only trusted code (tests, benchmarks) passes it, never a request.
    """
    request = request or RunRequest(**inputs)
    if request.mode == RunMode.DRY_RUN:
        _check_dry_run_rate(owner)  # before the dataset is read
    plan = run_plan(owner=owner, request=request, parent=parent, command=command)
    run = plan.run
    if request.mode == RunMode.DRY_RUN:
        _finish_dry_run(plan)
        _run_insert(run)
        return run
    with transaction.atomic():
        _queue_lock()
        _check_queue_limits(owner)
        if parent is not None and not _lock_parent(parent):
            raise Conflict("The run to continue from was deleted meanwhile.")
        run.status = RunStatus.PENDING
        run.phase = protocol.PHASE_QUEUED
        run.enqueued_at = timezone.now()
        _run_insert(run)
        transaction.on_commit(lambda: run_enqueue(run_id=run.id))
    return run


def _lock_parent(parent: TunixRun) -> bool:
    """Lock the run a child continues from until the child is recorded: a delete or a
    retention pass (which lock it too) then sees the active child and keeps the parent."""
    return TunixRun.objects.select_for_update().filter(id=parent.id).exists()


def _finish_dry_run(plan: RunPlan) -> None:
    """A dry-run ends as it is created: completed, or failed naming the dataset problem."""
    run = plan.run
    run.started_at = run.finished_at = timezone.now()
    run.phase = protocol.PHASE_DONE
    if plan.problem:
        run.status = RunStatus.FAILED
        run.message = f"Dry-run failed: {plan.problem}"
        return
    run.status = RunStatus.COMPLETED
    run.message = (
        f"Dry-run passed: {plan.rows} valid rows; the config and command below are "
        "what a local run would execute. Nothing was executed. " + plan_sentence(plan.training)
    )
    model = training.parse_model_ref(run.model_id)
    # Preference pairs are cut by their own rule, which the pair check below counts.
    preference = run.method in ("dpo", "orpo")
    figures = None if preference else _dry_run_dataset_stats(run.dataset, model, run.max_seq_length)
    if figures is not None:
        run.environment = {**run.environment, "dataset_stats": figures}
        run.message += " " + truncation_sentence(figures, run.long_completions)
    if model.source == "local":
        fields_read, _ = training.checkpoint_check(model)
        run.environment["config_fields"] = fields_read
        run.message += " Read from config.json: " + ", ".join(sorted(fields_read)) + "."
    if run.method == "grpo":
        check = dataset_reward_check(run.dataset, run.config["method"]["rewards"])
        run.environment = {**run.environment, "reward_check": check}
        if check["warnings"]:
            run.message += " Reward check: " + " ".join(check["warnings"])
        else:
            run.message += (
                f" Reward check: the {check['rows']} references get every reward's maximum "
                "and no wrong answer does."
            )
    elif preference:
        pair = dataset_preference_check(run.dataset, run.model_family, model, run.max_seq_length)
        if pair:
            run.environment = {**run.environment, "preference_pair": pair}
            run.message += " " + pair_sentence(pair)


def _dry_run_dataset_stats(dataset: Dataset, model, max_seq_length: int) -> dict | None:
    """The truncation figure a dry-run reports (see dataset_truncation), without
    the histogram. A failure here must not fail the dry-run: it is logged and left out."""
    try:
        figures = dataset_truncation(
            dataset, family=model.family, model=model, max_seq_length=max_seq_length
        )
    except Exception:
        log.exception("dataset statistics for dry-run on %s failed", dataset.key)
        return None
    figures.pop("histogram", None)
    return figures


def _run_insert(run: TunixRun) -> None:
    """Insert a new run. Two requests naming the same output folder can both pass the check
    above; the unique constraint lets only one in, and the other gets the same 422."""
    try:
        with transaction.atomic():
            run.save(force_insert=True)
    except IntegrityError as exc:
        raise InvalidInput(
            "The run request is not valid.",
            fields={"output_dir": "This output folder is already in use."},
        ) from exc


def _environment_from_probe(status: training.TunixStatus | None) -> dict[str, Any]:
    if status is None:
        return {}
    return {"tunix_available": status.available, "probe": status.versions or {}}


def run_request(run: TunixRun) -> RunRequest:
    """The inputs that created `run` (for "run again" and "continue")."""
    return RunRequest(
        dataset_key=run.dataset_key,
        model_id=run.model_id,
        mode=run.mode,
        timeout_seconds=run.timeout_seconds,
        name=run.name,
        hyperparameters={name: getattr(run, name) for name in HYPERPARAMETERS},
        base_run_id=str(run.base_run_id) if run.base_run_id else None,
        evaluate_after=(run.config or {}).get("evaluate_after"),
    )


def run_rerun(*, run: TunixRun, owner, changes: dict[str, Any] | None = None) -> TunixRun:
    """A new run from the same inputs, optionally changed. The new run gets its own folder
    (never the old one's), and a launcher command is rebuilt, a custom one kept."""
    request = run_request(run)
    hp, fields = dict(request.hyperparameters), {}
    for key, value in (changes or {}).items():
        if key in HYPERPARAMETERS:
            hp[key] = value
        elif key in RunRequest.CHANGEABLE:
            fields[key] = value
        else:
            raise InvalidInput(f"'{key}' cannot be changed on a rerun.", fields={key: "Unknown."})
    request = replace(request, hyperparameters=hp, **fields)
    command = None if training.is_launcher_command(run.command) or not run.command else run.command
    return run_create(owner=owner, command=command, request=request)


_CONTINUED = re.compile(r"^(?P<base>.*) \(continued(?: (?P<n>\d+))?\)$", re.DOTALL)


def continued_name(run: TunixRun) -> str:
    """ "<parent name> (continued)"; a continuation of a continuation counts on:
    "(continued 2)". An unnamed parent is named by its short id."""
    name = run.name or f"Run {str(run.id)[:8]}"
    match = _CONTINUED.match(name)
    if match:
        name = f"{match['base']} (continued {int(match['n'] or 1) + 1})"
    else:
        name = f"{name} (continued)"
    if len(name) > 200:  # the model's max_length: shorten the parent's part, keep the suffix
        suffix = name[name.rindex(" (continued") :]
        name = name[: 200 - len(suffix) - 1] + "…" + suffix
    return name


def run_resume(*, run: TunixRun, owner, max_steps: int) -> TunixRun:
    """Continue `run` from its latest complete checkpoint: the same config with more steps,
    as a new local run linked to its parent."""
    if not run.is_final:
        raise Conflict("Only a finished run can be continued.")
    step = storage.run_latest_checkpoint(run)
    if step is None:
        raise Conflict("The run has no complete checkpoint to continue from.")
    if max_steps <= step:
        raise InvalidInput(
            f"max_steps must be greater than the checkpoint's step {step}.",
            fields={"max_steps": f"Must be greater than {step}."},
        )
    request = run_request(run)
    request = replace(
        request,
        mode=RunMode.LOCAL,
        name=continued_name(run),
        hyperparameters={**request.hyperparameters, "max_steps": max_steps},
    )
    new = run_create(owner=owner, parent=run, request=request)
    TunixRun.objects.filter(id=new.id).update(resume_from_step=step)
    new.resume_from_step = step
    return new
