"""Counterfactual data augmentation: gendered words swapped both ways with their case, the
grammar-dependent pronouns, names, both modes, and the real WinoBias swap list."""

import pytest

from data_prep.config import config_from_dict
from data_prep.document import Document
from data_prep.split import SplitStage
from data_prep.stages import StageStats, build_stage
from data_prep.stages.counterfactual import swap
from data_prep.stages.registry import StageConfigError


@pytest.fixture
def pairs(tmp_path):
    (tmp_path / "pairs.txt").write_text("he \t she\nhim\ther\nhimself\therself\nking\tqueen\nmr.\tmrs.\n# comment\n")
    (tmp_path / "names.txt").write_text("John\tMary\n")
    return tmp_path


def mapping(pairs):
    return build_stage({"type": "counterfactual", "pairs": str(pairs / "pairs.txt"),
                        "names": str(pairs / "names.txt")})._mapping


@pytest.mark.parametrize("text,expected", [
    ("He said she was the king.", "She said he was the queen."),
    ("SHE told him that HE hurt himself.", "HE told her that SHE hurt herself."),
    ("I saw her dog and gave her a bone.", "I saw his dog and gave him a bone."),
    ("The book is his, not hers.", "The book is hers, not his."),
    ("His car passed her.", "Her car passed him."),
    ("Mr. John met Mary.", "Mrs. Mary met John."),
    ("Theme and shell stay; he.", "Theme and shell stay; she."),
])
def test_swaps(pairs, text, expected):
    out, n = swap(text, mapping(pairs))
    assert out == expected
    assert n > 0


def test_modes_and_errors(pairs):
    docs = [Document("he ran", "s/f:1", "s"), Document("it ran", "s/f:2", "s")]
    two = build_stage({"type": "counterfactual", "pairs": str(pairs / "pairs.txt")})
    out = list(two(iter(docs), StageStats("cda")))
    assert [(d.id, d.text) for d in out] == [("s/f:1", "he ran"), ("s/f:1#cda", "she ran"), ("s/f:2", "it ran")]
    one = build_stage({"type": "counterfactual", "pairs": str(pairs / "pairs.txt"), "mode": "one_sided"})
    assert [d.text for d in one(iter(docs), StageStats("cda"))] == ["she ran", "it ran"]
    (pairs / "bad.txt").write_text("he she\n")
    with pytest.raises(StageConfigError, match="is not 'word<TAB>word'"):
        build_stage({"type": "counterfactual", "pairs": str(pairs / "bad.txt")})
    with pytest.raises(StageConfigError, match="mode must be one of"):
        build_stage({"type": "counterfactual", "pairs": str(pairs / "pairs.txt"), "mode": "both"})


def test_only_gendered_documents(pairs):
    docs = [Document("he ran", "s/f:1", "s"), Document("it ran", "s/f:2", "s"), Document("her dog", "s/f:3", "s")]
    stats = StageStats("cda")
    stage = build_stage({"type": "counterfactual", "pairs": str(pairs / "pairs.txt"), "keep_unswapped": False})
    assert [d.text for d in stage(iter(docs), stats)] == ["he ran", "she ran", "her dog", "his dog"]
    assert stats.removed == {"cda:no_gendered_word": 1} and stats.examples["cda:no_gendered_word"] == ["s/f:2"]
    assert stats.counters == {"documents_swapped": 2, "documents_unswapped": 1}
    one = build_stage({"type": "counterfactual", "pairs": str(pairs / "pairs.txt"), "mode": "one_sided",
                       "keep_unswapped": False})
    assert [d.text for d in one(iter(docs), StageStats("cda"))] == ["she ran", "his dog"]


def test_swapped_copy_goes_to_its_original_split(pairs):
    """Else a val paragraph's copy (an id of its own, hashed apart) would be trained on."""
    stage = build_stage({"type": "counterfactual", "pairs": str(pairs / "pairs.txt")})
    docs = [Document(f"he ran {i}", f"s/f:{i}", "s") for i in range(60)]
    out = list(stage(iter(docs), StageStats("cda")))
    split = SplitStage(config_from_dict({"output": "o", "sources": [{"name": "s", "type": "pydoc_topics"}],
                                         "split": {"val_fraction": 0.5}}))
    where = {d.id: d.meta["split"] for d in split(out, StageStats("split"))}
    assert len(where) == 120 and set(where.values()) == {"train", "val"}
    assert all(where[f"s/f:{i}#cda"] == where[f"s/f:{i}"] for i in range(60))


def test_winobias_list(shared_data):
    stage = build_stage({"type": "counterfactual", "pairs": str(shared_data / "bias/winobias/generalized_swaps.txt")})
    out, _ = swap("The actress thanked her brother, and he thanked his aunts.", stage._mapping)
    assert out == "The actor thanked his sister, and she thanked her uncles."
