"""Export a trained run as a Hugging Face model folder: python -m runs.launcher.export CONFIG.json

LoRA is merged into the base weights; the folder holds config.json, model.safetensors (Hugging
Face tensor names and the base checkpoint's dtype), the tokenizer files, generation_config.json
and a model card (README.md). The folder is written under a temporary name and renamed when
complete, so a half-written export is never mistaken for a model.

Config ("job" section written by the web side): {"schema", "source": {...}, "export":
{"dir": target folder, "name", "card": {...}}}; see runs/services/jobs.py.
"""

import json
import shutil
import sys
from pathlib import Path

from runs import protocol
from runs.launcher.events import Events, LaunchError

# Files of the base model folder carried over besides the weights.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
)


def generation_config(hf: dict, stop_ids: list[int]) -> dict:
    return {
        "bos_token_id": hf.get("bos_token_id"),
        "eos_token_id": stop_ids or hf.get("eos_token_id"),
        "pad_token_id": hf.get("pad_token_id", 0),
        "do_sample": False,
        "max_new_tokens": 256,
    }


def model_card(name: str, card: dict, versions: dict) -> str:
    """README.md: what the model is and exactly how it was made."""
    lines = [
        "---",
        f"base_model: {card.get('base_model', '')}",
        "library_name: transformers",
        "tags: [tunix, tunix-rt, fine-tuned]",
        "---",
        "",
        f"# {name}",
        "",
        f"Fine-tuned from `{card.get('base_model', '')}` with Google Tunix by tunix-rt "
        f"(run `{card.get('run_id', '')}`). {card.get('method', '')}",
        "",
        "## Training data",
        "",
        f"- dataset: `{card.get('dataset_key', '')}`",
        f"- sha256: `{card.get('dataset_sha256', '')}`",
        "",
        "## Hyperparameters",
        "",
        *(f"- {k}: {v}" for k, v in sorted((card.get("hyperparameters") or {}).items())),
        "",
        "## Final metrics",
        "",
        *(f"- {k}: {v}" for k, v in sorted((card.get("metrics") or {}).items())),
        "",
        "## Evaluation",
        "",
        *(
            [f"- {k}: {v}" for k, v in sorted((card.get("evaluation") or {}).items())]
            or ["- none recorded"]
        ),
        "",
        "## Software",
        "",
        *(f"- {k}: {v}" for k, v in sorted(versions.items())),
        "",
    ]
    return "\n".join(lines)


def versions() -> dict:
    import importlib.metadata

    import jax

    return {
        "tunix": importlib.metadata.version("google-tunix"),
        "jax": jax.__version__,
        "flax": importlib.metadata.version("flax"),
    }


def write_export(config: dict, events: Events) -> dict:
    """Load, merge, convert, write. Returns the summary."""
    from safetensors.numpy import save_file

    from runs.launcher.train import build_mesh
    from runs.launcher.weights import TextTokenizer, hf_tensors, load_trained, merge_lora

    source, export = config["source"], config["export"]
    base_dir, family = Path(source["model_dir"]), source["family"]
    target = Path(export["dir"])
    if target.exists():
        raise LaunchError(f"export folder {target} already exists")
    partial = target.with_name(f".{target.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    events.enter(protocol.PHASE_LOADING)
    mesh = build_mesh()
    with mesh:
        model, model_config, hf, step = load_trained(source, mesh)
        events.enter(protocol.PHASE_SAVING)
        lora = source.get("lora") or {}
        merged = merge_lora(model, lora["alpha"] / lora["rank"]) if lora.get("enabled") else 0
        tensors = hf_tensors(model, family, model_config, base_dir)
    partial.mkdir(parents=True)
    save_file(tensors, str(partial / "model.safetensors"), metadata={"format": "pt"})
    for name in TOKENIZER_FILES:
        if (base_dir / name).is_file():
            shutil.copy2(base_dir / name, partial / name)
    raw_config = json.loads((base_dir / "config.json").read_text(encoding="utf-8"))
    (partial / "config.json").write_text(json.dumps(raw_config, indent=2))
    stop_ids = TextTokenizer(base_dir, family).stop_ids
    (partial / "generation_config.json").write_text(
        json.dumps(generation_config(hf, stop_ids), indent=2)
    )
    (partial / "README.md").write_text(
        model_card(export.get("name", target.name), export.get("card") or {}, versions())
    )
    partial.rename(target)
    size = sum(p.stat().st_size for p in target.iterdir())
    return {"export_dir": str(target), "step": step, "merged_lora": merged, "bytes": size}


def main(argv: list[str]) -> int:
    from runs.launcher.job import run_job

    return run_job(argv, write_export, "python -m runs.launcher.export CONFIG.json")


if __name__ == "__main__":
    import os

    code = main(sys.argv[1:])
    sys.stderr.flush()
    os._exit(code)
