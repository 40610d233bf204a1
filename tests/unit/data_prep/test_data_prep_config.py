"""data_prep config: typed loading, overrides, and one clear message per user error."""

import os

import pytest
import yaml

from data_prep.__main__ import main
from data_prep.config import ConfigError, config_from_dict, load_config
from tests.helpers import REPO, run_python


def base():
    return {"output": "out", "sources": [{"name": "a", "type": "txt", "paths": ["x.txt"]},
                                         {"name": "b", "type": "pydoc_topics", "weight": 0.5}]}


def test_defaults_and_types():
    cfg = config_from_dict(base())
    assert cfg.tokenizer.model_type == "bpe" and cfg.tokenizer.vocab_size == 8192
    assert (cfg.tokenizer.pad_id, cfg.tokenizer.unk_id, cfg.tokenizer.bos_id, cfg.tokenizer.eos_id) == (0, 1, 2, 3)
    assert cfg.sources[1].weight == 0.5 and cfg.sources[0].split is None
    assert cfg.split_for(cfg.sources[0]) is cfg.split
    assert isinstance(config_from_dict({**base(), "shards": {"target_mb": 2}}).shards.target_mb, float)
    assert config_from_dict(base(), ["shards.target_mb=1e-3"]).shards.target_mb == 0.001  # YAML 1.1 says str


def test_overrides_by_path_index_and_name():
    cfg = config_from_dict(base(), ["tokenizer.vocab_size=512", "sources.b.weight=2", "sources.0.text_field=body",
                                    "split.val_fraction=0.2", "sources.a.split.by=position", "tokenizer.user_defined_symbols=[<x>, <y>]"])
    assert cfg.tokenizer.vocab_size == 512
    assert cfg.sources[1].weight == 2.0 and cfg.sources[0].text_field == "body"
    assert cfg.split.val_fraction == 0.2
    assert cfg.sources[0].split.by == "position" and cfg.sources[0].split.val_fraction == 0.01
    assert cfg.tokenizer.user_defined_symbols == ["<x>", "<y>"]


@pytest.mark.parametrize("raw, overrides, message", [
    ({**base(), "tokenizr": {}}, [], "unknown config key 'tokenizr'; did you mean 'tokenizer'?"),
    (base(), ["tokenizer.vocab_sise=3"], "unknown config key 'tokenizer.vocab_sise'; did you mean 'tokenizer.vocab_size'?"),
    (base(), ["sources.a.wieght=3"], "unknown config key 'sources.a.wieght'; did you mean 'sources.a.weight'?"),
    (base(), ["sources.c.weight=3"], "sources has no entry 'c'; use an index 0..1 or a name: a, b"),
    (base(), ["tokenizer.vocab_size=big"], "'tokenizer.vocab_size' must be an int, got str 'big'"),
    (base(), ["tokenizer.byte_fallback=1"], "'tokenizer.byte_fallback' must be a bool, got int 1"),
    (base(), ["tokenizer.model_type=bpee"], "'tokenizer.model_type' must be one of 'bpe' | 'unigram' | 'char', got 'bpee'; did you mean 'bpe'?"),
    (base(), ["seed"], "override 'seed' is not of the form key.path=value"),
    (base(), ["seed.x=1"], "'seed' has no sub-keys"),
    ({"sources": []}, [], "'output' is required but missing"),
    ({**base(), "sources": [{"name": "a", "type": "txt"}]}, [], "sources.a.paths is empty"),
    ({**base(), "sources": [{"name": "a", "type": "pydoc_topics"}, {"name": "a", "type": "pydoc_topics"}]}, [], "must be unique"),
    (base(), ["split.val_fraction=1.5"], "split.val_fraction must be in [0, 1)"),
    (base(), ["tokenizer.eos_id=2"], "tokenizer special ids must differ"),
    (base(), ["tokenizer.vocab_size=null"], "tokenizer.vocab_size is required for a bpe model"),
    (base(), ["tokenizer.path=missing.model"], "tokenizer.path 'missing.model' does not exist"),
    (base(), ["sources.b.max_files=3"], "max_files / max_bytes apply to python_stdlib sources only"),
])
def test_errors_name_the_key(raw, overrides, message):
    with pytest.raises(ConfigError) as e:
        config_from_dict(raw, overrides)
    assert message in str(e.value)


def test_yaml_file_and_cli_error_is_one_line(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("output: o\nsources:\n  - {name: a, type: jsonl, paths: [nothere.jsonl]}\n")
    assert load_config(str(path)).sources[0].type == "jsonl"
    assert main(["--config", str(path), f"output={tmp_path / 'o'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("data_prep: error: source 'a': file 'nothere.jsonl' does not exist") and err.count("\n") == 1
    assert not (tmp_path / "o" / "manifest.json").exists()
    path.write_text("output: [unclosed\n")
    assert main(["--config", str(path)]) == 2
    assert "is not valid YAML" in capsys.readouterr().err
    assert main(["--config", str(tmp_path / "none.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_module_cli_exits_2_without_traceback(tmp_path):
    proc = run_python("-m", "data_prep", "--config", "data_prep/configs/demo.yaml", "tokenizer.vocab=3")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip() == "data_prep: error: unknown config key 'tokenizer.vocab'; did you mean 'tokenizer.vocab_size'?"


def test_shipped_configs_load():
    for name in ("demo", "shakespeare_char"):
        cfg = load_config(os.path.join(REPO, "data_prep", "configs", f"{name}.yaml"))
        assert cfg.output == f"data/{name}"


def test_wikitext2_augmented_configs_differ_from_the_plain_one_only_by_the_augmentation(shared_data, monkeypatch):
    """The CDA experiment (benchmarks/cda_experiment.py) compares corpora that differ in nothing else:
    the same sources, split and seed, and the plain corpus' tokenizer."""
    monkeypatch.chdir(REPO)  # paths relative to the repository root, like ../shared/data/...
    plain = load_config(os.path.join("data_prep", "configs", "wikitext2.yaml")).to_dict()
    assert plain["stages"] == [] and plain["tokenizer"]["path"] is None
    same = lambda cfg: {k: v for k, v in cfg.items() if k not in ("output", "stages", "tokenizer")}  # noqa: E731
    for name, keep in (("wikitext2_cda", True), ("wikitext2_debias", False)):
        path = os.path.join("data_prep", "configs", f"{name}.yaml")
        with open(path, encoding="utf-8") as f:
            assert yaml.safe_load(f)["tokenizer"] == {"path": os.path.join(plain["output"], "tokenizer.model")}
        # validated (its stage built from the real swap list) with a tokenizer that exists before data/ does
        other = load_config(path, [f"tokenizer.path={shared_data / 'tokenizers/sentencepiece/test_model.model'}"])
        other = other.to_dict()
        assert same(other) == same(plain)
        [stage] = other["stages"]
        assert stage["type"] == "counterfactual" and stage["mode"] == "two_sided"
        assert stage.get("keep_unswapped", True) is keep
        assert stage["pairs"] == "../shared/data/bias/winobias/generalized_swaps.txt"


def test_web_example_config_builds_its_stages(shared_data, monkeypatch):
    monkeypatch.chdir(REPO)  # its paths are relative to the repository root, like ../shared/data/...
    cfg = load_config(os.path.join("data_prep", "configs", "web_example.yaml"))
    assert [s.type for s in cfg.sources] == ["html", "txt", "python_stdlib"]
    assert [s["type"] for s in cfg.stages][-1] == "mix"
    assert cfg.stages[-1]["weights"] == {"web": 0.6, "wiki": 0.3, "code": 0.1}  # from the sources' weights
