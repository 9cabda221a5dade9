"""Rotary position embeddings as the checkpoint's config.json asks for them.

Tunix 0.1.7's Llama 3 and Qwen 3 attention call their `apply_rope` without the config's
rope_theta (so 1,000,000 is used, not Llama 3's 500,000) and know no rope scaling (Llama
3.1/3.2/3.3 scale the low frequencies, `rope_scaling.rope_type == "llama3"`). `install`
replaces the module's `apply_rope` with one that uses the inverse frequencies computed here.
Standard library at module level; JAX only inside `install`.
"""

import math

from runs import protocol

# The theta a family's checkpoints mean when config.json names none.
DEFAULT_ROPE_THETA = {"llama3": 500_000, "qwen3": 1_000_000}


def inverse_frequencies(head_dim: int, theta: float, scaling: dict | None = None) -> list[float]:
    """RoPE inverse frequencies theta**(-2i/d), with Llama 3's frequency scaling when asked.

    The llama3 rule (Meta's reference `apply_scaling`, transformers' `_compute_llama3_
    parameters`): wavelengths shorter than original_max_position_embeddings / high_freq_factor
    are kept, longer than .../ low_freq_factor divided by `factor`, and in between smoothly
    interpolated.
    """
    freqs = [1.0 / theta ** (2 * i / head_dim) for i in range(head_dim // 2)]
    if not scaling:
        return freqs
    kind = scaling.get("rope_type") or scaling.get("type")
    if kind != "llama3":
        raise ValueError(f"rope scaling {kind!r} is not implemented")
    factor = float(scaling["factor"])
    low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    original = float(scaling["original_max_position_embeddings"])
    low_wavelen, high_wavelen = original / low, original / high
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            out.append(freq)
        elif wavelen > low_wavelen:
            out.append(freq / factor)
        else:
            smooth = (original / wavelen - low) / (high - low)
            out.append((1 - smooth) * freq / factor + smooth * freq)
    return out


# family -> Tunix module whose apply_rope ignores the config (see the module docstring)
PATCHED_MODULES = {"llama3": "tunix.models.llama3.model", "qwen3": "tunix.models.qwen3.model"}


def install(family: str, hf: dict, default_theta: float) -> dict | None:
    """Make the family's attention use the config's RoPE; returns what was installed."""
    if family not in PATCHED_MODULES:
        return None
    import importlib

    import jax.numpy as jnp
    import numpy as np

    module = importlib.import_module(PATCHED_MODULES[family])
    head_dim = hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"]
    params = hf.get("rope_parameters") if isinstance(hf.get("rope_parameters"), dict) else {}
    theta = float(hf.get("rope_theta") or params.get("rope_theta") or default_theta)
    scaling = protocol.rope_scaling_of(hf)
    table = np.asarray(inverse_frequencies(head_dim, theta, scaling), dtype=np.float32)

    def apply_rope(inputs, positions, head_dim, rope_theta=None):
        if head_dim // 2 != table.shape[0]:
            raise ValueError(f"RoPE table is for head_dim {2 * table.shape[0]}, not {head_dim}")
        angles = positions[..., None].astype(jnp.float32) * jnp.asarray(table)[None, None, :]
        angles = angles[..., None, :]
        sin, cos = jnp.sin(angles), jnp.cos(angles)
        first, second = jnp.split(inputs, 2, axis=-1)
        out = jnp.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)
        return out.astype(inputs.dtype)

    module.apply_rope = apply_rope
    return {"rope_theta": theta, "rope_scaling": scaling["rope_type"] if scaling else None}
