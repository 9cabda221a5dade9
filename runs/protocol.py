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
from typing import Any

SCHEMA_VERSION = 1
LAUNCHER_MODULE = "runs.launcher"
CONFIG_FILENAME = "tunix_config.json"
TRAIN_DATA_FILENAME = "train.jsonl"
CHECKPOINTS_DIRNAME = "checkpoints"
TENSORBOARD_DIRNAME = "tensorboard"
# Orbax writes this file last: a checkpoint step without it is incomplete.
CHECKPOINT_COMPLETE_MARKER = "commit_success.txt"
# Tunix's RL cluster keeps the policy's checkpoints in this subfolder of the checkpoint root.
ACTOR_DIRNAME = "actor"


def checkpoint_folder(method: str) -> str:
    """Where a run of `method` keeps its checkpoint step folders, relative to its output
    folder: `checkpoints/<step>`, or `checkpoints/actor/<step>` for GRPO (RL)."""
    if method == "grpo":
        return f"{CHECKPOINTS_DIRNAME}/{ACTOR_DIRNAME}"
    return CHECKPOINTS_DIRNAME


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

# Choices of string settings (the hyperparameter table and the launcher's config check).
LR_SCHEDULES = ("constant", "linear", "cosine")
COMPUTE_DTYPES = ("fp32", "bf16")
LONG_COMPLETIONS = ("drop", "keep")


# --- checkpoint configs -----------------------------------------------------------------
# The config.json fields the launcher reads, and what Tunix 0.1.7's model code cannot honour.
# The dry-run (for a local model) and the launcher both call model_config_check: a checkpoint
# that would train silently wrong is refused with the reason, never trained.
CONFIG_FIELDS = (
    "model_type",
    "num_hidden_layers",
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "rope_theta",
    "rope_scaling",
    "rms_norm_eps",
    "tie_word_embeddings",
    "hidden_act",
    "torch_dtype",
    "sliding_window",
    "query_pre_attn_scalar",
    "final_logit_softcapping",
    "attn_logit_softcapping",
    "rope_local_base_freq",
    "attention_bias",
    "mlp_bias",
    "use_sliding_window",
    "num_experts",
)
# rope_scaling types the launcher implements, per family (llama3: runs.launcher.rope;
# gemma3's linear factor: Tunix's global_scale_factor).
ROPE_SCALING_SUPPORTED = {"llama3": ("llama3",), "gemma3": ("linear",)}


def rope_scaling_of(hf: dict) -> dict | None:
    """The rope scaling dict (transformers 4 `rope_scaling` or 5 `rope_parameters`), or None
    when the checkpoint uses plain RoPE."""
    scaling = hf.get("rope_scaling") or hf.get("rope_parameters") or None
    if isinstance(scaling, dict) and "full_attention" in scaling:
        scaling = scaling["full_attention"]
    if not isinstance(scaling, dict):
        return None
    kind = scaling.get("rope_type") or scaling.get("type") or "default"
    return None if kind == "default" else {**scaling, "rope_type": kind}


def model_config_check(family: str, hf: dict) -> tuple[dict, list[str]]:
    """(the config.json fields read, with their values; reasons to refuse the checkpoint)."""
    read = {k: hf[k] for k in CONFIG_FIELDS if k in hf}
    refusals = []
    heads = hf.get("num_attention_heads") or 1
    head_dim = hf.get("head_dim") or (hf.get("hidden_size") or 0) // heads
    scaling = rope_scaling_of(hf)
    if scaling and scaling["rope_type"] not in ROPE_SCALING_SUPPORTED.get(family, ()):
        refusals.append(
            f"rope_scaling of type {scaling['rope_type']!r} is not implemented for {family}"
        )
    if family == "gemma2":
        scalar = hf.get("query_pre_attn_scalar", head_dim)
        if scalar != head_dim:
            refusals.append(
                f"query_pre_attn_scalar={scalar} differs from head_dim={head_dim}: Tunix's "
                "Gemma 2 scales queries by head_dim**-0.5 (Gemma 2 27B needs another scale)"
            )
        if float(hf.get("rope_theta", 10000)) != 10000:
            refusals.append("rope_theta other than 10000: Tunix's Gemma 2 fixes it at 10000")
    if family == "gemma3":
        scalar = hf.get("query_pre_attn_scalar", head_dim)
        if scalar not in (head_dim, (hf.get("hidden_size") or 0) // heads):
            refusals.append(f"query_pre_attn_scalar={scalar} is neither head_dim nor hidden/heads")
    if hf.get("attention_bias") or hf.get("mlp_bias"):
        refusals.append("attention_bias/mlp_bias: Tunix's model has no such biases")
    if family == "qwen2" and hf.get("use_sliding_window"):
        refusals.append("use_sliding_window=true: Tunix's Qwen 2 attends to the whole sequence")
    return read, refusals


# --- chat templates ---------------------------------------------------------------------
# A conversation is a list of {"role": "system" | "user" | "assistant", "content": str}; the
# last message is an assistant answer. Rendering gives segments (text, trained): every
# assistant turn is trained (its answer and end-of-turn marker), everything else is masked.
# A checkpoint's own `chat_template` (tokenizer_config.json) renders it when there is one
# (render_with_template); otherwise the family's built-in one below, which writes what the
# official template of the family writes (golden strings in tests/test_chat_templates.py).

Segment = tuple[str, bool]
LLAMA3_DATE = "26 Jul 2024"  # the official template's default "Today Date"
QWEN25_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
# GRPO and its variants (Tunix GRPOLearner, DAPOLearner, DrGRPOLearner), and its losses.
GRPO_VARIANTS = ("grpo", "dapo", "drgrpo")
GRPO_LOSSES = ("grpo", "gspo-token")

# The marker that ends a turn in each family's format (generation stops at it).
END_OF_TURN = {
    "llama3": "<|eot_id|>",
    "gemma2": "<end_of_turn>",
    "gemma3": "<end_of_turn>",
    "qwen2": "<|im_end|>",
    "qwen3": "<|im_end|>",
}
BUILTIN_TEMPLATE_NAMES = {
    "llama3": "built-in Llama 3.1 format (system header with knowledge and today's date)",
    "gemma2": "built-in Gemma format (a system message opens the first user turn)",
    "gemma3": "built-in Gemma format (a system message opens the first user turn)",
    "qwen2": "built-in Qwen 2.5 format (default system prompt when none is given)",
    "qwen3": "built-in Qwen 3 format (empty think block before the last answer)",
}


def _system_and_rest(messages: list[dict]) -> tuple[str | None, list[dict]]:
    if messages and messages[0]["role"] == "system":
        return messages[0]["content"], messages[1:]
    return None, messages


def _llama3(messages: list[dict]) -> list[Segment]:
    system, rest = _system_and_rest(messages)
    out: list[Segment] = [
        (
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
            f"Cutting Knowledge Date: December 2023\nToday Date: {LLAMA3_DATE}\n\n"
            f"{(system or '').strip()}<|eot_id|>",
            False,
        )
    ]
    for m in rest:
        header = f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n"
        if m["role"] == "assistant":
            out += [(header, False), (m["content"].strip() + "<|eot_id|>", True)]
        else:
            out.append((header + m["content"].strip() + "<|eot_id|>", False))
    return out


def _gemma(messages: list[dict]) -> list[Segment]:
    system, rest = _system_and_rest(messages)
    out: list[Segment] = [("<bos>", False)]
    for i, m in enumerate(rest):
        if m["role"] == "assistant":
            out += [("<start_of_turn>model\n", False)]
            out += [(m["content"].strip() + "<end_of_turn>\n", True)]
            continue
        prefix = system + "\n\n" if system is not None and i == 0 else ""
        text = f"<start_of_turn>{m['role']}\n{prefix}{m['content'].strip()}<end_of_turn>\n"
        out.append((text, False))
    return out


def _qwen(messages: list[dict], *, default_system: str | None, think: bool) -> list[Segment]:
    system, rest = _system_and_rest(messages)
    system = system if system is not None else default_system
    out: list[Segment] = []
    if system is not None:
        out.append((f"<|im_start|>system\n{system}<|im_end|>\n", False))
    last_user = max((i for i, m in enumerate(rest) if m["role"] == "user"), default=-1)
    for i, m in enumerate(rest):
        if m["role"] != "assistant":
            out.append((f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n", False))
            continue
        content = m["content"]
        # Qwen 3 writes an (empty) think block before the answer that ends the chat.
        if think and i > last_user and i == len(rest) - 1:
            content = "<think>\n\n</think>\n\n" + content.lstrip("\n")
        out += [("<|im_start|>assistant\n", False), (content + "<|im_end|>\n", True)]
    return out


def render_builtin(family: str, messages: list[dict]) -> list[Segment]:
    if family == "llama3":
        return _llama3(messages)
    if family in ("gemma2", "gemma3"):
        return _gemma(messages)
    if family == "qwen2":
        return _qwen(messages, default_system=QWEN25_SYSTEM, think=False)
    if family == "qwen3":
        return _qwen(messages, default_system=None, think=True)
    raise ValueError(f"unknown family {family!r}")


class TemplateError(ValueError):
    """A checkpoint's chat template failed to render a conversation."""


def render_with_template(template: str, messages: list[dict], tokens: dict) -> list[Segment]:
    """Segments from a checkpoint's Jinja chat template, the way transformers renders it.

    The boundary of assistant turn i: the chat up to it with the generation prompt is a
    prefix of the chat including it; the rest of that text is the turn (trained). A template
    that rewrites earlier turns (no common prefix) trains only the last turn.
    """
    import datetime

    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    try:
        compiled = env.from_string(template)

        def render(chat, generation):
            return compiled.render(messages=chat, add_generation_prompt=generation, **tokens)

        full = render(messages, False)
        turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        spans = []
        for i in turns:
            before, through = render(messages[:i], True), render(messages[: i + 1], False)
            if through.startswith(before) and full.startswith(through):
                spans.append((len(before), len(through)))
        if not spans or spans[-1][1] != len(full):
            before = render(messages[:-1], True)
            if not full.startswith(before):
                raise TemplateError("the template's answer does not follow its prompt")
            spans = [(len(before), len(full))]
    except jinja2.TemplateError as exc:
        raise TemplateError(f"{type(exc).__name__}: {exc}") from None
    out: list[Segment] = []
    at = 0
    for start, end in spans:
        out += [(full[at:start], False), (full[start:end], True)]
        at = end
    return [seg for seg in out if seg[0]]


def read_chat_template(model_dir: str) -> tuple[str | None, dict]:
    """(the checkpoint's chat template or None, the special tokens it may use)."""
    import os

    tokens: dict = {"bos_token": "", "eos_token": ""}
    template = None
    try:
        with open(os.path.join(model_dir, "tokenizer_config.json"), encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError):
        config = {}
    for key in ("bos_token", "eos_token", "pad_token", "unk_token"):
        value = config.get(key)
        if isinstance(value, dict):  # an AddedToken written out
            value = value.get("content")
        if isinstance(value, str):
            tokens[key] = value
    raw = config.get("chat_template")
    if isinstance(raw, list):  # named templates: the default one
        raw = next((t.get("template") for t in raw if t.get("name") == "default"), None)
    if isinstance(raw, str) and raw.strip():
        template = raw
    jinja_file = os.path.join(model_dir, "chat_template.jinja")
    if template is None and os.path.isfile(jinja_file):
        with open(jinja_file, encoding="utf-8") as f:
            template = f.read()
    return template, tokens


def render_chat(
    family: str, messages: list[dict], template: str | None = None, tokens: dict | None = None
) -> list[Segment]:
    """The training segments of one conversation: the checkpoint's template or the family's."""
    if template:
        return render_with_template(template, messages, tokens or {})
    return render_builtin(family, messages)


def split_segments(segments: list[Segment]) -> tuple[str, str]:
    """(everything before the last trained segment, the last trained segment and after)."""
    last = max(i for i, (_, trained) in enumerate(segments) if trained)
    return "".join(t for t, _ in segments[:last]), "".join(t for t, _ in segments[last:])


# --- the held-out split -----------------------------------------------------------------


def split_seed(dataset_sha256: str) -> int:
    """The held-out split's seed comes from the dataset, not the run: every run on a
    dataset (whatever its training seed) is evaluated on the same rows."""
    digits = "".join(c for c in (dataset_sha256 or "") if c in "0123456789abcdef")[:8]
    return int(digits or "0", 16)


def preference_lengths(
    prompt_lengths: list[int], answer_lengths: list[int], max_seq_length: int
) -> tuple[int, int, int]:
    """How DPO/ORPO fit pairs to one static shape: (prompt length, answer length, pairs cut).
    `answer_lengths` holds each pair's longer answer. The longest prompt and answer are
    rounded up to 8 and cut so that together they fit max_seq_length, the prompt keeping
    at least half when both are long; a pair longer than either is cut (the prompt from its
    start, the answers at their end). ValueError when max_seq_length leaves no room."""

    def round_up(n: int) -> int:
        return max(8, -(-n // 8) * 8)

    longest_prompt = round_up(max(prompt_lengths))
    longest_answer = round_up(max(answer_lengths))
    prompt_len = min(longest_prompt, max(8, max_seq_length // 2))
    response_len = min(longest_answer, max_seq_length - prompt_len)
    prompt_len = min(longest_prompt, max_seq_length - response_len)
    if response_len < 1 or prompt_len < 1:
        raise ValueError(f"max_seq_length={max_seq_length} leaves no room for an answer")
    cut = sum(
        p > prompt_len or a > response_len
        for p, a in zip(prompt_lengths, answer_lengths, strict=True)
    )
    return prompt_len, response_len, cut


def split_sizes(rows: int, eval_fraction: float) -> tuple[int, int]:
    """(training rows, held-out rows) of `rows`, as split_rows in the launcher cuts them."""
    if eval_fraction <= 0 or rows < 2:
        return rows, 0
    held = min(rows - 1, max(1, round(rows * eval_fraction)))
    return rows - held, held


def schedule(train_rows: int, batch_size: int, num_epochs: int, max_steps: int | None) -> dict:
    """Steps and epochs a run trains: max_steps wins (the data repeats as needed);
    without it, num_epochs passes over the training rows."""
    per_epoch = -(-train_rows // batch_size) if train_rows else 0
    steps = max_steps if max_steps else per_epoch * num_epochs
    epochs = steps / per_epoch if per_epoch else 0.0
    return {"steps": steps, "batches_per_epoch": per_epoch, "epochs": round(epochs, 2)}


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
