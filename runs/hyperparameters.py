"""The one table of hyperparameters, with their bounds, defaults and help.

The model's fields, the API schemas, the run form, the service's validation and the launcher
config all derive from `HYPERPARAMETERS`; a test fails if the model drifts from it.
Standard library only (and the choices of string settings from runs.protocol).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from runs.launcher.rewards import EXTRACTIONS, MATCH_MODES, RewardError, parse_reward_list
from runs.protocol import (
    COMPUTE_DTYPES,
    GRPO_LOSSES,
    GRPO_VARIANTS,
    LONG_COMPLETIONS,
    LR_SCHEDULES,
)

# The post-training methods a run can use (Tunix's PeftTrainer, DPOTrainer with
# algorithm dpo/orpo, GRPOLearner and its variants).
METHODS = ("sft", "dpo", "orpo", "grpo")
METHOD_LABELS = {
    "sft": "Supervised fine-tuning (SFT)",
    "dpo": "Direct preference optimisation (DPO)",
    "orpo": "Odds-ratio preference optimisation (ORPO)",
    "grpo": "Reinforcement learning with rewards (GRPO)",
}
ALL_METHODS = frozenset(METHODS)


@dataclass(frozen=True)
class Bound:
    """One setting. Numbers have a minimum and maximum; text settings (kind str) have
    `choices`, or else `maximum` is their longest length. `methods`: the methods it applies to
    (the form shows it only for those; it is stored for every run)."""

    kind: type
    default: Any
    minimum: float
    maximum: float
    help: str
    optional: bool = False
    methods: frozenset = ALL_METHODS
    # For a setting of kind str: the values it may take (minimum and maximum are unused).
    choices: tuple[str, ...] = ()

    def describe(self) -> str:
        """The bounds in plain numbers: "1 and 1,024", "1e-8 and 1"; or the choices."""
        if self.choices:
            return ", ".join(self.choices)
        return f"{format_number(self.minimum)} and {format_number(self.maximum)}"

    def range(self) -> str:
        """The bounds as a range: "0 to 2,147,483,647", "1e-8 to 1"."""
        return f"{format_number(self.minimum)} to {format_number(self.maximum)}"

    def applies_to(self, method: str) -> bool:
        return method in self.methods


def format_number(value: float) -> str:
    """Plain numbers for people: thousands separators for integers, short floats, and
    exponents without padding ("1e-8", not "1e-08")."""
    if float(value).is_integer() and (abs(value) >= 1 or value == 0):
        return f"{int(value):,}"
    mantissa, e, exponent = f"{value:g}".partition("e")
    return f"{mantissa}e{int(exponent)}" if e else mantissa


_GRPO = frozenset({"grpo"})

HYPERPARAMETERS: dict[str, Bound] = {
    "learning_rate": Bound(float, 3e-4, 1e-8, 1.0, "Peak learning rate of AdamW."),
    "lr_schedule": Bound(
        str,
        "constant",
        0,
        0,
        "Learning rate after warmup: constant, or decaying to 0 at the last step.",
        choices=LR_SCHEDULES,
    ),
    "warmup_steps": Bound(int, 0, 0, 1_000_000, "Steps of linear warmup from 0."),
    "max_grad_norm": Bound(float, 1.0, 0.0, 1e6, "Clip gradients to this global norm; 0: off."),
    "num_epochs": Bound(
        int, 1, 1, 100, "Passes over the training split (when max steps is empty)."
    ),
    "batch_size": Bound(int, 4, 1, 1024, "Rows per training step."),
    "max_seq_length": Bound(
        int, 512, 16, 32768, "Tokens per row; longer prompts lose their start."
    ),
    "long_completions": Bound(
        str,
        "drop",
        0,
        0,
        "Rows whose answer alone exceeds max seq length: drop them, or keep its start.",
        choices=LONG_COMPLETIONS,
    ),
    "max_steps": Bound(
        int,
        None,
        1,
        1_000_000,
        "Train exactly this many steps, repeating the data as needed.",
        optional=True,
    ),
    "lora_rank": Bound(int, 8, 0, 1024, "LoRA rank; 0 trains all weights."),
    "lora_alpha": Bound(float, 16.0, 0.01, 4096.0, "LoRA scaling numerator."),
    "compute_dtype": Bound(
        str,
        "fp32",
        0,
        0,
        "fp32, or bf16 mixed: frozen base weights and activations in bf16, "
        "trained weights and optimizer state in fp32.",
        choices=COMPUTE_DTYPES,
    ),
    "seed": Bound(int, 42, 0, 2**31 - 1, "Seed for shuffling and initialisation."),
    "eval_every_n_steps": Bound(int, 50, 1, 1_000_000, "Evaluate on the held-out split."),
    "checkpoint_every_n_steps": Bound(int, 50, 1, 1_000_000, "Save a checkpoint."),
    "checkpoints_to_keep": Bound(
        int, 3, 1, 1000, "Newest checkpoints kept; the best and the last are always kept."
    ),
    "method": Bound(str, "sft", 0, 0, "The post-training method.", choices=METHODS),
    # Preference tuning (Tunix DPOTrainer).
    "dpo_beta": Bound(
        float,
        0.1,
        0.0,
        10.0,
        "DPO beta: how far the policy may move from the reference.",
        methods=frozenset({"dpo"}),
    ),
    "orpo_lambda": Bound(
        float,
        0.1,
        0.0,
        10.0,
        "ORPO lambda: weight of the odds-ratio term beside SFT.",
        methods=frozenset({"orpo"}),
    ),
    # Reinforcement learning (Tunix GRPOLearner and its variants).
    "grpo_variant": Bound(
        str,
        "grpo",
        0,
        0,
        "GRPO, DAPO or Dr. GRPO.",
        methods=_GRPO,
        choices=GRPO_VARIANTS,
    ),
    "grpo_loss": Bound(
        str,
        "grpo",
        0,
        0,
        "Token-level GRPO loss or sequence-level GSPO.",
        methods=_GRPO,
        choices=GRPO_LOSSES,
    ),
    "num_generations": Bound(int, 2, 2, 64, "Completions sampled per prompt.", methods=_GRPO),
    "num_iterations": Bound(int, 1, 1, 16, "Updates per batch of completions.", methods=_GRPO),
    "kl_beta": Bound(float, 0.04, 0.0, 10.0, "KL penalty against the reference.", methods=_GRPO),
    "clip_epsilon": Bound(float, 0.2, 0.0, 1.0, "Clipping of the policy ratio.", methods=_GRPO),
    "max_new_tokens": Bound(int, 64, 1, 8192, "Tokens generated per completion.", methods=_GRPO),
    "temperature": Bound(float, 0.9, 0.01, 5.0, "Sampling temperature.", methods=_GRPO),
    "top_p": Bound(float, 1.0, 0.01, 1.0, "Nucleus sampling: keep this much mass.", methods=_GRPO),
    # Rewards (runs.launcher.rewards): a weight each, 0 turns one off.
    "reward_answer_match": Bound(
        float,
        1.0,
        -100.0,
        100.0,
        "Weight of: the extracted answer equals the reference.",
        methods=_GRPO,
    ),
    "reward_answer_format": Bound(
        float, 0.0, -100.0, 100.0, "Weight of: an answer is found in the format.", methods=_GRPO
    ),
    "reward_length_penalty": Bound(
        float,
        0.0,
        -100.0,
        100.0,
        "Weight of: minus the share over the target length.",
        methods=_GRPO,
    ),
    "reward_reasoning_format": Bound(
        float,
        0.0,
        -100.0,
        100.0,
        "Weight of: reasoning first, the answer last.",
        methods=_GRPO,
    ),
    "answer_extraction": Bound(
        str,
        "marker",
        0,
        0,
        "Where the answer is: after the marker, inside the tag, or all.",
        methods=_GRPO,
        choices=EXTRACTIONS,
    ),
    "answer_marker": Bound(
        str, "Final answer:", 1, 64, "Text right before the answer.", methods=_GRPO
    ),
    "answer_tag": Bound(
        str, "answer", 1, 32, "Tag around the answer: <tag>...</tag>.", methods=_GRPO
    ),
    "answer_match_mode": Bound(
        str,
        "numeric",
        0,
        0,
        "Exact text, normalised text, or numbers within a tolerance.",
        methods=_GRPO,
        choices=MATCH_MODES,
    ),
    "answer_tolerance": Bound(
        float, 1e-6, 0.0, 1e9, "Numbers this close count as equal.", methods=_GRPO
    ),
    "length_target": Bound(
        int, 400, 1, 1_000_000, "Characters before the length penalty starts.", methods=_GRPO
    ),
    "extra_rewards": Bound(
        str,
        "",
        0,
        300,
        "Installed rewards by name with weights: name:1.0, other:0.5.",
        methods=_GRPO,
    ),
    "mesh_fsdp": Bound(
        int,
        0,
        0,
        4096,
        "Data/FSDP parallelism: devices the batch and the weights are split over; "
        "0: all of the slot's devices (divided by tensor parallelism).",
    ),
    "mesh_tp": Bound(
        int, 1, 1, 4096, "Tensor parallelism: devices each layer's weights are split over."
    ),
}


def validate_hyperparameters(values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """Return (clean values, field errors). Missing values take their defaults."""
    clean: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for name, bound in HYPERPARAMETERS.items():
        value = values.get(name)
        if value is None or value == "":
            if bound.default is None and not bound.optional:
                errors[name] = "Enter a value."
            clean[name] = bound.default
            continue
        if bound.kind is str:
            message = _check_text(name, bound, value)
            if message:
                errors[name] = message
            else:
                clean[name] = value
            continue
        try:
            if isinstance(value, bool):
                raise TypeError
            number = bound.kind(value)
            if bound.kind is int and float(value) != number:
                raise ValueError
        except (TypeError, ValueError, OverflowError):
            errors[name] = f"Must be {'an integer' if bound.kind is int else 'a number'}."
            continue
        if isinstance(number, float) and not math.isfinite(number):
            errors[name] = "Must be a finite number."
            continue
        if not bound.minimum <= number <= bound.maximum:
            errors[name] = f"Must be between {bound.describe()}."
            continue
        clean[name] = number
    return clean, errors


def _check_text(name: str, bound: Bound, value: Any) -> str | None:
    if bound.choices:
        ok = isinstance(value, str) and value in bound.choices
        return None if ok else f"Must be one of {bound.describe()}."
    if not isinstance(value, str):
        return "Must be text."
    if len(value) > bound.maximum:
        return f"At most {int(bound.maximum)} characters."
    if "\x00" in value or "\n" in value:
        return "Must be one line of text."
    if name == "extra_rewards":
        try:
            parse_reward_list(value)
        except RewardError as exc:
            return str(exc)[:1].upper() + str(exc)[1:] + "."
    return None


def applicable(method: str) -> list[str]:
    """The settings the form shows for a method, in table order."""
    return [name for name, bound in HYPERPARAMETERS.items() if bound.applies_to(method)]
