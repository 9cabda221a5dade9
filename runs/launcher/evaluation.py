"""Evaluation with one definition: the per-token mean loss over the whole held-out split.

Tunix 0.1.7 averages per-batch means (a value that changes with the eval batch size) and
logs a running mean across evaluations. The trainer below replaces its evaluation: the sum
of every held-out trained token's loss divided by their count, logged as `eval/loss` once per
evaluation, so the log line and the chart show the same number. Standard library at module
level.
"""

import math
import sys

from runs import protocol

_batch_sums = None


def evaluate(model, batches: list) -> tuple[float, int]:
    """(per-token mean loss over every trained token of `batches`, how many tokens): the
    same for any batching of the same rows."""
    global _batch_sums
    if _batch_sums is None:
        from flax import nnx

        from runs.launcher.data import model_inputs
        from runs.launcher.optim import token_losses

        _batch_sums = nnx.jit(lambda m, b: token_losses(m, **model_inputs(b)))
    total, count = 0.0, 0.0
    for batch in batches:
        loss_sum, tokens = _batch_sums(model, batch)
        total += float(loss_sum)
        count += float(tokens)
    return (total / count if count else math.nan), int(count)


def make_trainer_class():
    from tunix.sft import peft_trainer

    class Trainer(peft_trainer.PeftTrainer):
        """PeftTrainer whose evaluation is the per-token mean over the whole split."""

        eval_batches: list = []
        events = None
        last_eval_step: int | None = None

        def _run_eval(self, eval_ds=None, eval_step_fn=None) -> None:
            if not self.eval_batches:
                return
            if self.events is not None:
                self.events.enter(protocol.PHASE_EVALUATING)
            loss, count = evaluate(self.model, self.eval_batches)
            if not count:
                return
            step = self.train_steps
            self.metrics_logger.log(self.metrics_prefix, "loss", loss, "eval", step)
            if math.isfinite(loss) and loss < 80:
                self.metrics_logger.log(
                    self.metrics_prefix, "perplexity", math.exp(loss), "eval", step
                )
            print(
                f"launcher: step {step} eval loss {loss:.6f} "
                f"(per-token mean over all {int(count)} held-out tokens)",
                file=sys.stderr,
                flush=True,
            )
            self.last_eval_step = step

    return Trainer
