"""The contract between the web side and the launcher: the one place it is written.

Standard library only. The launcher (`runs.launcher`, inside the training interpreter) and
the web side (config builder, supervisor, dataset rendering) both import this module; nothing
here may import Django, JAX or anything else of the app.

The launcher talks to its supervisor through three channels:
- the config file (`CONFIG_FILENAME`, schema `SCHEMA_VERSION`) it reads;
- stdout: one flushed JSON object per line, always with an "event" key (`EVENTS`);
- its exit code (`EXIT_*`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

SCHEMA_VERSION = 1
LAUNCHER_MODULE = "runs.launcher"
CONFIG_FILENAME = "tunix_config.json"
TRAIN_DATA_FILENAME = "train.jsonl"
CHECKPOINTS_DIRNAME = "checkpoints"
TENSORBOARD_DIRNAME = "tensorboard"
# Orbax writes this file last: a checkpoint step without it is incomplete.
CHECKPOINT_COMPLETE_MARKER = "commit_success.txt"
EVAL_FRACTION = 0.1

# --- exit codes -------------------------------------------------------------------------
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2
EXIT_NON_FINITE_LOSS = 3
EXIT_OUT_OF_MEMORY = 4

# --- events (the "event" key of a stdout line) ------------------------------------------
EVENT_PHASE = "phase"
EVENT_ENVIRONMENT = "environment"
EVENT_PROGRESS = "progress"
EVENT_METRIC = "metric"
EVENT_CHECKPOINT = "checkpoint"
EVENT_RESUMED = "resumed"
EVENT_SUMMARY = "summary"
EVENT_ERROR = "error"
# A generated completion with its rewards (GRPO evaluations), shown escaped on the run page.
EVENT_SAMPLE = "sample"
EVENTS = (
    EVENT_PHASE,
    EVENT_ENVIRONMENT,
    EVENT_PROGRESS,
    EVENT_METRIC,
    EVENT_CHECKPOINT,
    EVENT_RESUMED,
    EVENT_SUMMARY,
    EVENT_ERROR,
    EVENT_SAMPLE,
)
# Events kept in the run's environment as its history (bounded by the supervisor).
HISTORY_EVENTS = (EVENT_CHECKPOINT, EVENT_SUMMARY, EVENT_RESUMED, EVENT_SAMPLE)

# --- phases -----------------------------------------------------------------------------
PHASE_QUEUED = "queued"
PHASE_STARTING = "starting"
PHASE_LOADING = "loading"
PHASE_COMPILING = "compiling"
PHASE_TRAINING = "training"
PHASE_EVALUATING = "evaluating"
PHASE_SAVING = "saving"
PHASE_DONE = "done"
PHASES = (
    PHASE_QUEUED,
    PHASE_STARTING,
    PHASE_LOADING,
    PHASE_COMPILING,
    PHASE_TRAINING,
    PHASE_EVALUATING,
    PHASE_SAVING,
    PHASE_DONE,
)

# --- model families ---------------------------------------------------------------------
# Families whose Hugging Face safetensors Tunix 0.1.7 can load into its own model classes.
# Plain "gemma" (Gemma 1) is absent on purpose: Tunix's Gemma safetensors loader maps the
# Gemma 2 layer-norm layout, so Gemma 1 checkpoints do not load.
FAMILIES = ("llama3", "gemma2", "gemma3", "qwen2", "qwen3")
FAMILY_LABELS = {
    "llama3": "Llama 3 / 3.1 / 3.2",
    "gemma2": "Gemma 2",
    "gemma3": "Gemma 3",
    "qwen2": "Qwen 2.5",
    "qwen3": "Qwen 3",
}
# config.json "model_type" values accepted for each family.
MODEL_TYPES = {
    "llama3": ("llama",),
    "gemma2": ("gemma2",),
    "gemma3": ("gemma3", "gemma3_text"),
    "qwen2": ("qwen2",),
    "qwen3": ("qwen3", "qwen3_moe"),
}
MODEL_TYPE_FAMILY = {t: family for family, types in MODEL_TYPES.items() for t in types}

# Default LoRA targets: regexes (qwix full-matches them) over Tunix's module paths, not
# Hugging Face's. Llama and Qwen keep q_proj/k_proj/v_proj/o_proj; Gemma has q_einsum,
# kv_einsum (".*kv_einsum" also covers the fused qkv_einsum) and attn_vec_einsum for o_proj.
_PROJ_LORA = ".*q_proj|.*k_proj|.*v_proj|.*o_proj|.*gate_proj|.*down_proj|.*up_proj"
_GEMMA_LORA = ".*q_einsum|.*kv_einsum|.*attn_vec_einsum|.*gate_proj|.*down_proj|.*up_proj"
LORA_MODULE_PATHS = {
    "llama3": _PROJ_LORA,
    "gemma2": _GEMMA_LORA,
    "gemma3": _GEMMA_LORA,
    "qwen2": _PROJ_LORA,
    "qwen3": _PROJ_LORA,
}

MODEL_SOURCES = ("local", "huggingface", "kaggle")


# --- chat templates ---------------------------------------------------------------------


@dataclass(frozen=True)
class ChatTemplate:
    """Turn markers of a family. The prompt part is masked from the loss."""

    begin: str
    user: str
    assistant: str
    system: str
    end_turn: str

    def render(self, turns: list[tuple[str, str]], completion: str) -> tuple[str, str]:
        prompt = self.begin + "".join(
            {"system": self.system, "user": self.user, "assistant": self.assistant}[role]
            + text
            + self.end_turn
            for role, text in turns
        )
        return prompt + self.assistant, completion + self.end_turn


_LLAMA3 = ChatTemplate(
    begin="<|begin_of_text|>",
    system="<|start_header_id|>system<|end_header_id|>\n\n",
    user="<|start_header_id|>user<|end_header_id|>\n\n",
    assistant="<|start_header_id|>assistant<|end_header_id|>\n\n",
    end_turn="<|eot_id|>",
)
_GEMMA = ChatTemplate(
    begin="<bos>",
    # Gemma has no system role: a system message is sent as a user turn.
    system="<start_of_turn>user\n",
    user="<start_of_turn>user\n",
    assistant="<start_of_turn>model\n",
    end_turn="<end_of_turn>\n",
)
_QWEN = ChatTemplate(
    begin="",
    system="<|im_start|>system\n",
    user="<|im_start|>user\n",
    assistant="<|im_start|>assistant\n",
    end_turn="<|im_end|>\n",
)
CHAT_TEMPLATES = {
    "llama3": _LLAMA3,
    "gemma2": _GEMMA,
    "gemma3": _GEMMA,
    "qwen2": _QWEN,
    "qwen3": _QWEN,
}


# --- reading events ---------------------------------------------------------------------


def event_line(event: str, **fields: Any) -> str:
    """One stdout line of the protocol (the launcher writes these)."""
    return json.dumps({"event": event, **fields}) + "\n"


def parse_event(line: str) -> dict[str, Any] | None:
    """A launcher event is one JSON object with an "event" key on one stdout line."""
    line = line.strip()
    if not (line.startswith("{") and line.endswith("}")):
        return None
    try:
        event = json.loads(line)
    except ValueError:
        return None
    if not isinstance(event, dict) or not isinstance(event.get("event"), str):
        return None
    return event
