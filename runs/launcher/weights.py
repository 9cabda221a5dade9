"""Trained weights: load a run's model (base + restored checkpoint), merge LoRA into the base
weights, and turn Tunix's parameters back into Hugging Face tensors.

Only imported inside the training interpreter (JAX, Tunix, qwix). The reverse name mapping is
the family's own safetensors loader mapping (`_get_key_and_transform_mapping` in
tunix/models/*/params*.py) read backwards: every Hugging Face key of the base checkpoint is
mapped forward to its Tunix key, and the Tunix array is reshaped and transposed back.
"""

import importlib
import json
import re
from pathlib import Path

from runs import protocol
from runs.launcher.events import LaunchError
from runs.launcher.models import FAMILY_BUILDERS, build_model_config, read_hf_config

# Gemma's loader reads q/k/v into temporary keys and stacks them (see its preprocess_fn):
# tmp.layers.N.attn.{q,k,v} -> layers.N.attn.q_einsum.w / kv_einsum.w[0|1] / qkv_einsum.w[i].
_GEMMA_TMP = re.compile(r"tmp\.layers\.([0-9]+)\.attn\.([qkv])$")


class TextTokenizer:
    """The run's tokenizer.json for Tunix's sampler, encoding as training did: no special
    tokens added (rows carry the family's chat template markers themselves)."""

    def __init__(self, model_dir: Path, family: str):
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        ends = [protocol.END_OF_TURN[family], _configured_eos(model_dir)]
        self.stop_ids = [
            i for i in (self.tokenizer.token_to_id(t) for t in ends if t) if i is not None
        ]

    def encode(self, text: str, **_) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids, **_) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)

    def bos_id(self):
        return None  # the rendered prompt starts with the template's own marker

    def eos_id(self) -> int:
        return self.stop_ids[0] if self.stop_ids else 0

    def pad_id(self) -> int:
        return 0


def _configured_eos(model_dir: Path) -> str:
    try:
        config = json.loads((model_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    eos = config.get("eos_token")
    if isinstance(eos, dict):
        eos = eos.get("content")
    return eos if isinstance(eos, str) else ""


def load_base(model_dir: Path, family: str, mesh):
    """(Tunix model, its ModelConfig, the HF config) from a Hugging Face folder, with the
    checkpoint's RoPE installed as training installs it (runs.launcher.rope)."""
    from runs.launcher.rope import DEFAULT_ROPE_THETA, install

    hf = read_hf_config(model_dir, family)
    install(family, hf, default_theta=DEFAULT_ROPE_THETA.get(family, 10_000))
    model_config, params_lib = build_model_config(family, hf)
    model = params_lib.create_model_from_safe_tensors(str(model_dir), model_config, mesh)
    return model, model_config, hf


def apply_lora(model, lora: dict, seed: int = 0):
    """LoRA as training applies it: fp32 weights, the delta added in the layer's dtype."""
    import qwix
    from flax import nnx

    from runs.launcher.optim import lora_provider, lora_to_fp32

    provider = lora_provider(lora["module_path"], lora["rank"], lora["alpha"])
    model = qwix.apply_lora_to_model(
        model, provider, rngs=nnx.Rngs(seed), **model.get_model_input()
    )
    lora_to_fp32(model)
    return model


def restore(model, checkpoint_dir: Path, step: int | None, lora_only: bool) -> int:
    """Load a run's checkpoint (the newest complete step unless `step`) into `model`."""
    from tunix.sft.checkpoint_manager import CheckpointManager

    if not checkpoint_dir.is_dir():
        raise LaunchError(f"checkpoint dir {checkpoint_dir} does not exist")
    restored, _ = CheckpointManager(str(checkpoint_dir)).maybe_restore(
        model, step=step, restore_only_lora_params=lora_only
    )
    if not restored:
        raise LaunchError(f"checkpoint dir {checkpoint_dir} holds no complete checkpoint")
    return restored


def load_trained(source: dict, mesh):
    """The fine-tuned model described by a job config's "source" section: the base model,
    LoRA applied when the run used it, the run's checkpoint restored."""
    model_dir, family = Path(source["model_dir"]), source["family"]
    model, model_config, hf = load_base(model_dir, family, mesh)
    lora = source.get("lora") or {}
    if lora.get("enabled"):
        lora = {
            **lora,
            "module_path": lora.get("module_path") or protocol.LORA_MODULE_PATHS[family],
        }
        model = apply_lora(model, lora, source.get("seed", 0))
    step = restore(
        model, Path(source["checkpoint_dir"]), source.get("step"), bool(lora.get("enabled"))
    )
    return model, model_config, hf, step


def merge_lora(model, scale: float) -> int:
    """Fold every LoRA pair into the weight it adapts (W += A·B·scale in Tunix's layout,
    scale = alpha / rank) and zero the pair, so the model computes the same function
    with LoRA still attached. Returns the number of weights merged."""
    import jax.numpy as jnp
    from flax import nnx

    merged = 0
    for _, module in list(nnx.iter_graph(model)):
        if not isinstance(module, nnx.Module):
            continue
        for name in [k for k in vars(module) if k.endswith("_lora_a")]:
            weight_name = name[: -len("_lora_a")]
            weight, a = getattr(module, weight_name), getattr(module, name)
            b = getattr(module, weight_name + "_lora_b")
            delta = _lora_delta(module, weight_name, a[...], b[...], weight[...].shape)
            weight[...] = weight[...] + (delta * scale).astype(weight[...].dtype)
            a[...] = jnp.zeros_like(a[...])
            merged += 1
    return merged


def _lora_delta(module, weight_name: str, a, b, shape):
    import jax.numpy as jnp

    lora_eqn = getattr(module, weight_name + "_lora_einsum_str", None)
    if lora_eqn:
        # e.g. "BTD,Dr,rNH->BTNH" with the module's own "BTD,DNH->BTNH": delta is "Dr,rNH->DNH".
        _, a_sub, b_sub = lora_eqn.split("->")[0].split(",")
        rhs_sub = module.einsum_str.split("->")[0].split(",")[1]
        return jnp.einsum(f"{a_sub},{b_sub}->{rhs_sub}", a, b)
    # dot_general (nnx.Linear): A is (contracting, rank), B is (rank, remaining).
    return (a.reshape(-1, a.shape[-1]) @ b.reshape(b.shape[0], -1)).reshape(shape)


def tunix_arrays(model) -> dict:
    """Tunix key ("layers.0.attn.q_proj.w") -> numpy array, LoRA pairs left out."""
    import jax
    import numpy as np
    from flax import nnx

    arrays = {}
    for path, value in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        key = ".".join(str(p) for p in path)
        if key.endswith(("_lora_a", "_lora_b")):
            continue
        arrays[key] = np.asarray(jax.device_get(value[...]))
    return arrays


def _key_mapping(family: str, model_config):
    params_lib = importlib.import_module(FAMILY_BUILDERS[family][1])
    return params_lib._get_key_and_transform_mapping(model_config)  # noqa: SLF001


def _tunix_value(arrays: dict, key: str, model_config):
    """The array the loader would have produced for a (possibly temporary) Tunix key."""
    match = _GEMMA_TMP.match(key)
    if not match:
        return arrays.get(key)
    layer, slot = match.groups()
    fused = arrays.get(f"layers.{layer}.attn.qkv_einsum.w")
    if fused is not None:  # (3, N, D, H)
        value = fused["qkv".index(slot)]
    elif slot == "q":
        value = arrays[f"layers.{layer}.attn.q_einsum.w"]  # (N, D, H)
    else:
        value = arrays[f"layers.{layer}.attn.kv_einsum.w"]["kv".index(slot)]  # (K, D, H)
    return value.transpose(1, 0, 2)  # back to (D, N, H), the reshape target


def hf_tensors(model, family: str, model_config, base_dir: Path) -> dict:
    """The model's weights under the base checkpoint's Hugging Face names, shapes and dtypes.

    Keys the Tunix model does not hold (a vision tower, an unused lm_head) are copied from
    the base checkpoint unchanged."""
    import numpy as np
    from safetensors import safe_open
    from tunix.utils.torch_utils import torch_key_to_jax_key

    mapping = _key_mapping(family, model_config)
    arrays = tunix_arrays(model)
    out = {}
    for path in sorted(base_dir.glob("*.safetensors")):
        with safe_open(str(path), framework="numpy") as handle:
            for hf_key in handle.keys():  # noqa: SIM118 - safe_open is not a dict
                base = handle.get_tensor(hf_key)
                try:
                    tunix_key, transform = torch_key_to_jax_key(mapping, hf_key)
                except ValueError:
                    out[hf_key] = base
                    continue
                value = _tunix_value(arrays, tunix_key, model_config)
                if value is None:
                    out[hf_key] = base
                    continue
                out[hf_key] = _invert(value, transform, base.shape).astype(base.dtype)
    missing = [k for k, v in out.items() if v is None]
    if missing:
        raise LaunchError(f"no weights for {', '.join(missing[:5])}")
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def _invert(value, transform, hf_shape):
    """Undo the loader's `v.transpose(permute).reshape(reshape)`."""
    import numpy as np

    if not transform:
        return np.asarray(value).reshape(hf_shape)
    permute, _ = transform
    if not permute:
        return np.asarray(value).reshape(hf_shape)
    permuted_shape = tuple(hf_shape[i] for i in permute)
    return np.asarray(value).reshape(permuted_shape).transpose(np.argsort(permute))


def logits(model, token_rows: list[list[int]]):
    """Next-token logits for right-padded rows (float32 numpy, [rows, length, vocab])."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    length = max(len(r) for r in token_rows)
    tokens = np.zeros((len(token_rows), length), dtype=np.int32)
    for i, row in enumerate(token_rows):
        tokens[i, : len(row)] = row
    positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), tokens.shape)
    causal = jnp.tril(jnp.ones((length, length), dtype=jnp.bool_))
    mask = jnp.broadcast_to(causal, (len(token_rows), length, length))
    out, _ = model(jnp.asarray(tokens), positions, None, mask)
    return np.asarray(jax.device_get(out), dtype=np.float32)


def answer_logps(model, pairs: list[tuple[list[int], list[int]]], batch_size: int = 8):
    """The summed log-probability of each answer given its prompt, for (prompt ids, answer
    ids) pairs: one forward pass per batch, right-padded to one shape (one compilation); an
    answer's first token is scored only when a prompt token comes before it."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    length = max(8, -(-max(len(p) + len(a) for p, a in pairs) // 8) * 8)
    batch_size = max(1, min(batch_size, len(pairs)))

    @nnx.jit
    def sums(model, tokens, scored):
        positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), tokens.shape)
        causal = jnp.tril(jnp.ones((length, length), dtype=jnp.bool_))
        mask = jnp.broadcast_to(causal, (tokens.shape[0], length, length))
        out, _ = model(tokens, positions, None, mask)
        logp = jax.nn.log_softmax(out[:, :-1].astype(jnp.float32), axis=-1)
        picked = jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
        return jnp.sum(picked * scored[:, 1:], axis=-1)

    results: list[float] = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        tokens = np.zeros((batch_size, length), dtype=np.int32)
        scored = np.zeros((batch_size, length), dtype=np.float32)
        for i, (prompt, answer) in enumerate(chunk):
            tokens[i, : len(prompt) + len(answer)] = list(prompt) + list(answer)
            scored[i, max(1, len(prompt)) : len(prompt) + len(answer)] = 1.0
        values = np.asarray(jax.device_get(sums(model, jnp.asarray(tokens), jnp.asarray(scored))))
        results += [float(v) for v in values[: len(chunk)]]
    return results
