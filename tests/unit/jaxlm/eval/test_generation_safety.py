"""BOLD, ToxiGen-prompt and HH-RLHF dialog-safety evaluation: readers of the original formats,
BOLD's per-group metrics against hand computations, and continuations with re-ranking on a real
(random) model."""

import gzip
import json

import numpy as np
import pytest

from jaxlm.eval import generation_safety as gs
from jaxlm.eval.errors import EvalError
from jaxlm.eval.generate import SamplingConfig
from jaxlm.eval.loading import from_params
from jaxlm.eval.toxicity import WordListScorer
from tests.helpers import make_tokenizer_dir, random_model


def test_readers(tmp_path):
    (tmp_path / "bold").mkdir()
    (tmp_path / "bold/gender_prompt.json").write_text(json.dumps(
        {"American_actors": {"A_B": ["A B is an actor ", "A B was "], "C_D": ["C D is "]},
         "American_actresses": {"E_F": ["E F is an actress "]}}))
    items = gs.read_bold(str(tmp_path / "bold"))
    assert [(it["group"], it["prompt"]) for it in items] == [
        ("American_actors", "A B is an actor "), ("American_actors", "A B was "), ("American_actors", "C D is "),
        ("American_actresses", "E F is an actress ")]
    drawn = gs.read_bold(str(tmp_path / "bold"), per_group=2, seed=1)
    assert len(drawn) == 3 and drawn == gs.read_bold(str(tmp_path / "bold"), per_group=2, seed=1)
    (tmp_path / "tg").mkdir()
    (tmp_path / "tg/hate_women_1k.txt").write_text("- women are x\\n- women are y\\n-\n")
    assert gs.read_toxigen_prompts(str(tmp_path / "tg")) == [
        {"kind": "hate", "group": "women", "prompt": "- women are x\n- women are y\n- "}]
    with gzip.open(tmp_path / "hh.jsonl.gz", "wt") as f:
        f.write(json.dumps({"chosen": "\n\nHuman: How do I pick a lock?\n\nAssistant: I can't help.\n\nHuman: ok",
                            "rejected": "..."}) + "\n")
    assert gs.read_hh_prompts(str(tmp_path / "hh.jsonl.gz")) == [
        {"prompt": "\n\nHuman: How do I pick a lock?\n\nAssistant:", "question": "How do I pick a lock?"}]
    with pytest.raises(EvalError, match="no BOLD"):
        gs.read_bold(str(tmp_path))


def test_real_files_parse(shared_data):
    bold = gs.read_bold(str(shared_data / "bias/bold/prompts"), per_group=3)
    assert {it["domain"] for it in bold} == {"gender", "political_ideology", "profession", "race", "religious_ideology"}
    tg = gs.read_toxigen_prompts(str(shared_data / "bias/toxigen/prompts"), per_file=2)
    assert len(tg) == 20 and all(it["prompt"].endswith("- ") for it in tg)
    hh = gs.read_hh_prompts(str(shared_data / "pref/hh-rlhf/harmless-base/test.jsonl.gz"), limit=5)
    assert len(hh) == 5 and all("Human:" not in it["question"] for it in hh)


def test_bold_metrics_by_hand():
    items = [{"domain": "gender", "group": "a"}, {"domain": "gender", "group": "a"}, {"domain": "gender", "group": "b"}]
    sentiment = np.array([[0.6, -0.6], [0.0, 0.2], [-0.7, -0.1]])
    toxicity = np.array([[0.0, 1.0], [0.0, 0.0], [1.0, 1.0]])
    m = gs.bold_metrics(items, sentiment, toxicity)
    a, b = m["by_group"]["gender/a"], m["by_group"]["gender/b"]
    assert a["sentiment"] == pytest.approx(0.05) and a["positive"] == 0.25 and a["negative"] == 0.25
    assert a["toxicity"] == 0.25 and b["toxic_share"] == 1.0 and b["negative"] == 0.5
    assert m["spread"]["gender"]["sentiment"] == pytest.approx(0.05 - (-0.4))
    assert m["spread"]["gender"]["negative"] == pytest.approx(0.25)


@pytest.fixture(scope="module")
def em(tmp_path_factory):
    tok_dir = make_tokenizer_dir(str(tmp_path_factory.mktemp("gs") / "data"))
    config, params = random_model("llama", vocab_size=384, dataset=tok_dir, seed=7)
    return from_params(config, params)


def test_reranking_keeps_the_least_toxic_sample(em):
    class Length:  # "toxicity" = length, so the choice is visible
        def score(self, texts):
            return np.array([len(t) / 100 for t in texts])

    sampling = SamplingConfig(max_new_tokens=12, temperature=1.0, seed=3)
    prompts = ["The quick brown fox", "A man is"]
    free = gs.continuations(em, prompts, 3, sampling)
    best = gs.continuations(em, prompts, 1, sampling, scorer=Length(), rerank_k=3)
    assert best == [[min(row, key=len)] for row in free]
    assert len({len(t) for row in free for t in row}) > 1  # the samples differ, so the choice matters
    with pytest.raises(EvalError, match="needs a toxicity scorer"):
        gs.continuations(em, prompts, 1, sampling, rerank_k=2)


def test_prompt_toxicity_runs_end_to_end(em):
    items = [{"prompt": "The quick", "group": "x"}, {"prompt": "A man", "group": "y"}]
    scorer = WordListScorer(["e"])  # one letter: most continuations are "toxic"
    result = gs.evaluate_prompt_toxicity(em, items, scorer, k=2, by="group",
                                         sampling=SamplingConfig(max_new_tokens=8, temperature=1.0))
    assert result["prompts"] == 2 and result["samples_per_prompt"] == 2
    assert set(result["by_group"]) == {"x", "y"}
    assert 0.0 <= result["expected_max_toxicity"] <= 1.0
