"""Chain-of-thought exact match: the final answer after '####' (or another marker)."""

import json
import os

import pytest

from jaxlm.eval.answers import exact_match, final_answer
from jaxlm.eval.tasks import load_gsm8k


def test_final_answer_after_the_last_marker():
    assert final_answer("3 + 4 = 7 apples.\n#### 7") == "7"
    assert final_answer("#### 1,234.50\nextra line") == "1234.5"
    assert final_answer("#### $18.<|end|>") == "18"
    assert final_answer("first try #### 5\nno, #### 6") == "6"
    assert final_answer("The answer is 12") is None  # no marker: no answer
    assert final_answer("#### ") is None
    assert final_answer("So the answer is: The Eiffel Tower.", "The answer is:", numeric=False) is None  # case matters
    assert final_answer("So The answer is: The Eiffel Tower.", "The answer is:", numeric=False) == "eiffel tower"


def test_exact_match_counts_answers_and_hits():
    golds = ["He has 3 - 1 = 2.\n#### 2", "18", "#### 1,000"]
    responses = ["Tom has 2 left.\n#### 2.0<|end|>", "It is 18.", "#### 1000"]
    assert exact_match(responses, golds) == {"exact_match": pytest.approx(2 / 3), "answered": pytest.approx(2 / 3), "n": 3}
    with pytest.raises(ValueError, match="2 responses but 3"):
        exact_match(responses[:2], golds)


def test_gsm8k_references_score_perfectly_and_agree_with_the_harness_loader(shared_data):
    path = os.path.join(shared_data, "eval/gsm8k/test.jsonl")
    with open(path, encoding="utf-8") as f:
        answers = [json.loads(line)["answer"] for line in f][:200]
    assert exact_match(answers, answers)["exact_match"] == 1.0
    items = load_gsm8k(path)[:200]
    assert [final_answer(a) for a in answers] == [item["targets"][0] for item in items]
