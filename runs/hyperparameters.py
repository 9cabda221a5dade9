"""The one table of hyperparameters, with their bounds, defaults and help.

The model's fields, the API schemas, the run form, the service's validation and the launcher
config all derive from `HYPERPARAMETERS`; a test fails if the model drifts from it.
Standard library only (and the choices of string settings from runs.protocol).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from runs.protocol import COMPUTE_DTYPES, LONG_COMPLETIONS, LR_SCHEDULES


@dataclass(frozen=True)
class Bound:
    kind: type
    default: Any
    minimum: float
    maximum: float
    help: str
    optional: bool = False
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


def format_number(value: float) -> str:
    """Plain numbers for people: thousands separators for integers, short floats, and
    exponents without padding ("1e-8", not "1e-08")."""
    if float(value).is_integer() and (abs(value) >= 1 or value == 0):
        return f"{int(value):,}"
    mantissa, e, exponent = f"{value:g}".partition("e")
    return f"{mantissa}e{int(exponent)}" if e else mantissa


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
        if bound.choices:
            if value not in bound.choices:
                errors[name] = f"Must be one of {bound.describe()}."
                continue
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
