import dataclasses
import json

import pytest

from data_prep.document import Document
from data_prep.errors import StageFailed
from data_prep.executors import LocalExecutor
from data_prep.stages import STAGES, StageConfigError, StageStats, build_stage, build_stages, counted
from data_prep.stages.base import ERROR_CHECK_AFTER, Filter
from data_prep.stages.files import read_documents, write_documents
from data_prep.stages.runner import jsonl_input, run_stages
from tests.helpers import docs_of, run_stage


def test_every_stage_builds_from_its_type_name():
    needs = {"blocklist": None, "counterfactual": None, "toxicity_filter": None, "decontaminate": None, "mix": {"weights": {"web": 1.0}},
             "quality_classifier": None}
    for type_name in STAGES:
        if type_name in needs and needs[type_name] is None:
            continue
        stage = build_stage({"type": type_name, **(needs.get(type_name) or {})})
        assert stage.name == type_name


def test_unknown_type_names_the_closest():
    with pytest.raises(StageConfigError, match=r"unknown stage type 'gopher_qualty'; did you mean 'gopher_quality'"):
        build_stage({"type": "gopher_qualty"})
    with pytest.raises(StageConfigError, match="'type' key"):
        build_stage({"min_words": 3})


def test_unknown_option_names_the_closest():
    with pytest.raises(StageConfigError, match=r"has no option 'min_word'; did you mean 'min_words'"):
        build_stage({"type": "gopher_quality", "min_word": 3})


def test_wrong_types_and_values_fail_clearly():
    with pytest.raises(StageConfigError, match=r"option 'min_words' must be int, got '50'"):
        build_stage({"type": "gopher_quality", "min_words": "50"})
    with pytest.raises(StageConfigError, match="option 'ftfy' must be bool"):
        build_stage({"type": "unicode_fix", "ftfy": 1})
    with pytest.raises(StageConfigError, match="mode must be one of"):
        build_stage({"type": "emoji", "mode": "translate"})
    with pytest.raises(StageConfigError, match="word list '/nonexistent' not found"):
        build_stage({"type": "blocklist", "path": "/nonexistent"})
    with pytest.raises(StageConfigError, match="unknown language codes"):
        build_stage({"type": "language", "languages": ["english"]})
    assert build_stage({"type": "gopher_quality", "max_mean_word_length": 12}).max_mean_word_length == 12
    # JSON configs carry n-gram sizes as string keys
    stage = build_stage({"type": "gopher_repetition", "max_dup_ngram_chars": {"5": 0.1}})
    assert stage.max_dup_ngram_chars == {5: 0.1}


def test_names_sources_and_duplicates():
    a, b = build_stages([{"type": "emoji", "name": "emoji_web", "sources": ["web"]}, {"type": "emoji"}])
    assert (a.name, a.sources, b.sources) == ("emoji_web", frozenset({"web"}), None)
    with pytest.raises(StageConfigError, match="two stages are named 'emoji'"):
        build_stages([{"type": "emoji"}, {"type": "emoji"}])
    with pytest.raises(StageConfigError, match="per-document stages only"):
        build_stage({"type": "exact_dedup", "sources": ["web"]})


class Explodes(Filter):
    name = "explodes"

    def reject(self, doc):
        if "boom" in doc.text:
            raise ZeroDivisionError("odd document")
        return None


def test_a_failing_document_is_counted_not_fatal():
    stats = StageStats("explodes")
    out = list(Explodes()(docs_of("fine", "boom", "fine too"), stats))
    assert [d.text for d in out] == ["fine", "fine too"]
    assert stats.removed == {"explodes:error:ZeroDivisionError": 1}
    assert stats.examples == {"explodes:error:ZeroDivisionError": ["web/t.txt:1"]}


def test_a_stage_failing_on_many_documents_stops_while_streaming():
    """A bug that raises on every document must not silently delete the corpus (1 % allowed)."""

    few = ["boom" if i % 200 == 0 else "fine" for i in range(2000)]  # 0.5 %: dropped and counted
    out, stats = run_stage_obj(Explodes(), docs_of(*few))
    assert len(out) == 1990 and stats.removed == {"explodes:error:ZeroDivisionError": 10}
    stats = StageStats("explodes")
    seen = []
    with pytest.raises(StageFailed, match=r"stage 'explodes' raised on 1000 of 1000 documents .*odd document.*"
                                          r"More than 1% failing is a bug"):
        for doc in counted(Explodes(), docs_of(*["boom"] * 5000), stats):
            seen.append(doc)
    assert stats.docs_in == ERROR_CHECK_AFTER  # stopped at the first check, not after the whole stream


def test_a_stage_failing_on_many_documents_stops_the_run(tmp_path, monkeypatch):
    """Over all tasks at the end too (a small corpus never reaches the streaming check), and a
    rerun after the fix redoes the group instead of reusing its output without the documents."""

    stage_class = dataclasses.dataclass(type("ExplodesStage", (Explodes,), {}))  # stages are dataclasses
    monkeypatch.setitem(STAGES, "explodes", stage_class)
    texts = ["fine"] * 40 + ["boom"] * 2  # 2 of 42 (4.8 %) raise
    for i in range(2):
        write_documents(tmp_path / f"in-{i}.jsonl", docs_of(*texts[i::2]))
    read = jsonl_input([tmp_path / "in-0.jsonl", tmp_path / "in-1.jsonl"])
    with LocalExecutor(1) as ex, pytest.raises(StageFailed, match=r"raised on 2 of 42 documents"):
        run_stages([{"type": "explodes"}], read, 2, tmp_path / "work", ex)
    monkeypatch.setattr(stage_class, "reject", lambda self, doc: None)  # the fix
    with LocalExecutor(1) as ex:
        result = run_stages([{"type": "explodes"}], read, 2, tmp_path / "work", ex)
    assert result.stats[0].docs_out == 42 and result.stats[0].removed == {}


def run_stage_obj(stage, docs):
    stats = StageStats(stage.name)
    return list(counted(stage, docs, stats)), stats


def test_stage_stats_count_merge_and_json_round_trip():
    _, first = run_stage({"type": "gopher_quality"}, docs_of("too short", "caf\u00e9 also short"))
    _, second = run_stage({"type": "gopher_quality"}, docs_of("x"))
    assert first.docs_in == 2 and first.bytes_in == 9 + 16 and first.docs_out == 0
    merged = StageStats("gopher_quality").merge(first).merge(second)
    assert merged.docs_in == 3 and merged.bytes_in == 26
    assert merged.removed == {"gopher_quality:word_count": 3}
    assert merged.examples["gopher_quality:word_count"] == ["web/t.txt:0", "web/t.txt:1", "web/t.txt:0"]
    assert StageStats.from_json(json.loads(json.dumps(merged.to_json()))) == merged
    with pytest.raises(ValueError, match="cannot merge"):
        merged.merge(StageStats("other"))


def test_examples_are_capped():
    stats = StageStats("s")
    for i in range(20):
        stats.remove(Document("t", f"id{i}", "web"), "rule")
    assert stats.removed == {"s:rule": 20} and len(stats.examples["s:rule"]) == 5


def test_documents_round_trip_through_jsonl_even_with_lone_surrogates(tmp_path):
    docs = [Document("caf\u00e9 \U0001f600", "a:1", "web", {"k": [1, 2]}), Document("bad \udcff byte", "a:2", "web")]
    assert write_documents(tmp_path / "d.jsonl", docs) == 2
    (tmp_path / "d.jsonl").read_bytes().decode("utf-8")  # valid UTF-8 throughout
    assert list(read_documents(tmp_path / "d.jsonl")) == docs
