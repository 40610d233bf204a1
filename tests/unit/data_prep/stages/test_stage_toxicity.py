"""The toxicity filter stage: a classifier trained by jaxlm.eval.toxicity removes toxic documents,
scores every document, and counts per group what it saw and removed."""

import numpy as np
import pytest

from data_prep.document import Document
from data_prep.stages import StageStats, build_stage
from data_prep.stages.registry import StageConfigError
from jaxlm.eval.toxicity import NgramClassifier

BAD = ["you are a worthless idiot", "idiots like you are worthless", "what a worthless idiot"]
GOOD = ["you are a kind friend", "friends like you are kind", "what a kind friend"]


def test_filter_removes_toxic_documents_and_counts_groups(tmp_path):
    path = str(tmp_path / "tox.npz")
    NgramClassifier.train(BAD + GOOD, [1, 1, 1, 0, 0, 0], bits=12, steps=200).save(path)
    stage = build_stage({"type": "toxicity_filter", "model": path,
                         "groups": {"women": ["woman", "women"], "men": ["man"]}})
    docs = [Document("the woman is a worthless idiot", "s/f:1", "s"), Document("a kind woman", "s/f:2", "s"),
            Document("a kind friend and a Man", "s/f:3", "s")]
    stats = StageStats("toxicity_filter")
    kept = list(stage(iter(docs), stats))
    assert [d.id for d in kept] == ["s/f:2", "s/f:3"]
    assert stats.removed == {"toxicity_filter:toxic": 1}
    assert stats.counters == {"group:women:seen": 2, "group:women:removed": 1, "group:men:seen": 1,
                              "group:men:removed": 0}
    scores = NgramClassifier.load(path).score([d.text for d in docs])
    assert [d.meta["toxicity"] for d in kept] == [round(float(s), 4) for s in scores[1:]]
    assert scores[0] >= 0.5 > max(scores[1:])


def test_bad_model_files_fail_at_build(tmp_path):
    with pytest.raises(StageConfigError, match="not found"):
        build_stage({"type": "toxicity_filter", "model": str(tmp_path / "none.npz")})
    np.savez(tmp_path / "other.npz", weights=np.zeros(4), bias=0.0, kind=np.array("quality"))
    with pytest.raises(StageConfigError, match="not a toxicity classifier"):
        build_stage({"type": "toxicity_filter", "model": str(tmp_path / "other.npz")})
