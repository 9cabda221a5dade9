"""Runs side by side: configs flattened and differences marked."""

from __future__ import annotations

from ..errors import Forbidden, NotFound
from ..models import TunixRun
from .evaluations import latest_scores
from .metrics import run_metric_tail
from .runs import run_for_user

# One training batch's loss is noisy; compare a mean of the last steps instead.
FINAL_WINDOW = 10
FINAL_TRAIN_LOSS = f"final train/loss (mean of the last {FINAL_WINDOW} steps)"
FINAL_EVAL_LOSS = "final eval/loss (per-token mean over the held-out split)"


def smoothed_final(points: list) -> float | None:
    """The mean of the last FINAL_WINDOW (step, value) points, or None without any."""
    values = [value for _, value in points[-FINAL_WINDOW:]]
    return round(sum(values) / len(values), 6) if values else None


def runs_for_compare(*, user, run_ids: list[str], limit: int = 10) -> tuple[list, list[str]]:
    """The runs to compare, in the order given, and a message for each id that is unknown or
    not visible to `user`. Duplicates are dropped."""
    runs, problems, seen = [], [], set()
    for run_id in run_ids:
        if run_id in seen:
            continue
        seen.add(run_id)
        if len(runs) >= limit:
            problems.append(f"At most {limit} runs can be compared at once.")
            break
        try:
            runs.append(run_for_user(user=user, run_id=run_id))
        except (NotFound, Forbidden):
            problems.append(f"Run {str(run_id)[:40]} was not found.")
    return runs, problems


def _flatten(value, prefix: str = "") -> dict[str, object]:
    if isinstance(value, dict) and value:
        flat: dict[str, object] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: value}


def run_comparison(runs: list[TunixRun]) -> list[dict]:
    """Rows of a side-by-side table: the run's inputs and outcome, then every config key
    (flattened, `training.learning_rate`), each with one value per run and whether the
    values differ."""
    summaries = []
    for run in runs:
        # The final figures read the last stored points (the charts' series are downsampled).
        train_tail = run_metric_tail(run, "train/loss", FINAL_WINDOW)
        eval_tail = run_metric_tail(run, "eval/loss", 1)
        summary = {
            "status": run.status,
            "mode": run.mode,
            "method": run.method,
            "model_id": run.model_id,
            "dataset_key": run.dataset_key,
            "created_at": run.created_at.isoformat(timespec="seconds"),
            "duration_seconds": run.duration_seconds,
            "exit_code": run.exit_code,
            "steps": run.progress_step,
            FINAL_TRAIN_LOSS: smoothed_final(train_tail),
            FINAL_EVAL_LOSS: eval_tail[-1][1] if eval_tail else None,
        }
        # The newest completed evaluation by generation: fine-tuned and base, side by side.
        for model, scores in latest_scores(run).items():
            summary.update({f"evaluation.{model}.{k}": round(v, 4) for k, v in scores.items()})
        config = {k: v for k, v in (run.config or {}).items() if k != "schema"}
        summary.update({f"config.{k}": v for k, v in _flatten(config).items()})
        summaries.append(summary)
    keys: list[str] = []
    for summary in summaries:
        keys.extend(k for k in summary if k not in keys)
    rows = []
    missing = object()
    for key in keys:
        values = [summary.get(key, missing) for summary in summaries]
        rows.append(
            {
                "key": key,
                "values": [None if v is missing else v for v in values],
                "differs": any(v != values[0] for v in values[1:]),
            }
        )
    return rows
