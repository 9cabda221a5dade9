"""Methods beyond SFT on the web side: rewards and their answer extraction, the preference
format, the method's fit with the dataset format, and the dry-runs of GRPO and DPO."""

from pathlib import Path

import pytest

from runs.datasets import rendering, validation
from runs.errors import InvalidInput
from runs.launcher import rewards as r
from runs.models import RunStatus
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
