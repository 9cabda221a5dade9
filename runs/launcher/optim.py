"""Precision, the optimizer and the loss: what keeps bf16 checkpoints training correctly.

- Trained weights are fp32 (LoRA A/B, or every weight under full fine-tuning); with LoRA and
  compute_dtype "bf16" the frozen base stays bf16 and activations are bf16, while the LoRA
  delta is computed from fp32 weights and cast to the activations' dtype.
- Optimizer hyperparameters are fp32 (`hyperparam_dtype`): in bf16, AdamW's b2 = 0.999
  rounds to 1.0 and its update becomes 0/0.
- The loss is a per-token mean computed in fp32, whatever the logits' dtype.
Standard library at module level.
"""

import math


def weight_dtypes(compute_dtype: str, lora: bool) -> dict:
    """The dtypes a run uses, for its environment record."""
    base = "bfloat16" if compute_dtype == "bf16" and lora else "float32"
    return {"compute_dtype": compute_dtype, "base_weights": base, "trained_weights": "float32"}


def lora_provider(module_path: str, rank: int, alpha: float):
    import jax.numpy as jnp
    import qwix

    class MixedPrecisionLora(qwix.LoraProvider):
        """LoRA whose (fp32) delta is added in the dtype the base op computes in."""

        def dot_general(self, lhs, rhs, *args, **kwargs):
            out = super().dot_general(lhs, rhs, *args, **kwargs)
            preferred = kwargs.get("preferred_element_type") or (args[2] if len(args) > 2 else None)
            return out.astype(preferred or _result_type(jnp, lhs, rhs))

        def einsum(self, einsum_str, *operands, **kwargs):
            out = super().einsum(einsum_str, *operands, **kwargs)
            preferred = kwargs.get("preferred_element_type")
            return out.astype(preferred or _result_type(jnp, *operands))

    return MixedPrecisionLora(module_path=module_path, rank=rank, alpha=alpha)


def _result_type(jnp, *operands):
    try:
        return jnp.result_type(*operands)
    except TypeError:  # a quantized operand: keep what LoRA gave
        return operands[0].dtype


def lora_to_fp32(model) -> None:
    """qwix creates LoRA weights in the dtype of the layer they wrap: make them fp32."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    state = nnx.state(model, nnx.LoRAParam)
    nnx.update(model, jax.tree.map(lambda x: x.astype(jnp.float32), state))


def learning_rate_schedule(t: dict, total_steps: int):
    """Linear warmup from lr/warmup to lr over warmup_steps (no step at rate 0), then
    constant, or linear / cosine decay towards 0 at total_steps."""
    import jax.numpy as jnp

    peak, kind = t["learning_rate"], t["lr_schedule"]
    warmup = min(t["warmup_steps"], total_steps)
    decay = max(1, total_steps - warmup)

    def schedule(count):
        step = jnp.asarray(count, jnp.float32)
        warm = jnp.minimum(1.0, (step + 1) / warmup) if warmup else 1.0
        progress = jnp.clip((step - warmup) / decay, 0.0, 1.0)
        if kind == "linear":
            shape = 1.0 - progress
        elif kind == "cosine":
            shape = 0.5 * (1.0 + jnp.cos(math.pi * progress))
        else:
            shape = 1.0
        return peak * warm * shape

    return schedule


def build_optimizer(t: dict, total_steps: int):
    import jax.numpy as jnp
    import optax

    clip = t["max_grad_norm"]

    def adamw(learning_rate, weight_decay, b1, b2, eps, max_grad_norm):
        parts = [optax.clip_by_global_norm(max_grad_norm)] if clip else []
        parts.append(
            optax.adamw(
                learning_rate,
                b1=b1,
                b2=b2,
                eps=eps,
                weight_decay=weight_decay,
                mu_dtype=jnp.float32,
            )
        )
        return optax.chain(*parts)

    return optax.inject_hyperparams(adamw, hyperparam_dtype=jnp.float32)(
        learning_rate=learning_rate_schedule(t, total_steps),
        weight_decay=t["weight_decay"],
        b1=0.9,
        b2=0.999,
        eps=1e-8,
        max_grad_norm=clip or 1.0,
    )


def token_losses(model, input_tokens, input_mask, positions, attention_mask):
    """(sum of the next-token losses over trained tokens, their count), in fp32."""
    import jax
    import jax.numpy as jnp

    logits, _ = model(input_tokens, positions, None, attention_mask)
    logits = logits[:, :-1, :].astype(jnp.float32)
    targets = input_tokens[:, 1:]
    mask = input_mask[:, 1:].astype(jnp.float32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    return jnp.sum(nll * mask), jnp.sum(mask)


def loss_fn(model, input_tokens, input_mask, positions, attention_mask, images=None):
    """Tunix's default loss (per-token mean over a batch's trained tokens), in fp32."""
    total, count = token_losses(model, input_tokens, input_mask, positions, attention_mask)
    return total / (count + 1e-8)
