"""Datasets through the services and selectors: import (and nothing left behind on
rejection), delete, the rendered training text of every format, length statistics in
characters and in tokens, the dry-run's truncation figure, and the import command."""

import hashlib
import io
import json
import sys
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from runs import protocol, services, storage
from runs.datasets import rendering, validation
from runs.datasets import selectors as dataset_selectors
from runs.datasets import services as dataset_services
from runs.errors import Conflict, Forbidden, InvalidInput, PayloadTooLarge
from runs.launcher import data as launcher_data
from runs.models import Dataset, RunStatus

from .test_dataset_validation import CHAT, PAIR, REASONING, jsonl

pytestmark = pytest.mark.django_db


def import_bytes(data: bytes, name="d", version="v1", **kwargs) -> Dataset:
    return dataset_services.dataset_import(
        source=io.BytesIO(data), name=name, version=version, **kwargs
    )


def stored_files(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*"))


# --- import -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "row,fmt", [(REASONING, "reasoning"), (PAIR, "prompt_completion"), (CHAT, "messages")]
)
def test_import_stores_the_format_rows_size_and_hash_of_each_format(row, fmt, settings, user):
    data = jsonl(row, row)
    dataset = import_bytes(data, name=f"d-{fmt}", owner=user, description="two rows")
    dataset.refresh_from_db()
    assert dataset.key == f"d-{fmt}-v1"
    assert (dataset.format, dataset.row_count, dataset.size_bytes) == (fmt, 2, len(data))
    assert dataset.sha256 == hashlib.sha256(data).hexdigest()
    assert dataset.owner == user and dataset.description == "two rows"
    assert (settings.DATASETS_DIR / dataset.file_path).read_bytes() == data
    assert stored_files(settings.DATASETS_DIR) == [f"d-{fmt}", f"d-{fmt}/v1.jsonl"]


def test_a_declared_format_that_does_not_fit_rejects_the_file():
    with pytest.raises(InvalidInput) as err:
        import_bytes(jsonl(PAIR), declared_format="messages")
    assert "line 1: missing field 'messages'" in err.value.fields["file"]


@pytest.mark.parametrize(
    "data,line",
    [
        (jsonl(PAIR, PAIR, {"prompt": "x"}), "line 3: missing field 'completion'"),
        (jsonl(PAIR, b"\xff\xfe"), "line 2: not valid UTF-8"),
        (b"", "the dataset has no rows"),
        (b"\n\n", "the dataset has no rows"),
    ],
)
def test_a_rejected_import_leaves_no_row_no_file_and_no_folder(data, line, settings):
    with pytest.raises(InvalidInput) as err:
        import_bytes(data)
    assert line in err.value.message and line in err.value.fields["file"]
    assert not Dataset.objects.exists()
    assert stored_files(settings.DATASETS_DIR) == []


def test_an_oversize_import_is_payload_too_large_and_leaves_nothing(settings):
    settings.DATASET_MAX_BYTES = 1000
    with pytest.raises(PayloadTooLarge) as err:
        import_bytes(jsonl(*([PAIR] * 100)))
    assert err.value.status_code == 413
    assert "1000 bytes" in err.value.message
    assert not Dataset.objects.exists()
    assert stored_files(settings.DATASETS_DIR) == []


def test_an_overlong_line_is_rejected_with_its_number(settings):
    settings.DATASET_MAX_LINE_BYTES = 100
    with pytest.raises(InvalidInput) as err:
        import_bytes(jsonl(PAIR, {"prompt": "p" * 200, "completion": "c"}))
    assert err.value.fields["file"] == "line 2: longer than the limit of 100 bytes"
    assert stored_files(settings.DATASETS_DIR) == []


def test_a_second_import_of_a_version_is_refused_and_the_first_is_untouched(settings):
    first = import_bytes(jsonl(PAIR))
    before = (settings.DATASETS_DIR / first.file_path).read_bytes()
    with pytest.raises(Conflict) as err:
        import_bytes(jsonl(CHAT))
    assert "versions are immutable" in err.value.message
    assert (settings.DATASETS_DIR / first.file_path).read_bytes() == before
    assert Dataset.objects.get().sha256 == first.sha256
    assert stored_files(settings.DATASETS_DIR) == ["d", "d/v1.jsonl"]


def test_a_new_version_lives_beside_the_old_one(user):
    import_bytes(jsonl(PAIR), version="v1")
    import_bytes(jsonl(PAIR, PAIR), version="v2")
    assert [(d.key, d.row_count) for d in dataset_selectors.datasets_all(user=user)] == [
        ("d-v1", 1),
        ("d-v2", 2),
    ]


@pytest.mark.parametrize(
    "name,version,field",
    [("../x", "v1", "name"), ("-x", "v1", "name"), ("x", "v/1", "version"), ("", "v1", "name")],
)
def test_unsafe_names_and_versions_are_field_errors(name, version, field, settings):
    with pytest.raises(InvalidInput) as err:
        import_bytes(jsonl(PAIR), name=name, version=version)
    assert field in err.value.fields
    assert stored_files(settings.DATASETS_DIR) == []


# --- delete -----------------------------------------------------------------------------


def test_delete_removes_the_row_then_the_file_after_commit(
    user, settings, django_capture_on_commit_callbacks
):
    dataset = import_bytes(jsonl(PAIR), owner=user)
    path = settings.DATASETS_DIR / dataset.file_path
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        dataset_services.dataset_delete(dataset=dataset, user=user)
    assert not Dataset.objects.exists()
    assert path.exists()  # not before the delete has committed
    for callback in callbacks:
        callback()
    assert stored_files(settings.DATASETS_DIR) == []


def test_delete_is_refused_while_a_local_run_refers_to_the_dataset(
    run_factory, dataset, staff_user
):
    run_factory(mode="local", command=["true"])
    with pytest.raises(Conflict) as err:
        dataset_services.dataset_delete(dataset=dataset, user=staff_user)
    assert "used by 1 run" in err.value.message
    assert Dataset.objects.filter(pk=dataset.pk).exists()


def test_only_the_owner_or_staff_may_delete_a_dataset(
    user, other_user, staff_user, django_capture_on_commit_callbacks
):
    dataset = import_bytes(jsonl(PAIR), owner=user)
    with pytest.raises(Forbidden):
        dataset_services.dataset_delete(dataset=dataset, user=other_user)
    with django_capture_on_commit_callbacks(execute=True):
        dataset_services.dataset_delete(dataset=dataset, user=staff_user)
    assert not Dataset.objects.exists()


# --- rendered training text -------------------------------------------------------------

LLAMA_USER = "<|start_header_id|>user<|end_header_id|>\n\n"
# Llama 3.1's official template always opens with a system header holding these dates.
LLAMA_SYSTEM = (
    "<|start_header_id|>system<|end_header_id|>\n\n"
    "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
)
LLAMA_ASSISTANT = "<|start_header_id|>assistant<|end_header_id|>\n\n"


@pytest.mark.parametrize(
    "row,prompt,completion",
    [
        (
            PAIR,
            f"<|begin_of_text|>{LLAMA_SYSTEM}<|eot_id|>{LLAMA_USER}Say hi.<|eot_id|>"
            f"{LLAMA_ASSISTANT}",
            "Hi!<|eot_id|>",
        ),
        (
            # Steps are written in index order whatever their order in the file.
            REASONING | {"steps": list(reversed(REASONING["steps"]))},
            f"<|begin_of_text|>{LLAMA_SYSTEM}<|eot_id|>{LLAMA_USER}What is 2 + 3?<|eot_id|>"
            f"{LLAMA_ASSISTANT}",
            "Step 1 (restate): Add 2 and 3.\nStep 2 (compute): 2 + 3 = 5.\nFinal answer: 5"
            "<|eot_id|>",
        ),
        (
            CHAT,
            f"<|begin_of_text|>{LLAMA_SYSTEM}Be brief.<|eot_id|>"
            f"{LLAMA_USER}Capital of France?<|eot_id|>{LLAMA_ASSISTANT}",
            "Paris.<|eot_id|>",
        ),
    ],
)
def test_each_format_renders_to_the_llama3_training_text(row, prompt, completion, settings):
    dataset = import_bytes(jsonl(row))
    [preview] = dataset_selectors.dataset_preview_rows(dataset, family="llama3")
    assert (preview["line"], preview["data"]) == (1, row)
    assert (preview["prompt"], preview["completion"]) == (prompt, completion)
    # The launcher's training file holds the conversation; rendering it gives that text.
    target = settings.ARTIFACTS_DIR / "train.jsonl"
    dataset_services.dataset_render_to(dataset, "llama3", target)
    messages = json.loads(target.read_text())["messages"]
    rendered = protocol.split_segments(protocol.render_chat("llama3", messages))
    assert rendered == (prompt, completion)


@pytest.mark.parametrize(
    "family,prompt,completion",
    [
        (
            "gemma3",
            # Gemma's official template opens the first user turn with the system text.
            "<bos><start_of_turn>user\nBe brief.\n\n"
            "Capital of France?<end_of_turn>\n<start_of_turn>model\n",
            "Paris.<end_of_turn>\n",
        ),
        (
            "qwen3",
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nCapital of France?"
            "<|im_end|>\n<|im_start|>assistant\n",
            # Qwen 3's official template writes an empty think block before the last answer.
            "<think>\n\n</think>\n\nParis.<|im_end|>\n",
        ),
    ],
)
def test_chat_rows_render_with_the_chosen_familys_template(family, prompt, completion):
    dataset = import_bytes(jsonl(CHAT))
    [row] = dataset_selectors.dataset_preview_rows(dataset, family=family)
    assert (row["prompt"], row["completion"]) == (prompt, completion)


def test_earlier_assistant_turns_are_part_of_the_masked_prompt():
    row = {
        "messages": [
            {"role": "user", "content": "1+1?"},
            {"role": "assistant", "content": "2"},
            {"role": "user", "content": "and 2+2?"},
            {"role": "assistant", "content": "4"},
        ]
    }
    [preview] = dataset_selectors.dataset_preview_rows(import_bytes(jsonl(row)), family="qwen2")
    assert preview["prompt"].count("<|im_start|>assistant\n") == 2
    assert "2<|im_end|>" in preview["prompt"]
    assert preview["completion"] == "4<|im_end|>\n"


def test_preview_export_and_the_launchers_training_file_are_the_same_text(run_factory, dataset):
    run = run_factory()
    output, _ = services.run_prepare(run=run)
    trained = (output / protocol.TRAIN_DATA_FILENAME).read_text()
    exported = "".join(dataset_selectors.dataset_rendered_lines(dataset, family=run.model_family))
    conversations = [json.loads(line)["messages"] for line in trained.splitlines()]
    rendered = [protocol.render_chat(run.model_family, m) for m in conversations]
    exported_rows = [json.loads(line) for line in exported.splitlines()]
    assert [[list(s) for s in r] for r in rendered] == [e["segments"] for e in exported_rows]
    previews = dataset_selectors.dataset_preview_rows(dataset, family=run.model_family, limit=3)
    assert [p["prompt"] + p["completion"] for p in previews] == [
        e["prompt"] + e["completion"] for e in exported_rows[:3]
    ]
    assert len(conversations) == dataset.row_count


# --- statistics -------------------------------------------------------------------------


def test_stats_count_characters_and_say_so_when_the_model_has_no_tokenizer(
    tiny_model_dir,
):
    rows = [
        PAIR,
        {"prompt": "x" * 80, "completion": "y" * 20},
        {"prompt": "z", "completion": "w" * 70},
    ]
    dataset = import_bytes(jsonl(*rows))
    family, model = dataset_selectors.dataset_target(model_id=tiny_model_dir)
    figures = dataset_selectors.dataset_truncation(
        dataset, family=family, model=model, max_seq_length=120
    )
    lengths = []
    answers = []
    for row in rows:
        rendered = rendering.render_row(row, dataset.format, "llama3")
        lengths.append(len(rendered["prompt"]) + len(rendered["completion"]))
        answers.append(len(rendered["completion"]))
    assert figures["unit"] == "characters"
    assert figures["counted_with"] == (
        "Counted in characters: local:tiny-llama3 has no tokenizer.json."
    )
    assert figures["rows"] == 3
    assert figures["truncated_rows"] == sum(n > 120 for n in lengths)
    assert figures["dropped_rows"] == sum(n > 120 for n in answers)
    assert (figures["min"], figures["max"]) == (min(lengths), max(lengths))
    assert sum(b["count"] for b in figures["histogram"]) == 3


def test_stats_count_tokens_the_way_the_launcher_does_when_a_tokenizer_is_there(
    tokenizer_model, dataset
):
    from tokenizers import Tokenizer

    family, model = dataset_selectors.dataset_target(model_id=tokenizer_model)
    tokenizer = Tokenizer.from_file(str(Path(model.path) / "tokenizer.json"))
    rendered = [
        rendering.render_row(row, dataset.format, family)
        for row in validation.iter_rows(storage.dataset_file(dataset))
    ]
    prompts = [len(tokenizer.encode(r["prompt"], add_special_tokens=False).ids) for r in rendered]
    answers = [
        len(tokenizer.encode(r["completion"], add_special_tokens=False).ids) for r in rendered
    ]
    lengths = [p + a for p, a in zip(prompts, answers, strict=True)]
    max_len = sorted(lengths)[len(lengths) // 2]  # a cut-off inside the distribution
    figures = dataset_selectors.dataset_truncation(
        dataset, family=family, model=model, max_seq_length=max_len
    )
    assert figures["unit"] == "tokens"
    assert figures["counted_with"] == "Counted in tokens with the tokenizer of local:tiny-llama3."
    assert figures["truncated_rows"] == sum(n > max_len for n in lengths)
    assert 0 < figures["truncated_rows"] < dataset.row_count
    assert figures["median"] == sorted(lengths)[119]  # the lower median of 240 rows
    assert figures["max"] == max(lengths)
    # The launcher's own tokenisation drops exactly the rows counted as dropped: those
    # whose last answer alone does not fit.
    conversations = [
        {"messages": rendering.row_messages(row, dataset.format)}
        for row in validation.iter_rows(storage.dataset_file(dataset))
    ]
    for cut in (max_len, sorted(answers)[len(answers) // 2]):
        counted = dataset_selectors.dataset_truncation(
            dataset, family=family, model=model, max_seq_length=cut
        )
        out = launcher_data.tokenize_rows(
            conversations, tokenizer, cut, launcher_data.Renderer(family)
        )
        assert counted["dropped_rows"] == out.long_dropped
    assert out.long_dropped > 0


def test_stats_fall_back_to_characters_when_tokenizers_cannot_be_imported(
    tokenizer_model, dataset, monkeypatch
):
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # what `import` sees without it
    family, model = dataset_selectors.dataset_target(model_id=tokenizer_model)
    figures = dataset_selectors.dataset_truncation(
        dataset, family=family, model=model, max_seq_length=64
    )
    assert figures["unit"] == "characters"
    assert "tokenizers package is not installed" in figures["counted_with"]


def test_stats_for_a_hub_model_are_counted_in_characters(dataset):
    family, model = dataset_selectors.dataset_target(model_id="Qwen/Qwen2.5-0.5B")
    assert family == "qwen2"
    figures = dataset_selectors.dataset_truncation(
        dataset, family=family, model=model, max_seq_length=64
    )
    assert figures["unit"] == "characters"
    assert "Qwen/Qwen2.5-0.5B is not a local model" in figures["counted_with"]


def test_an_unknown_model_or_family_is_a_field_error():
    with pytest.raises(InvalidInput) as err:
        dataset_selectors.dataset_target(model_id="local:nope")
    assert "model_id" in err.value.fields
    with pytest.raises(InvalidInput) as err:
        dataset_selectors.dataset_target(family="gpt2")
    assert "family" in err.value.fields


# --- dry-run, choices, command ----------------------------------------------------------


def test_a_dry_run_reports_the_truncation_figure_for_its_max_seq_length(run_factory):
    run = run_factory(max_seq_length=400)
    assert run.status == RunStatus.COMPLETED
    stats = run.environment["dataset_stats"]
    assert stats["max_seq_length"] == 400 and stats["unit"] == "characters"
    assert 0 < stats["truncated_rows"] < 240
    share = f"{100 * stats['truncated_share']:.1f}%"
    assert f"{stats['truncated_rows']} of 240 rows ({share}) would be truncated" in run.message
    assert "at max_seq_length=400 (characters)" in run.message
    assert "Counted in characters: local:tiny-llama3 has no tokenizer.json." in run.message
    run.refresh_from_db()
    assert run.environment["dataset_stats"] == stats


def test_a_dry_run_counts_tokens_when_the_model_has_a_tokenizer(tokenizer_model, run_factory):
    run = run_factory(model_id=tokenizer_model, max_seq_length=16)
    stats = run.environment["dataset_stats"]
    assert stats["unit"] == "tokens"
    assert stats["truncated_rows"] == 240
    assert "would be truncated at max_seq_length=16 (tokens)" in run.message


def test_dataset_choices_label_each_key_with_its_row_count(dataset, user):
    import_bytes(jsonl(PAIR), name="one")
    assert dataset_selectors.dataset_choices(user=user) == [
        ("one-v1", "one-v1 (1 row, Prompt / completion)"),
        ("sample-v1", "sample-v1 (240 rows, Reasoning traces)"),
    ]


def test_the_import_command_registers_a_file(tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_bytes(jsonl(CHAT, CHAT))
    out = io.StringIO()
    call_command("import_dataset", str(path), name="chat", version="v1", stdout=out)
    assert "Imported chat-v1: 2 rows (messages)" in out.getvalue()
    assert Dataset.objects.get().key == "chat-v1"


def test_the_import_command_names_the_bad_lines_and_stores_nothing(tmp_path, settings):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(jsonl(PAIR, {"prompt": "a", "completion": 3}, PAIR, {"prompt": "b"}))
    with pytest.raises(CommandError) as err:
        call_command("import_dataset", str(path), name="bad", version="v1")
    assert "line 2: field 'completion' must be a string, not a number" in str(err.value)
    assert "line 4: missing field 'completion'" in str(err.value)
    assert not Dataset.objects.exists()
    assert stored_files(settings.DATASETS_DIR) == []


def test_token_stats_of_a_large_dataset_are_estimated_from_an_even_sample(
    tokenizer_model, dataset, settings
):
    from tokenizers import Tokenizer

    settings.DATASET_STATS_MAX_TOKENIZED_ROWS = 50
    family, model = dataset_selectors.dataset_target(model_id=tokenizer_model)
    figures = dataset_selectors.dataset_truncation(
        dataset, family=family, model=model, max_seq_length=100
    )
    assert figures["rows"] == 240 and figures["measured_rows"] == 48
    assert figures["counted_with"].endswith("Estimated from every 5th row (48 rows tokenized).")
    tokenizer = Tokenizer.from_file(str(Path(model.path) / "tokenizer.json"))
    rows = list(validation.iter_rows(storage.dataset_file(dataset)))[::5]
    lengths = []
    for row in rows:
        r = rendering.render_row(row, dataset.format, family)
        lengths.append(
            sum(
                len(tokenizer.encode(r[k], add_special_tokens=False).ids)
                for k in ("prompt", "completion")
            )
        )
    share = sum(n > 100 for n in lengths) / 48
    assert figures["truncated_share"] == round(share, 4)
    assert figures["truncated_rows"] == round(share * 240)


def test_a_stored_file_that_went_missing_or_was_edited_is_a_conflict(settings):
    dataset = import_bytes(jsonl(PAIR, PAIR))
    path = settings.DATASETS_DIR / dataset.file_path
    path.write_text('{"prompt": "x"}\n')
    with pytest.raises(Conflict) as err:
        dataset_selectors.dataset_preview_rows(dataset, family="llama3")
    assert "changed since it was imported (KeyError)" in err.value.message
    with pytest.raises(Conflict):
        dataset_selectors.dataset_truncation(dataset, family="llama3", max_seq_length=64)
    path.unlink()
    with pytest.raises(Conflict) as err:
        dataset_selectors.dataset_rendered_lines(dataset, family="llama3")
    assert err.value.message == "The file of dataset d-v1 is missing from the datasets folder."
