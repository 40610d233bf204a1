import gzip
import json
import random

import numpy as np
import pytest

from data_prep.document import Document
from data_prep.executors import LocalExecutor
from data_prep.stages import StageConfigError
from data_prep.stages.files import read_documents, write_documents
from data_prep.stages.quality import train_logistic
from data_prep.stages.runner import jsonl_input, run_stages

SUBJECTS = ["The committee", "Our neighbour", "The old bridge", "A young scientist", "The river", "This village"]
VERBS = ["described", "questioned", "remembered", "explained", "carried", "measured"]
OBJECTS = ["the history of the town", "a careful plan for the winter", "the results of the survey",
           "the letters from her brother", "the slow change of the seasons", "an argument about taxes"]
SPAM = ["Click here", "BUY NOW", "Login", "Sign up free", "Home | About | Contact", "50% OFF",
        "Share on Facebook", "Cookie settings", "Subscribe!!!", "Best price guaranteed", "Menu", "Next page >>"]


def prose(rng, sentences=8):
    return " ".join(f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}." for _ in range(sentences))


def spam(rng, items=25):
    return "\n".join(rng.choice(SPAM) for _ in range(items))


def test_logistic_regression_separates_and_is_deterministic():
    rng = random.Random(0)
    texts = [prose(rng) for _ in range(100)] + [spam(rng) for _ in range(100)]
    labels = np.array([1] * 100 + [0] * 100)
    model = train_logistic(texts, labels, bits=12, steps=100)
    again = train_logistic(texts, labels, bits=12, steps=100)
    assert np.array_equal(model.weights, again.weights) and model.bias == again.bias
    scores = model.scores([prose(rng) for _ in range(20)] + [spam(rng) for _ in range(20)])
    assert (scores[:20] > 0.9).all() and (scores[20:] < 0.1).all()


@pytest.fixture
def corpus(tmp_path):
    rng = random.Random(1)
    (tmp_path / "reference.txt").write_text("\n\n".join(prose(rng) for _ in range(300)))
    lines = "\n".join(json.dumps({"text": spam(rng)}) for _ in range(300))
    (tmp_path / "web.jsonl.gz").write_bytes(gzip.compress(lines.encode()))
    stream = [Document(prose(rng), f"s/{i:03d}", "web") for i in range(40)]
    stream += [Document(spam(rng), f"s/{i:03d}", "web") for i in range(40, 100)]
    write_documents(tmp_path / "stream.jsonl", stream)
    return tmp_path


def run(corpus, spec, name):
    result = run_stages([spec], jsonl_input([corpus / "stream.jsonl"]), 1, corpus / name, LocalExecutor(1))
    return [d for p in result.outputs for d in read_documents(p)], result


def test_classifier_filters_by_threshold_and_reports_held_out_accuracy(corpus):
    spec = {"type": "quality_classifier", "reference": [str(corpus / "reference.txt")],
            "negatives": [str(corpus / "web.jsonl.gz")], "feature_bits": 14, "steps": 150}
    out, result = run(corpus, spec, "threshold")
    assert sorted(d.id for d in out) == [f"s/{i:03d}" for i in range(40)]
    assert all(d.meta["quality_score"] >= 0.5 for d in out)
    report = result.reports["quality_classifier"]
    assert report["held_out_accuracy"] == 1.0
    assert report["train_docs"] + report["held_out_docs"] == 600
    assert 90 <= report["held_out_docs"] <= 150  # ~20%
    assert result.stats[0].removed == {"quality_classifier:low_quality": 60}


def test_classifier_samples_negatives_from_the_stream_and_annotates(corpus):
    spec = {"type": "quality_classifier", "reference": [str(corpus / "reference.txt")], "sample_rate": 1.0,
            "feature_bits": 14, "steps": 150, "action": "annotate"}
    out, result = run(corpus, spec, "annotate")
    assert len(out) == 100 and result.stats[0].docs_removed == 0
    scores = np.array([d.meta["quality_score"] for d in out])
    assert scores[:40].mean() > scores[40:].mean() + 0.3  # the stream's prose still scores above its spam
    assert result.reports["quality_classifier"]["train_docs"] + result.reports["quality_classifier"]["held_out_docs"] == 200


def test_classifier_pareto_keeps_some_low_scores(corpus):
    spec = {"type": "quality_classifier", "reference": [str(corpus / "reference.txt")],
            "negatives": [str(corpus / "web.jsonl.gz")], "feature_bits": 14, "steps": 150, "action": "pareto"}
    out, _ = run(corpus, spec, "pareto")
    ids = {d.id for d in out}
    assert {f"s/{i:03d}" for i in range(40)} <= ids  # a score near 1 is always kept
    # P(Pareto(9) > 1 - s) for a spam score s ~ 0.01 is (2 - s)^-9 ~ 0.002: almost all spam goes
    assert len(ids) - 40 <= 3


def test_classifier_needs_enough_training_text(corpus, tmp_path):
    (tmp_path / "tiny.txt").write_text("One paragraph only.")
    spec = {"type": "quality_classifier", "reference": [str(tmp_path / "tiny.txt")], "sample_rate": 1.0}
    with pytest.raises(StageConfigError, match="only 1 reference and 100 negative documents"):
        run(corpus, spec, "tiny")


def test_classifier_on_real_text(shared_data):
    """Wikipedia paragraphs (WikiText-2) against whole web pages' text, boilerplate included."""
    from resiliparse.extract.html2text import extract_plain_text
    from resiliparse.parse.html import HTMLTree

    pages = sorted((shared_data / "html" / "article_extraction_benchmark" / "html").glob("*.html.gz"))
    wiki = shared_data / "text" / "wikitext-2" / "wiki.valid.tokens"
    if not pages or not wiki.is_file():
        pytest.skip("benchmark pages or WikiText-2 absent")
    negatives = []
    for page in pages:
        html = gzip.decompress(page.read_bytes()).decode("utf-8", "replace")
        text = extract_plain_text(HTMLTree.parse(html), main_content=False)
        negatives += [text[i: i + 1500] for i in range(0, len(text), 1500)]
    positives = [p.strip() for p in wiki.read_text().split("\n") if len(p.strip()) > 300]
    n = min(len(positives), len(negatives), 1000)
    texts, labels = positives[:n] + negatives[:n], np.array([1] * n + [0] * n)
    test = np.random.default_rng(0).random(2 * n) < 0.2
    model = train_logistic([t for t, h in zip(texts, test) if not h], labels[~test], steps=200)
    accuracy = ((model.scores([t for t, h in zip(texts, test) if h]) >= 0.5) == labels[test]).mean()
    assert accuracy >= 0.97  # measured 0.99
