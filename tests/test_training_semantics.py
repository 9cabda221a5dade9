"""What the launcher trains on and how, checked without JAX: chat templates against the
official formats, every assistant turn trained, truncation from the left, the held-out split,
steps and epochs, RoPE frequencies, and checkpoints the launcher must refuse."""

import math
import random

import pytest

from runs import protocol
from runs.launcher import rope
from runs.launcher.data import Renderer, split_rows, tokenize_rows

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "1+1?"},
    {"role": "assistant", "content": "2"},
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "4"},
]
SINGLE = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]

# Written from each family's published chat template (tokenizer_config.json of the
# official instruct checkpoints), with add_generation_prompt=False.
GOLDEN = {
    ("llama3", "single"): (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello<|eot_id|>"
    ),
    ("llama3", "multi"): (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n1+1?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n2<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n2+2?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n4<|eot_id|>"
    ),
    ("gemma3", "single"): (
        "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nHello<end_of_turn>\n"
    ),
    ("gemma3", "multi"): (
        "<bos><start_of_turn>user\nBe brief.\n\n1+1?<end_of_turn>\n"
        "<start_of_turn>model\n2<end_of_turn>\n"
        "<start_of_turn>user\n2+2?<end_of_turn>\n<start_of_turn>model\n4<end_of_turn>\n"
    ),
    ("qwen2", "single"): (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
        "assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello<|im_end|>\n"
    ),
    ("qwen2", "multi"): (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n1+1?<|im_end|>\n"
        "<|im_start|>assistant\n2<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n"
        "<|im_start|>assistant\n4<|im_end|>\n"
    ),
    ("qwen3", "single"): (
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\nHello<|im_end|>\n"
    ),
    ("qwen3", "multi"): (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n1+1?<|im_end|>\n"
        "<|im_start|>assistant\n2<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\n4<|im_end|>\n"
    ),
}
GOLDEN[("gemma2", "single")] = GOLDEN[("gemma3", "single")]
GOLDEN[("gemma2", "multi")] = GOLDEN[("gemma3", "multi")]

# Gemma 3's official chat template (text part), as its tokenizer_config.json ships it.
GEMMA3_JINJA = (
    "{{ bos_token }}{%- if messages[0]['role'] == 'system' -%}{%- set first_user_prefix = "
    "messages[0]['content'] + '\n\n' -%}{%- set loop_messages = messages[1:] -%}{%- else -%}"
    '{%- set first_user_prefix = "" -%}{%- set loop_messages = messages -%}{%- endif -%}'
    "{%- for message in loop_messages -%}{%- if (message['role'] == 'user') != "
    "(loop.index0 % 2 == 0) -%}{{ raise_exception('Conversation roles must alternate "
    "user/assistant/user/assistant/...') }}{%- endif -%}{%- if (message['role'] == "
    "'assistant') -%}{%- set role = \"model\" -%}{%- else -%}{%- set role = message['role'] "
    "-%}{%- endif -%}{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first "
    "else \"\") }}{{ message['content'] | trim }}{{ '<end_of_turn>\n' }}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{'<start_of_turn>model\n'}}{%- endif -%}"
)


def merged(segments):
    """Adjacent segments with the same flag joined: the same training text and mask."""
    out = []
    for text, trained in segments:
        if out and out[-1][1] == trained:
            out[-1] = (out[-1][0] + text, trained)
        else:
            out.append((text, trained))
    return out


@pytest.mark.parametrize("family", protocol.FAMILIES)
@pytest.mark.parametrize("kind", ["single", "multi"])
def test_each_familys_builtin_template_writes_its_official_format(family, kind):
    segments = protocol.render_builtin(family, SINGLE if kind == "single" else CHAT)
    assert "".join(text for text, _ in segments) == GOLDEN[(family, kind)]


@pytest.mark.parametrize("family", protocol.FAMILIES)
def test_every_assistant_turn_and_its_end_of_turn_token_is_trained_and_nothing_else(family):
    segments = protocol.render_builtin(family, CHAT)
    trained = [text for text, is_trained in segments if is_trained]
    assert len(trained) == 2
    assert "2" in trained[0] and "4" in trained[1]
    end = {"llama3": "<|eot_id|>", "gemma2": "<end_of_turn>", "gemma3": "<end_of_turn>"}
    assert all(end.get(family, "<|im_end|>") in text for text in trained)
    masked = "".join(text for text, is_trained in segments if not is_trained)
    assert "1+1?" in masked and "2+2?" in masked and "Be brief." in masked


def test_a_checkpoints_own_jinja_template_renders_and_finds_every_answer():
    tokens = {"bos_token": "<bos>", "eos_token": "<eos>"}
    segments = protocol.render_chat("gemma3", CHAT, GEMMA3_JINJA, tokens)
    assert merged(segments) == merged(protocol.render_builtin("gemma3", CHAT))
    with pytest.raises(protocol.TemplateError, match="alternate"):
        protocol.render_chat("gemma3", CHAT[:1] + CHAT[2:], GEMMA3_JINJA, tokens)


def test_the_checkpoints_template_is_read_from_its_tokenizer_config(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text(
        '{"chat_template": "{{ bos_token }}x", "bos_token": {"content": "<s>"}}'
    )
    template, tokens = protocol.read_chat_template(str(tmp_path))
    assert template == "{{ bos_token }}x" and tokens["bos_token"] == "<s>"
    assert protocol.read_chat_template(str(tmp_path / "none")) == (
        None,
        {"bos_token": "", "eos_token": ""},
    )


# --- truncation -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    tokenizers = pytest.importorskip("tokenizers")
    from runs.launcher.tinymodel import train_tokenizer

    texts = ["".join(GOLDEN.values())] * 3 + ["word " * 50]
    assert tokenizers
    return train_tokenizer(texts, 400)


def test_long_rows_lose_the_start_of_their_prompt_and_keep_bos_and_end_of_turn(tokenizer):
    renderer = Renderer("llama3")
    long_prompt = [{"role": "user", "content": "word " * 60}, {"role": "assistant", "content": "4"}]
    rows = [{"messages": long_prompt}, {"messages": CHAT}]
    out = tokenize_rows(rows, tokenizer, 40, renderer)
    assert out.counts()["prompt_truncated"] >= 1
    for ids, mask in out.examples:
        assert len(ids) <= 40
        assert tokenizer.id_to_token(ids[0]) == "<|begin_of_text|>"
        assert tokenizer.id_to_token(ids[-1]) == "<|eot_id|>" and mask[-1] == 1


def test_rows_whose_answer_alone_does_not_fit_are_dropped_or_kept_by_the_setting(tokenizer):
    renderer = Renderer("qwen2")
    row = {
        "messages": [
            {"role": "user", "content": "x"},
            {"role": "assistant", "content": "word " * 60},
        ]
    }
    dropped = tokenize_rows([row, {"messages": SINGLE}], tokenizer, 24, renderer)
    assert dropped.counts()["long_completion_dropped"] == 1 and len(dropped.examples) == 1
    kept = tokenize_rows([row], tokenizer, 24, renderer, keep_long=True)
    assert kept.counts()["long_completion_kept"] == 1 and len(kept.examples[0][0]) == 24


def test_the_loss_mask_covers_exactly_the_assistant_turns(tokenizer):
    out = tokenize_rows([{"messages": CHAT}], tokenizer, 512, Renderer("qwen2"))
    ids, mask = out.examples[0]
    trained = tokenizer.decode(
        [i for i, m in zip(ids, mask, strict=True) if m], skip_special_tokens=False
    )
    assert trained == "2<|im_end|>\n4<|im_end|>\n"


# --- split, steps and epochs ------------------------------------------------------------


def test_runs_with_different_training_seeds_share_their_held_out_rows():
    rows = [{"prompt": str(i), "completion": "x"} for i in range(100)]
    seed = protocol.split_seed("ab12" * 16)
    assert split_rows(rows, 0.1, seed) == split_rows(list(rows), 0.1, seed)
    assert len(split_rows(rows, 0.1, seed)[1]) == protocol.split_sizes(100, 0.1)[1] == 10
    assert protocol.split_seed("ab12" * 16) != protocol.split_seed("cd34" * 16)


def test_max_steps_wins_and_the_data_repeats():
    # 54 rows, batches of 4: 14 batches per epoch.
    assert protocol.schedule(54, 4, 1, 60) == {"steps": 60, "batches_per_epoch": 14, "epochs": 4.29}
    assert protocol.schedule(54, 4, 2, None) == {
        "steps": 28,
        "batches_per_epoch": 14,
        "epochs": 2.0,
    }


def test_train_batches_repeat_epochs_until_the_step_count():
    pytest.importorskip("tunix")
    from runs.launcher.data import TrainBatches

    examples = [([1, 2, 3], [0, 1, 1])] * 5
    assert len(list(TrainBatches(examples, 2, 8, 7, seed=0))) == 7


# --- RoPE and config fields -------------------------------------------------------------


def meta_apply_scaling(freqs, factor, low, high, original):
    """Meta's reference implementation (llama-models, apply_scaling), written out."""
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


def test_llama3_rope_scaling_matches_the_published_formula():
    # Llama 3.2 1B: head_dim 64, rope_theta 500000, factor 32.
    scaling = {
        "rope_type": "llama3",
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    plain = rope.inverse_frequencies(64, 500000.0)
    scaled = rope.inverse_frequencies(64, 500000.0, scaling)
    assert plain == [1 / 500000.0 ** (2 * i / 64) for i in range(32)]
    assert scaled == pytest.approx(meta_apply_scaling(plain, 32.0, 1.0, 4.0, 8192), rel=1e-12)
    assert sum(a != b for a, b in zip(plain, scaled, strict=True)) == 17
    with pytest.raises(ValueError):
        rope.inverse_frequencies(64, 500000.0, {"rope_type": "yarn"})


def test_config_fields_the_loader_cannot_honour_are_refused_and_the_rest_listed():
    gemma2_27b = {
        "model_type": "gemma2",
        "hidden_size": 4608,
        "num_attention_heads": 32,
        "head_dim": 128,
        "query_pre_attn_scalar": 144,
    }
    read, refusals = protocol.model_config_check("gemma2", gemma2_27b)
    assert read["query_pre_attn_scalar"] == 144
    assert any("query_pre_attn_scalar=144" in r for r in refusals)
    llama = {"model_type": "llama", "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}
    assert protocol.model_config_check("llama3", llama)[1] == []
    yarn = {"model_type": "qwen2", "rope_scaling": {"type": "yarn", "factor": 4.0}}
    assert "yarn" in protocol.model_config_check("qwen2", yarn)[1][0]
    assert protocol.model_config_check("qwen3", {"rope_scaling": {"rope_type": "default"}})[1] == []


def test_a_random_split_is_stable_for_the_same_dataset():
    rows = list(range(30))
    random.Random(0).shuffle(rows)
    seed = protocol.split_seed("0" * 64)
    assert split_rows(rows, 0.2, seed) == split_rows(rows, 0.2, seed)
