"""Methods beyond SFT on the web side: rewards and their answer extraction, the preference
format, the method's fit with the dataset format, and the dry-runs of GRPO and DPO."""

import io
import json
import re
import tarfile
from pathlib import Path

import pytest

from runs import services, storage
from runs.datasets import rendering, validation
from runs.errors import InvalidInput
from runs.launcher import rewards as r
from runs.models import RunStatus, TunixRun
from tests.conftest import import_dataset

PREFERENCE = (
    Path(__file__).resolve().parents[1] / "runs" / "sample_data" / "preference-sample.jsonl"
)
MARKER = r.Extraction("marker", "Final answer:")
TAGS = r.Extraction("tags", tag="answer")


def test_answers_are_extracted_after_a_marker_or_inside_tags_the_last_one_winning():
    assert r.extract_answer("Step 1: 2+2=4\nFinal answer: 4\n", MARKER) == "4"
    assert r.extract_answer("final ANSWER:  12 apples", MARKER) == "12 apples"
    assert r.extract_answer("<answer>3</answer> then <answer> 5 </answer>", TAGS) == "5"
    assert r.extract_answer("no answer here", MARKER) is None
    assert r.extract_answer("<answer></answer>", TAGS) is None


@pytest.mark.parametrize(
    ("predicted", "reference", "mode", "expected"),
    [
        ("49", "49", "exact", True),
        (" 49 ", "49", "exact", True),
        ("Forty", "forty.", "exact", False),
        ("Forty.", "forty", "normalized", True),
        ("1,234", "1234", "numeric", True),
        ("0.5", "1/2", "numeric", True),
        ("$12", "12.0000001", "numeric", True),
        ("13", "12", "numeric", False),
        ("Paris", "paris", "numeric", True),
        (None, "1", "numeric", False),
    ],
)
def test_answers_match_exactly_normalised_or_as_numbers(predicted, reference, mode, expected):
    assert r.answers_match(predicted, reference, mode, 1e-6) is expected


def test_weighted_rewards_score_completions_and_are_named_for_their_metric():
    settings = r.RewardSettings(
        MARKER,
        length_target=10,
        weights=(
            ("answer_match", 2.0),
            ("answer_format", 1.0),
            ("length_penalty", 1.0),
            ("reasoning_format", 1.0),
        ),
    )
    fns = r.build_rewards(settings)
    assert [f.__name__ for f in fns] == [
        "answer_match",
        "answer_format",
        "length_penalty",
        "reasoning_format",
    ]
    good = "2 + 2 = 4\nFinal answer: 4"
    scores = r.score(fns, [good, "Final answer: 5", "no idea"], ["4", "4", "4"])
    assert scores["answer_match"] == [2.0, 0.0, 0.0]
    assert scores["answer_format"] == [1.0, 1.0, 0.0]
    assert scores["length_penalty"][0] < 0 and scores["length_penalty"][2] == 0
    assert scores["reasoning_format"] == [1.0, 0.5, 0.0]


def test_an_unknown_reward_name_is_refused_with_the_installed_ones():
    with pytest.raises(r.RewardError, match="available: answer_match"):
        r.build_reward("not_installed", 1.0, r.RewardSettings(MARKER))
    assert r.parse_reward_list("a:1, b") == [("a", 1.0), ("b", 1.0)]
    with pytest.raises(r.RewardError):
        r.parse_reward_list("a:x")


def test_preference_rows_are_checked_with_the_field_named():
    ok = {"prompt": "q", "chosen": "a", "rejected": "b"}
    validation.check_row(ok, "preference")
    for bad, message in [
        ({"prompt": "q", "chosen": "a"}, "missing field 'rejected'"),
        ({"prompt": "q", "chosen": 3, "rejected": "b"}, "'chosen' must be a string or an array"),
        (
            {"prompt": "q", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"},
            "exactly one message",
        ),
    ]:
        with pytest.raises(validation.RowError, match=message):
            validation.check_row(bad, "preference")


def test_a_method_renders_only_the_formats_it_can_train_on():
    row = {"prompt": "q", "chosen": "yes", "rejected": "no"}
    pair = rendering.render_row(row, "preference", "qwen3", method="dpo")
    # Qwen 3 writes its (empty) think block before the answer that ends the chat.
    assert pair["chosen"].endswith("yes<|im_end|>\n")
    assert pair["rejected"].endswith("no<|im_end|>\n")
    with pytest.raises(validation.RowError, match="GRPO needs a prompt and a reference"):
        rendering.render_row(row, "preference", "qwen3", method="grpo")
    grpo = rendering.render_row(
        {"prompt": "q", "answer": "7"}, "prompt_answer", "qwen3", method="grpo"
    )
    assert grpo["answer"] == "7" and grpo["prompt"].endswith("<|im_start|>assistant\n")


def test_a_grpo_dry_run_scores_the_references_and_passes_a_working_extraction(run_factory):
    run = run_factory(method="grpo", reward_answer_format=0.5)
    assert run.status == RunStatus.COMPLETED, run.message
    check = run.environment["reward_check"]
    assert check["warnings"] == []
    match = next(x for x in check["rewards"] if x["name"] == "answer_match")
    assert match["reference"]["min"] == 1.0 and match["wrong"]["max"] == 0.0
    assert "get every reward's maximum" in run.message


def test_a_grpo_dry_run_flags_a_broken_answer_extraction(run_factory):
    run = run_factory(method="grpo", answer_marker="Result:")
    check = run.environment["reward_check"]
    assert any("reference answers get less than the maximum" in w for w in check["warnings"])
    assert 'the text after "Result:"' in run.message


def test_a_dataset_that_does_not_fit_the_method_is_refused_saying_why(run_factory):
    with pytest.raises(InvalidInput) as err:
        run_factory(method="dpo")
    assert "DPO needs preference pairs" in err.value.fields["dataset_key"]


def test_a_dpo_dry_run_shows_a_rendered_pair(run_factory, db):
    pairs = import_dataset(name="pairs", path=PREFERENCE)
    run = run_factory(method="dpo", dataset_key=pairs.key)
    assert run.status == RunStatus.COMPLETED, run.message
    pair = run.environment["preference_pair"]
    assert "Final answer: 49" in pair["chosen"] and "Final answer: 48" in pair["rejected"]
    assert run.config["method"] == {"name": "dpo", "beta": 0.1, "lambda_orpo": 0.1}
    # Without the model's tokenizer the lengths are characters and nothing is counted as cut.
    assert pair["unit"] == "characters" and pair["truncated"] is None
    assert pair["counts"]["rejected"] == len(pair["rejected"])
    assert "needs the model's tokenizer" in run.message


def launcher_cut(tokenizer, rows: list[dict], max_seq_length: int) -> tuple[int, int, int]:
    """The cut as runs.launcher.methods.dpo made it before the rule moved to the protocol:
    written out here so that the test fails if the shared rule drifts."""

    def n(text):
        return len(tokenizer.encode(text, add_special_tokens=False).ids)

    prompts = [n(r["prompt"]) for r in rows]
    answers = [max(n(r["chosen"]), n(r["rejected"])) for r in rows]
    longest_p = max(8, -(-max(prompts) // 8) * 8)
    longest_a = max(8, -(-max(answers) // 8) * 8)
    prompt_len = min(longest_p, max(8, max_seq_length // 2))
    answer_len = min(longest_a, max_seq_length - prompt_len)
    prompt_len = min(longest_p, max_seq_length - answer_len)
    cut = sum(p > prompt_len or a > answer_len for p, a in zip(prompts, answers, strict=True))
    return prompt_len, answer_len, cut


@pytest.mark.parametrize("max_seq_length", [48, 2048])
def test_a_dpo_dry_run_counts_tokens_and_the_pairs_cut_at_max_seq_length(
    run_factory, tokenizer_model, settings, client, user, max_seq_length
):
    from tokenizers import Tokenizer

    pairs = import_dataset(name="pairs", path=PREFERENCE)
    run = run_factory(method="orpo", dataset_key=pairs.key, max_seq_length=max_seq_length)
    pair = run.environment["preference_pair"]
    tokenizer = Tokenizer.from_file(
        str(Path(settings.MODELS_DIR) / "tiny-llama3" / "tokenizer.json")
    )
    rows = [
        rendering.render_row(json.loads(line), "preference", "llama3", method="dpo")
        for line in PREFERENCE.read_text().splitlines()
    ]
    prompt_len, answer_len, cut = launcher_cut(tokenizer, rows, max_seq_length)
    assert pair["unit"] == "tokens" and pair["pairs"] == len(rows) == 60
    assert pair["counts"]["chosen"] == len(
        tokenizer.encode(rows[0]["chosen"], add_special_tokens=False).ids
    )
    assert (pair["truncated"], pair["prompt_len"], pair["answer_len"]) == (
        cut,
        prompt_len,
        answer_len,
    )
    assert (cut > 0) == (max_seq_length == 48)
    assert f"Pairs: {cut} of 60 would be cut to fit max_seq_length={max_seq_length}" in run.message
    client.force_login(user)
    page = client.get(f"/runs/{run.id}/").content.decode()
    assert f"<strong>{cut} of 60</strong> pairs are cut" in page
    assert f"prompt {pair['counts']['prompt']} + {pair['counts']['chosen']} tokens" in page


def test_the_run_page_shows_the_reward_check_the_chain_and_escaped_samples(
    client, user, run_factory
):
    base = run_factory(method="sft")
    run = run_factory(method="grpo")
    sample = {
        "event": "sample",
        "step": 2,
        "split": "eval",
        "answer": "49",
        "completion": "<script>alert(1)</script> Final answer: 49",
        "rewards": {"answer_match": 1.0},
    }
    type(run).objects.filter(id=run.id).update(
        base_run=base, environment={**run.environment, "events": [sample]}
    )
    client.force_login(user)
    page = client.get(f"/runs/{run.id}/").content.decode()
    assert 'id="reward-check"' in page and "answer_match" in page
    assert 'id="run-chain"' in page and base.id.hex[:8] in page.replace("-", "")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>alert(1)" not in page


def test_the_api_takes_the_method_and_its_settings_and_refuses_unknown_choices(
    api, dataset, tiny_model_dir
):
    body = {
        "dataset_key": dataset.key,
        "model_id": tiny_model_dir,
        "method": "grpo",
        "num_generations": 4,
        "grpo_variant": "drgrpo",
    }
    response = api.post("/api/tunix/run", body)
    assert response.status_code == 201, response.content
    config = response.json()["config"]["method"]
    assert config["num_generations"] == 4 and config["variant"] == "drgrpo"
    assert config["rewards"]["rewards"] == [{"name": "answer_match", "weight": 1.0}]
    assert api.post("/api/tunix/run", {**body, "method": "ppo"}).status_code == 422
    refused = api.post("/api/tunix/run", {**body, "extra_rewards": "not_installed:1"})
    assert (
        refused.status_code == 422 and "Not installed" in refused.json()["fields"]["extra_rewards"]
    )


def test_choosing_a_method_swaps_in_its_settings_and_the_datasets_that_fit(client, user, dataset):
    pairs = import_dataset(name="pairs", path=PREFERENCE)
    client.force_login(user)
    page = client.post("/runs/new/method/", {"method": "dpo"}, HTTP_HX_REQUEST="true")
    html = page.content.decode()
    assert 'id="method-dependent"' in html
    assert 'name="dpo_beta"' in html and 'name="num_generations"' not in html
    assert f'value="{pairs.key}"' in html and f'value="{dataset.key}"' not in html
    assert "1 other dataset not listed: DPO needs preference pairs" in html
    grpo = client.post("/runs/new/method/", {"method": "grpo"}, HTTP_HX_REQUEST="true")
    assert 'name="num_generations"' in grpo.content.decode()
    assert f'value="{dataset.key}"' in grpo.content.decode()


def test_a_grpo_run_is_continued_from_its_actor_checkpoints(
    client, user, run_factory, tiny_launcher
):
    """GRPO keeps its steps in checkpoints/actor/<step>: the run page, the checkpoint
    download and Continue find them there."""
    run = run_factory(mode="local", command=["true"], method="grpo", max_steps=4)
    services.run_claim(run_id=run.id)
    services.run_finish(run_id=run.id, status=RunStatus.COMPLETED, exit_code=0)
    actor = storage.run_output_path(run) / "checkpoints" / "actor"
    for step, complete in ((3, True), (4, False)):
        (actor / str(step)).mkdir(parents=True)
        if complete:
            (actor / str(step) / "commit_success.txt").write_text("ok")
    assert storage.run_latest_checkpoint(run) == 3
    assert [c["path"] for c in storage.run_checkpoints(run)] == [
        "checkpoints/actor/4",
        "checkpoints/actor/3",
    ]
    client.force_login(user)
    page = client.get(f"/runs/{run.id}/").content.decode()
    assert "Continue from step 3" in page and 'id="checkpoint-3"' in page
    archive = client.get(f"/runs/{run.id}/checkpoints/3.tar.gz")
    assert archive.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(b"".join(archive.streaming_content))) as tar:
        assert tar.getnames() == ["checkpoint-3/commit_success.txt"]

    response = client.post(f"/runs/{run.id}/continue/", {"max_steps": "6"})
    child = TunixRun.objects.exclude(id=run.id).get()
    assert response.status_code == 302
    assert child.method == "grpo" and child.resume_from_step == 3 and child.max_steps == 6
    # The launcher adds the actor folder itself (runs.launcher.train.resume_from_parent).
    assert child.config["resume"]["checkpoint_dir"].endswith(f"{run.output_dir}/checkpoints")


def finished_local(run_factory, **kwargs):
    run = run_factory(mode="local", command=["true"], **kwargs)
    services.run_claim(run_id=run.id)
    services.run_finish(run_id=run.id, status=RunStatus.COMPLETED, exit_code=0)
    return TunixRun.objects.get(id=run.id)


def test_the_form_starts_a_run_from_a_completed_lora_run_of_the_same_model(
    client, user, run_factory, tiny_launcher, tiny_model_dir
):
    from tests.test_views import form_data

    base = finished_local(run_factory, name="sft first")
    folder = storage.run_output_path(base) / "checkpoints" / "2"
    folder.mkdir(parents=True)
    (folder / "commit_success.txt").write_text("ok")
    other_model = finished_local(run_factory, name="other model")
    TunixRun.objects.filter(id=other_model.id).update(model_id="local:another")
    no_checkpoint = finished_local(run_factory, name="no checkpoint")
    client.force_login(user)

    html = client.post(
        "/runs/new/method/",
        {"method": "grpo", "model_id": tiny_model_dir},
        HTTP_HX_REQUEST="true",
    ).content.decode()
    assert 'name="base_run_id"' in html and "Start from run" in html
    assert f'value="{base.id}"' in html and f'value="{no_checkpoint.id}"' in html
    assert f'value="{other_model.id}"' not in html
    sft = client.post("/runs/new/method/", {"method": "sft"}, HTTP_HX_REQUEST="true")
    assert 'name="base_run_id"' not in sft.content.decode()

    data = form_data(model_id=tiny_model_dir, method="grpo", base_run_id=str(base.id))
    response = client.post("/runs/new/", data)
    assert response.status_code == 302, response.content.decode()[-2000:]
    run = TunixRun.objects.order_by("-created_at").first()
    assert run.base_run_id == base.id and run.method == "grpo"
    assert run.config["base_run"]["checkpoint_dir"].endswith(f"{base.output_dir}/checkpoints")
    page = client.get(f"/runs/{run.id}/").content.decode()
    assert 'id="run-chain"' in page and str(base.id)[:8] in page

    refused = client.post("/runs/new/", {**data, "base_run_id": str(no_checkpoint.id)})
    assert refused.status_code == 422
    assert "That run has no complete checkpoint." in refused.content.decode()
    wrong = client.post("/runs/new/", {**data, "base_run_id": str(other_model.id)})
    assert wrong.status_code == 422 and "not one of your completed LoRA runs" in (
        wrong.content.decode()
    )
    assert TunixRun.objects.count() == 4


def test_the_api_refuses_a_base_run_for_sft(api, dataset, tiny_model_dir, run_factory):
    base = run_factory()
    body = {"dataset_key": dataset.key, "model_id": tiny_model_dir, "base_run_id": str(base.id)}
    response = api.post("/api/tunix/run", body)
    assert response.status_code == 422
    assert "SFT starts from the model itself" in response.json()["fields"]["base_run_id"]


def test_the_api_starts_a_grpo_run_from_another_run(
    api, dataset, tiny_model_dir, run_factory, tiny_launcher
):
    base = finished_local(run_factory)
    folder = storage.run_output_path(base) / "checkpoints" / "2"
    folder.mkdir(parents=True)
    (folder / "commit_success.txt").write_text("ok")
    body = {"dataset_key": dataset.key, "model_id": tiny_model_dir, "method": "grpo"}
    response = api.post("/api/tunix/run", {**body, "base_run_id": str(base.id)})
    assert response.status_code == 201, response.content
    assert response.json()["config"]["base_run"]["run_id"] == str(base.id)
    refused = api.post("/api/tunix/run", {**body, "base_run_id": "not-a-uuid"})
    assert refused.status_code == 422


def test_compare_lines_up_an_sft_and_a_dpo_run_on_the_metrics_they_share(client, user, run_factory):
    from runs.models import Metric

    pairs = import_dataset(name="pairs", path=PREFERENCE)
    sft = run_factory(name="sft-run")
    dpo = run_factory(name="dpo-run", method="dpo", dataset_key=pairs.key)
    series = {
        sft: {"train/loss": [2.0, 1.5, 1.2], "eval/loss": [1.4], "train/learning_rate": [1e-3]},
        dpo: {
            "train/loss": [0.69, 0.6, 0.5],
            "eval/loss": [0.65],
            "train/rewards/chosen": [0.1, 0.2, 0.3],
            "train/rewards/margin": [0.0, 0.1, 0.2],
        },
    }
    for run, metrics in series.items():
        for name, values in metrics.items():
            for step, value in enumerate(values, start=1):
                Metric.objects.create(run=run, name=name, step=step, value=value)
    client.force_login(user)
    html = client.get(f"/runs/compare/?run={sft.id}&run={dpo.id}").content.decode()
    loss = html[
        html.index('id="compare-chart"') : html.index("</svg>", html.index('id="compare-chart"'))
    ]
    for label in (
        "sft-run (SFT) train",
        "dpo-run (DPO) train",
        "sft-run (SFT) eval",
        "dpo-run (DPO) eval",
    ):
        assert f">{label}</text>" in loss, label
    assert loss.count("<polyline") == 4
    assert 'id="compare-rewards/chosen"' not in html and 'id="compare-learning_rate"' not in html
    unshared = html[html.index('id="compare-unshared"') :].split("</p>")[0]
    assert "dpo-run (DPO): rewards/chosen, rewards/margin" in unshared
    assert "sft-run (SFT): learning_rate" in unshared
    row = re.search(r'<tr class="differs"><th scope="row"><code>method</code>.*?</tr>', html, re.S)
    assert row and "dpo" in row.group(0) and "sft" in row.group(0)
