"""Toxicity scorers and metrics: the word list, the n-gram classifier trained by jaxlm (on a
separable toy set, and on ToxiGen's statements with its held-out accuracy), ToxiGen's reader and the
RealToxicityPrompts-style metrics against hand computations."""

import numpy as np
import pytest

from jaxlm.eval import toxicity
from jaxlm.eval.errors import EvalError


def test_word_list_matches_whole_words_and_phrases_in_any_case():
    scorer = toxicity.WordListScorer(["darn", "heck off", ""])
    scores = scorer.score(["Oh DARN it", "darning socks", "just heck off!", "heck", "fine"])
    assert scores.tolist() == [1.0, 0.0, 1.0, 0.0, 0.0]
    with pytest.raises(EvalError, match="empty"):
        toxicity.WordListScorer(["  "])


def test_ngram_classifier_learns_saves_and_loads(tmp_path):
    bad = ["you are a worthless idiot", "idiots like you are worthless", "what a worthless idiot"]
    good = ["you are a kind friend", "friends like you are kind", "what a kind friend"]
    clf = toxicity.NgramClassifier.train(bad + good, [1, 1, 1, 0, 0, 0], bits=12, steps=200)
    scores = clf.score(["such a worthless idiot", "such a kind friend"])
    assert scores[0] > 0.5 > scores[1]
    clf.save(str(tmp_path / "clf.npz"))
    again = toxicity.load_scorer(f"ngram:{tmp_path / 'clf.npz'}")
    np.testing.assert_array_equal(again.score(bad + good), clf.score(bad + good))
    np.save(tmp_path / "other.npy", np.zeros(3))
    with pytest.raises(EvalError, match="is not a toxicity classifier"):
        toxicity.NgramClassifier.load(str(tmp_path / "other.npy"))
    with pytest.raises(EvalError, match="use words:FILE"):
        toxicity.load_scorer("detoxify")


def test_toxigen_reader_dedups_drops_conflicts_and_splits_by_hash(tmp_path):
    (tmp_path / "demonstrations/race").mkdir(parents=True)
    (tmp_path / "prompts").mkdir()
    (tmp_path / "demonstrations/race/hate_asian_sentences.txt").write_text("They are all X\nboth ways\n")
    (tmp_path / "demonstrations/race/neutral_asian_sentences.txt").write_text("They cook well\nBoth  ways\n")
    (tmp_path / "prompts/hate_women_1k.txt").write_text("- women are Y\\n- they are all x\\n-\n- women are Y\\n-\n")
    items = toxicity.read_toxigen(str(tmp_path))
    by_text = {it["text"]: it for it in items}
    assert set(by_text) == {"They are all X", "They cook well", "women are Y"}  # 'both ways' is in both labels
    assert by_text["women are Y"]["group"] == "women" and by_text["They cook well"]["label"] == 0
    assert by_text["They are all X"]["group"] == "asian" and by_text["They are all X"]["label"] == 1
    assert items == toxicity.read_toxigen(str(tmp_path))  # the split is a function of the text


def test_continuation_metrics_by_hand():
    scores = np.array([[0.1, 0.7, 0.2], [0.3, 0.4, 0.2], [0.9, 0.5, 0.0]])
    m = toxicity.continuation_metrics(scores)
    assert m["expected_max_toxicity"] == pytest.approx((0.7 + 0.4 + 0.9) / 3)
    assert m["toxicity_probability"] == pytest.approx(2 / 3)
    assert m["mean_toxicity"] == pytest.approx(scores.mean())
    with pytest.raises(EvalError):
        toxicity.continuation_metrics(np.zeros(3))


def test_classifier_on_toxigen_beats_chance_on_held_out_statements(shared_data):
    clf, report = toxicity.train_on_toxigen(str(shared_data / "bias/toxigen"))
    items = toxicity.read_toxigen(str(shared_data / "bias/toxigen"))
    train = {it["text"].lower() for it in items if it["split"] == "train"}
    test = [it for it in items if it["split"] == "test"]
    assert test and not train & {it["text"].lower() for it in test}
    majority = max(np.mean([it["label"] for it in test]), 1 - np.mean([it["label"] for it in test]))
    assert report["test"]["items"] == len(test)
    assert report["test"]["accuracy"] > majority + 0.1
    assert set(report["test"]["by_group"]) <= {it["group"] for it in items}
