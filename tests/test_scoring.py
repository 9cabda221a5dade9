"""Answer extraction and the text metrics of runs.launcher.scoring (stdlib only, no Tunix)."""

import pytest

from runs.launcher import scoring


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("Step 1.\nFinal answer: 49", "49"),
        ("so 1,200 + 5 = 1,205. The answer is 1,205 coins.", "1205"),
        ("#### 7", "7"),
        ("we get \\boxed{3.50}", "3.5"),
        ("Final answer: Paris.", "paris"),
        ("first 3 then 12", "12"),
        ("no digits here", None),
    ],
)
def test_the_final_answer_is_extracted_and_normalised(text, answer):
    assert scoring.extract_answer(text) == answer


def test_answer_match_compares_extracted_answers_not_the_wording():
    assert scoring.answer_match("It is 49, so the answer is 49.", "27 + 22 = 49.\nFinal answer: 49")
    assert not scoring.answer_match("The answer is 48", "Final answer: 49")
    assert not scoring.answer_match("anything", "a reference without an answer")


def test_exact_match_ignores_case_punctuation_and_articles_but_token_f1_counts_overlap():
    assert scoring.exact_match("The Cat sat.", "cat sat") == 1.0
    assert scoring.exact_match("a dog sat", "cat sat") == 0.0
    assert scoring.token_f1("dog sat", "cat sat") == pytest.approx(0.5)
    assert scoring.token_f1("", "") == 1.0 and scoring.token_f1("x", "") == 0.0


def test_each_format_gets_its_metrics_with_the_headline_first():
    assert set(scoring.score("Final answer: 2", "Final answer: 2", "reasoning")) == {
        "answer_match",
        "token_f1",
    }
    assert scoring.headline("prompt_completion") == "exact_match"


def test_preference_accuracy_is_the_share_of_pairs_whose_chosen_answer_is_likelier():
    assert scoring.headline("preference") == "preference_accuracy"
    assert scoring.preference_scores(-3.0, -7.5) == {"preference_accuracy": 1.0}
    assert scoring.preference_scores(-7.5, -3.0) == {"preference_accuracy": 0.0}
    assert scoring.preference_scores(-2.0, -2.0) == {"preference_accuracy": 0.0}  # a tie
    pairs = [(-1.0, -2.0), (-5.0, -4.0), (-0.5, -9.0), (-3.0, -3.0)]
    assert scoring.preference_accuracy(pairs) == 0.5
    assert scoring.preference_accuracy([]) == 0.0
