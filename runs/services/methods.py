"""The checks a run of a method other than SFT needs: its settings together, its dataset's
format, and the run it starts from."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from django.conf import settings

from .. import protocol, storage, training
from ..datasets import rendering
from ..errors import InvalidInput
from ..launcher import rewards
from ..models import Dataset, RunMode, RunStatus, TunixRun


def method_problems(hp: dict[str, Any]) -> dict[str, str]:
    """Settings that are each in bounds but do not make a run of the method together."""
    if hp.get("method") != "grpo":
        return {}
    problems = {}
    section = training.reward_section(hp)
    if not section["rewards"]:
        problems["reward_answer_match"] = "GRPO needs at least one reward with a weight."
    installed = rewards.installed_rewards()
    unknown = [
        name
        for name, _ in rewards.parse_reward_list(hp.get("extra_rewards") or "")
        if name not in installed
    ]
    if unknown:
        problems["extra_rewards"] = (
            f"Not installed: {', '.join(unknown)}. Installed: "
            + (", ".join(sorted(installed)) or "none")
            + "."
        )
    return problems


def check_fit(dataset: Dataset | None, method: str) -> None:
    if dataset is not None and not rendering.format_fits(method, dataset.format):
        message = (
            f"Dataset {dataset.key} holds {dataset.get_format_display().lower()}. "
            + rendering.METHOD_NEEDS[method]
        )
        raise InvalidInput(message, fields={"dataset_key": message})


def base_run_section(
    owner, base_run_id: str | None, model_id: str, method: str = "dpo"
) -> dict[str, Any] | None:
    """The config section of the run this one starts from, after checking it can be."""
    if not base_run_id:
        return None
    base = TunixRun.objects.filter(id=base_run_id).first() if _is_uuid(base_run_id) else None
    problem = None
    if method == "sft":
        # The SFT launcher trains from the plain model; it never reads a base run.
        problem = "SFT starts from the model itself; DPO, ORPO and GRPO can start from a run."
    elif base is None or not (owner.is_staff or base.owner_id == owner.id):
        problem = "No such run."
    elif base.status != RunStatus.COMPLETED or base.mode != RunMode.LOCAL:
        problem = "Only a completed Tunix run can be started from."
    elif base.model_id != model_id:
        problem = f"That run trained {base.model_id}; choose the same model to start from it."
    elif not base.lora_rank:
        problem = "That run trained all weights; only a LoRA result can be merged."
    elif storage.run_latest_checkpoint(base) is None:
        problem = "That run has no complete checkpoint."
    if problem:
        raise InvalidInput(problem, fields={"base_run_id": problem})
    output = Path(settings.ARTIFACTS_DIR) / base.output_dir
    return {
        "run_id": str(base.id),
        "output_dir": str(output),
        "checkpoint_dir": str(output / protocol.CHECKPOINTS_DIRNAME),
        "lora": base.config.get("lora") or {},
    }


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True
