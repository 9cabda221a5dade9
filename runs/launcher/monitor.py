"""Tunix's metric stream and training-loop hooks, turned into protocol events."""

import math
import os
import sys
from pathlib import Path

from runs import protocol
from runs.launcher.checkpoints import complete_steps, prune
from runs.launcher.events import Events, NonFiniteLoss

# Tunix logs the (unchanged) learning rate again at every evaluation.
_IGNORED_METRICS = {"eval/learning_rate"}


class Monitor:
    """Turns Tunix's metric stream into events and keeps the run's summary."""

    def __init__(
        self,
        events: Events,
        total_steps: int,
        checkpoint_dir: Path,
        output_dir: Path,
        known_steps=(),
        keep: int | None = None,
    ):
        self.events = events
        self.total_steps = total_steps
        self.checkpoint_dir = checkpoint_dir
        self.output_dir = output_dir
        self.reported_checkpoints = set(known_steps)
        self.keep = keep
        self.eval_losses: dict[int, float] = {}
        self.first_loss = None
        self.final_loss = None
        self.eval_loss = None
        self.last_eval_step = None
        self.last_train_step = None

    def on_scalar(self, event: str, value, **kwargs) -> None:
        # JAX reports its own compile timings through the same channel.
        if event.startswith("/jax/"):
            return
        name = event.lstrip("/")
        if name in _IGNORED_METRICS:
            return
        step = kwargs.get("step")
        try:
            number = float(value)
        except (TypeError, ValueError):
            return
        if not math.isfinite(number):
            if name.endswith("loss"):
                kind = "training" if name.startswith("train") else "eval"
                value_text = "NaN" if math.isnan(number) else "infinite"
                raise NonFiniteLoss(f"{kind} loss became {value_text} at step {step}")
            # e.g. perplexity overflows float32 long before the loss does
            print(
                f"launcher: skipped non-finite metric {name}={number} at step {step}",
                file=sys.stderr,
            )
            return
        self.events.emit(protocol.EVENT_METRIC, name=name, step=step, value=number)
        if name == "train/loss":
            if self.first_loss is None:
                self.first_loss = number
            self.final_loss = number
            self.last_train_step = step
            self.events.emit(protocol.EVENT_PROGRESS, step=step, total_steps=self.total_steps)
            self.report_checkpoints()
        elif name == "eval/loss":
            self.eval_loss = number
            self.last_eval_step = step
            self.eval_losses[step] = number

    def report_checkpoints(self) -> None:
        for step in complete_steps(self.checkpoint_dir):
            if step not in self.reported_checkpoints:
                self.reported_checkpoints.add(step)
                path = os.path.relpath(self.checkpoint_dir / str(step), self.output_dir)
                self.events.emit(protocol.EVENT_CHECKPOINT, step=step, path=path, complete=True)
        for step in prune(self.checkpoint_dir, self.keep, self.eval_losses):
            print(f"launcher: removed checkpoint {step} (keeping {self.keep})", file=sys.stderr)


def make_hooks(events: Events, final_eval):
    from tunix.sft import hooks

    class PhaseHooks(hooks.TrainingHooks):
        """Phase events from inside Tunix's loop; the first step also compiles."""

        def __init__(self):
            self.steps_done = 0
            self.ending = False

        def on_train_start(self, trainer):
            pass

        def on_train_step_start(self, trainer):
            if self.steps_done:
                events.enter(protocol.PHASE_TRAINING)

        def on_train_step_end(self, trainer, train_step, train_loss):
            # Tunix reports each step one step late, the last one while saving.
            self.steps_done += 1
            if not self.ending:
                events.enter(protocol.PHASE_TRAINING)

        def on_eval_step_start(self, trainer):
            if self.steps_done:
                events.enter(protocol.PHASE_EVALUATING)

        def on_eval_step_end(self, trainer, eval_loss):
            pass

        def on_train_end(self, trainer):
            self.ending = True
            final_eval(trainer)
            events.enter(protocol.PHASE_SAVING)

    return PhaseHooks()
