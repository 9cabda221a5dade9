"""Generate a tiny random-weight model directory that real Tunix can train.

Usage: python -m runs.launcher.tinymodel OUT_DIR --data FILE.jsonl [--family llama3] [--seed 0]
       [--dtype float32|bfloat16] [--rope-scaling llama3]

The directory looks like a Hugging Face checkpoint: ``config.json``,
``model.safetensors`` with Hugging Face tensor names, and a byte-level BPE
``tokenizer.json`` trained on the strings of FILE.jsonl. It exists so that the
launcher and the app can be tested end to end on a CPU without downloading
anything. The weights are random: a loss that falls proves training happens,
nothing more.

Imports nothing of the app and no Django; it needs numpy, safetensors and
tokenizers (all in the ``tunix`` extra).
"""

import argparse
import json
import sys
from pathlib import Path

# Id 0 must be the pad token: the launcher pads with 0.
PAD_TOKEN = "<pad>"  # noqa: S105 - a tokenizer token, not a secret
# Every family gets every chat-template marker as a single token, so a tiny
# model of any family can read rows rendered with any family's template.
SPECIAL_TOKENS = [
    PAD_TOKEN,
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<bos>",
    "<eos>",
    "<start_of_turn>",
    "<end_of_turn>",
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
]

# family -> (HF model_type, architecture, bos, eos)
FAMILIES = {
    "llama3": ("llama", "LlamaForCausalLM", "<|begin_of_text|>", "<|eot_id|>"),
    "qwen2": ("qwen2", "Qwen2ForCausalLM", "<|endoftext|>", "<|im_end|>"),
    "qwen3": ("qwen3", "Qwen3ForCausalLM", "<|endoftext|>", "<|im_end|>"),
    "gemma2": ("gemma2", "Gemma2ForCausalLM", "<bos>", "<eos>"),
    "gemma3": ("gemma3_text", "Gemma3ForCausalLM", "<bos>", "<eos>"),
}

HIDDEN = 64
INTERMEDIATE = 128
LAYERS = 2
HEADS = 4
KV_HEADS = 2
HEAD_DIM = 16


def collect_strings(value, out: list[str]) -> None:
    """Append every string found anywhere in a decoded JSON value."""
    if isinstance(value, str):
        out.append(value)
    elif isinstance(value, dict):
        for item in value.values():
            collect_strings(item, out)
    elif isinstance(value, list):
        for item in value:
            collect_strings(item, out)


def read_texts(path: Path) -> list[str]:
    texts: list[str] = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                collect_strings(json.loads(line), texts)
    return texts


def train_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    # Byte-level BPE: every string can be encoded, so no unknown token is needed.
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


# Llama 3.2's rope_scaling, as its config.json writes it.
LLAMA3_ROPE_SCALING = {
    "factor": 32.0,
    "high_freq_factor": 4.0,
    "low_freq_factor": 1.0,
    "original_max_position_embeddings": 8192,
    "rope_type": "llama3",
}


def hf_config(family: str, vocab_size: int, bos_id: int, eos_id: int) -> dict:
    model_type, architecture, _, _ = FAMILIES[family]
    gemma = family.startswith("gemma")
    config = {
        "architectures": [architecture],
        "model_type": model_type,
        "vocab_size": vocab_size,
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "head_dim": HEAD_DIM,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-6 if gemma or family.startswith("qwen") else 1e-5,
        "rope_theta": 10000.0 if gemma else 500000.0,
        "tie_word_embeddings": gemma,
        "hidden_act": "gelu_pytorch_tanh" if gemma else "silu",
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": 0,
        "torch_dtype": "float32",
    }
    if family == "gemma2":
        config |= {
            "final_logit_softcapping": 30.0,
            "attn_logit_softcapping": 50.0,
            "sliding_window": 64,
            "query_pre_attn_scalar": HEAD_DIM,
        }
    if family == "gemma3":
        config |= {
            "sliding_window": 64,
            "rope_theta": 1000000.0,
            "rope_local_base_freq": 10000.0,
            "query_pre_attn_scalar": HEAD_DIM,
        }
    return config


def random_weights(family: str, vocab_size: int, seed: int) -> dict:
    """Random float32 tensors under Hugging Face names, shaped [out, in] like torch."""
    import numpy as np

    rng = np.random.default_rng(seed)

    def normal(*shape):
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    def norm_weight():
        # Gemma's RMSNorm multiplies by (1 + w), the others by w.
        fill = 0.0 if family.startswith("gemma") else 1.0
        return np.full((HIDDEN,), fill, dtype=np.float32)

    def head_norm_weight():
        fill = 0.0 if family.startswith("gemma") else 1.0
        return np.full((HEAD_DIM,), fill, dtype=np.float32)

    tensors = {"model.embed_tokens.weight": normal(vocab_size, HIDDEN)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        tensors |= {
            p + "self_attn.q_proj.weight": normal(HEADS * HEAD_DIM, HIDDEN),
            p + "self_attn.k_proj.weight": normal(KV_HEADS * HEAD_DIM, HIDDEN),
            p + "self_attn.v_proj.weight": normal(KV_HEADS * HEAD_DIM, HIDDEN),
            p + "self_attn.o_proj.weight": normal(HIDDEN, HEADS * HEAD_DIM),
            p + "mlp.gate_proj.weight": normal(INTERMEDIATE, HIDDEN),
            p + "mlp.up_proj.weight": normal(INTERMEDIATE, HIDDEN),
            p + "mlp.down_proj.weight": normal(HIDDEN, INTERMEDIATE),
            p + "input_layernorm.weight": norm_weight(),
            p + "post_attention_layernorm.weight": norm_weight(),
        }
        if family == "qwen2":
            tensors |= {
                p + "self_attn.q_proj.bias": np.zeros(HEADS * HEAD_DIM, np.float32),
                p + "self_attn.k_proj.bias": np.zeros(KV_HEADS * HEAD_DIM, np.float32),
                p + "self_attn.v_proj.bias": np.zeros(KV_HEADS * HEAD_DIM, np.float32),
            }
        if family in ("qwen3", "gemma3"):
            tensors |= {
                p + "self_attn.q_norm.weight": head_norm_weight(),
                p + "self_attn.k_norm.weight": head_norm_weight(),
            }
        if family in ("gemma2", "gemma3"):
            tensors |= {
                p + "pre_feedforward_layernorm.weight": norm_weight(),
                p + "post_feedforward_layernorm.weight": norm_weight(),
            }
    tensors["model.norm.weight"] = norm_weight()
    if not family.startswith("gemma"):
        tensors["lm_head.weight"] = normal(vocab_size, HIDDEN)
    return tensors


def cast_weights(weights: dict, dtype: str) -> dict:
    """bfloat16 (via ml_dtypes, installed with JAX) as most real checkpoints ship."""
    if dtype != "bfloat16":
        return weights
    import ml_dtypes

    return {k: v.astype(ml_dtypes.bfloat16) for k, v in weights.items()}


def write_model(
    out_dir: Path,
    data: Path,
    family: str,
    seed: int,
    vocab_size: int,
    dtype: str = "float32",
    rope_scaling: str | None = None,
) -> Path:
    """Write the model; `dtype` bfloat16 stores the weights as real checkpoints ship them."""
    from safetensors.numpy import save_file

    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")
    texts = read_texts(data)
    if not texts:
        raise ValueError(f"{data} holds no text to train a tokenizer on")
    out_dir.mkdir(parents=True, exist_ok=True)

    tokenizer = train_tokenizer(texts, vocab_size)
    if tokenizer.token_to_id(PAD_TOKEN) != 0:
        raise AssertionError("the pad token must have id 0")
    tokenizer.save(str(out_dir / "tokenizer.json"))
    actual_vocab = tokenizer.get_vocab_size()

    _, _, bos, eos = FAMILIES[family]
    bos_id, eos_id = tokenizer.token_to_id(bos), tokenizer.token_to_id(eos)
    (out_dir / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": bos,
                "eos_token": eos,
                "pad_token": PAD_TOKEN,
                "add_bos_token": False,
                "add_eos_token": False,
                "model_max_length": 2048,
                "additional_special_tokens": [
                    t for t in SPECIAL_TOKENS if t not in (bos, eos, PAD_TOKEN)
                ],
            },
            indent=2,
        )
    )
    (out_dir / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": bos, "eos_token": eos, "pad_token": PAD_TOKEN}, indent=2)
    )
    config = hf_config(family, actual_vocab, bos_id, eos_id)
    config["torch_dtype"] = dtype
    if rope_scaling == "llama3":
        config["rope_scaling"] = LLAMA3_ROPE_SCALING
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    save_file(
        cast_weights(random_weights(family, actual_vocab, seed), dtype),
        str(out_dir / "model.safetensors"),
        metadata={"format": "pt"},
    )
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m runs.launcher.tinymodel", description=__doc__.splitlines()[0]
    )
    parser.add_argument("out_dir", type=Path)
    parser.add_argument(
        "--data", type=Path, required=True, help="JSONL whose strings train the tokenizer"
    )
    parser.add_argument("--family", default="llama3", choices=sorted(FAMILIES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vocab-size", type=int, default=512)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--rope-scaling", choices=["llama3"], default=None)
    args = parser.parse_args(argv)
    try:
        out = write_model(
            args.out_dir,
            args.data,
            args.family,
            args.seed,
            args.vocab_size,
            dtype=args.dtype,
            rope_scaling=args.rope_scaling,
        )
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
