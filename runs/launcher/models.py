"""The model folder and Tunix's model config, one entry per family in `FAMILY_BUILDERS`."""

import importlib
import json
from pathlib import Path

from runs import protocol
from runs.launcher.events import LaunchError, one_line

_MODEL_FILES_HINT = "config.json, *.safetensors and tokenizer.json"


def _check_model_dir(path: Path) -> None:
    if not path.exists():
        raise LaunchError(f"model path {path} does not exist")
    if not path.is_dir():
        raise LaunchError(f"model path {path} is not a directory")
    if not (path / "config.json").is_file():
        raise LaunchError(f"model path {path} has no config.json (expected {_MODEL_FILES_HINT})")
    if not any(path.glob("*.safetensors")):
        raise LaunchError(f"model path {path} has no *.safetensors weights")
    if not (path / "tokenizer.json").is_file():
        raise LaunchError(f"tokenizer not found: {path / 'tokenizer.json'} does not exist")


def _strip_source_prefix(model_id: str) -> str:
    for prefix in ("hf:", "huggingface:", "kaggle:"):
        if model_id.startswith(prefix):
            return model_id[len(prefix) :]
    return model_id


def _download_model(source: str, model_id: str, target: str | None) -> Path:
    """Fetch a hub model; the caller checks the files afterwards."""
    name = _strip_source_prefix(model_id or "")
    if not name:
        raise LaunchError(f"model.model_id is required for source {source!r}")
    try:
        if source == "huggingface":
            from huggingface_hub import snapshot_download

            patterns = ["*.json", "*.safetensors", "tokenizer*", "*.model"]
            return Path(snapshot_download(repo_id=name, local_dir=target, allow_patterns=patterns))
        import kagglehub

        return Path(
            kagglehub.model_download(name, output_dir=target)
            if target
            else kagglehub.model_download(name)
        )
    except Exception as exc:  # noqa: BLE001 - any hub failure is reported the same way
        hub = "Hugging Face" if source == "huggingface" else "Kaggle"
        offline = (
            " (the hub is unreachable or HF_HUB_OFFLINE is set)" if _looks_offline(exc) else ""
        )
        raise LaunchError(
            f"could not download {name} from {hub}{offline}: {one_line(exc)}"
        ) from exc


def _looks_offline(exc: Exception) -> bool:
    text = f"{type(exc).__name__} {exc}".lower()
    return any(
        s in text for s in ("offline", "connection", "resolve", "localentrynotfound", "timed out")
    )


def resolve_model_dir(model: dict) -> Path:
    source = model.get("source", "local")
    path = model.get("path")
    if source == "local":
        if not path:
            raise LaunchError("model.path is required for a local model")
        model_dir = Path(path)
    else:
        # A hub model already downloaded to model.path is used as is, so a
        # rerun does not need the network.
        if path and _has_model_files(Path(path)):
            model_dir = Path(path)
        else:
            model_dir = _download_model(source, model.get("model_id", ""), path)
    _check_model_dir(model_dir)
    return model_dir


def _has_model_files(path: Path) -> bool:
    return (
        (path / "config.json").is_file()
        and (path / "tokenizer.json").is_file()
        and any(path.glob("*.safetensors"))
    )


def read_hf_config(model_dir: Path, family: str) -> dict:
    try:
        hf = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except ValueError as exc:
        raise LaunchError(f"{model_dir / 'config.json'} is not valid JSON: {exc}") from None
    # Multimodal checkpoints (Gemma 3 4B+) keep the language model under text_config.
    if isinstance(hf.get("text_config"), dict):
        hf = {**hf, **hf["text_config"]}
    model_type = hf.get("model_type")
    if model_type not in protocol.MODEL_TYPES[family]:
        raise LaunchError(
            f"model at {model_dir} is a {model_type!r} model (config.json model_type), "
            f"not a {family} model"
        )
    missing = [
        k
        for k in (
            "num_hidden_layers",
            "hidden_size",
            "intermediate_size",
            "num_attention_heads",
            "vocab_size",
        )
        if k not in hf
    ]
    if missing:
        raise LaunchError(f"{model_dir / 'config.json'} lacks {', '.join(missing)}")
    return hf


def _rope_theta(hf: dict, default: float) -> float:
    # transformers 5 moved rope_theta into rope_parameters.
    params = hf.get("rope_parameters") or {}
    if isinstance(params, dict) and "full_attention" in params:
        params = params["full_attention"]
    return float(hf.get("rope_theta") or params.get("rope_theta") or default)


def _common_dims(hf: dict) -> dict:
    heads = hf["num_attention_heads"]
    return {
        "num_layers": hf["num_hidden_layers"],
        "embed_dim": hf["hidden_size"],
        "hidden_dim": hf["intermediate_size"],
        "num_heads": heads,
        "head_dim": hf.get("head_dim") or hf["hidden_size"] // heads,
        "num_kv_heads": hf.get("num_key_value_heads") or heads,
    }


def _llama3_config(model_lib, hf: dict):
    return model_lib.ModelConfig(
        **_common_dims(hf),
        vocab_size=hf["vocab_size"],
        rope_theta=int(_rope_theta(hf, 500_000)),
        norm_eps=float(hf.get("rms_norm_eps", 1e-5)),
        weight_tying=bool(hf.get("tie_word_embeddings", False)),
    )


def _qwen_config(model_lib, hf: dict):
    extra = {}
    if hf.get("num_experts"):
        extra = {
            "num_experts": hf["num_experts"],
            "num_experts_per_tok": hf.get("num_experts_per_tok"),
        }
        # MoE layers use moe_intermediate_size for each expert.
        if hf.get("moe_intermediate_size"):
            hf = {**hf, "intermediate_size": hf["moe_intermediate_size"]}
    return model_lib.ModelConfig(
        **_common_dims(hf),
        vocab_size=hf["vocab_size"],
        rope_theta=int(_rope_theta(hf, 1_000_000)),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        use_tied_embedding=bool(hf.get("tie_word_embeddings", False)),
        **extra,
    )


def _gemma2_config(model_lib, hf: dict):
    n = hf["num_hidden_layers"]
    layer_types = hf.get("layer_types")
    if isinstance(layer_types, list) and len(layer_types) == n:
        kinds = tuple(
            model_lib.AttentionType.LOCAL_SLIDING
            if t == "sliding_attention"
            else model_lib.AttentionType.GLOBAL
            for t in layer_types
        )
    else:
        pattern = (model_lib.AttentionType.LOCAL_SLIDING, model_lib.AttentionType.GLOBAL)
        kinds = tuple(pattern[i % 2] for i in range(n))
    return model_lib.ModelConfig(
        **_common_dims(hf),
        num_embed=hf["vocab_size"],
        final_logit_softcap=hf.get("final_logit_softcapping"),
        attn_logits_soft_cap=hf.get("attn_logit_softcapping"),
        sliding_window_size=hf.get("sliding_window"),
        use_post_attn_norm=True,
        use_post_ffw_norm=True,
        attention_types=kinds,
    )


def _gemma3_config(model_lib, hf: dict):
    dims = _common_dims(hf)
    norm = model_lib.QueryPreAttentionNormalisation
    scalar = hf.get("query_pre_attn_scalar") or dims["head_dim"]
    scaling = hf.get("rope_scaling") or {}
    return model_lib.ModelConfig(
        **dims,
        num_embed=hf["vocab_size"],
        sliding_window_size=hf.get("sliding_window"),
        local_base_frequency=int(hf.get("rope_local_base_freq") or 10_000),
        global_base_frequency=int(_rope_theta(hf, 1_000_000)),
        global_scale_factor=float(scaling.get("factor", 1.0)) if isinstance(scaling, dict) else 1.0,
        query_pre_attn_norm=(
            norm.BY_ONE_OVER_SQRT_HEAD_DIM
            if scalar == dims["head_dim"]
            else norm.BY_ONE_OVER_SQRT_EMBED_DIM_DIV_NUM_HEADS
        ),
    )


# family -> (Tunix model module, Tunix safetensors params module, config builder)
FAMILY_BUILDERS = {
    "llama3": ("tunix.models.llama3.model", "tunix.models.llama3.params", _llama3_config),
    "qwen2": ("tunix.models.qwen2.model", "tunix.models.qwen2.params", _qwen_config),
    "qwen3": ("tunix.models.qwen3.model", "tunix.models.qwen3.params", _qwen_config),
    "gemma2": ("tunix.models.gemma.model", "tunix.models.gemma.params_safetensors", _gemma2_config),
    "gemma3": (
        "tunix.models.gemma3.model",
        "tunix.models.gemma3.params_safetensors",
        _gemma3_config,
    ),
}


def build_model_config(family: str, hf: dict):
    """Return (Tunix ModelConfig, params module with create_model_from_safe_tensors)."""
    if family not in FAMILY_BUILDERS:
        raise LaunchError(f"unsupported model family {family!r}")
    model_module, params_module, make_config = FAMILY_BUILDERS[family]
    model_lib = importlib.import_module(model_module)
    params_lib = importlib.import_module(params_module)
    return make_config(model_lib, hf), params_lib
