"""Config errors surface before any compute, naming the key and the fix."""

import jax
import pytest

import yaml

from jaxlm.config import ConfigError, config_from_dict, dump_yaml, load_config, require_data
from jaxlm.parallel.mesh import build_mesh, mesh_shape

BASE = {}


def _cfg(extra=None, overrides=()):
    raw = {**BASE, **(extra or {})}
    return config_from_dict(raw, list(overrides))


def test_unknown_key_names_the_closest_valid_one():
    with pytest.raises(ConfigError, match=r"unknown config key 'optim\.learning_rat'; valid keys: .*\blr\b"):
        _cfg({"optim": {"learning_rat": 1e-3}})
    with pytest.raises(ConfigError, match=r"model\.n_layer'.*did you mean 'model\.n_layers'"):
        _cfg(overrides=["model.n_layer=4"])


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"'model\.d_model' must be an int, got str 'wide'"):
        _cfg({"model": {"d_model": "wide"}})
    with pytest.raises(ConfigError, match=r"'optim\.lr' must be a float"):
        _cfg(overrides=["optim.lr=fast"])


def test_overrides_parse_yaml_values():
    c = _cfg(overrides=["optim.lr=3e-4", "mesh.data=2", "model.tie_embeddings=false",
                        "data.sources=[{path: a, weight: 2}, {path: b}]"])
    assert c.optim.lr == 3e-4 and c.mesh.data == 2 and c.model.tie_embeddings is False
    assert [s.path for s in c.data.sources] == ["a", "b"] and c.data.sources[0].weight == 2.0


def test_choices_and_cross_field_checks():
    with pytest.raises(ConfigError, match="model.family"):
        _cfg({"model": {"family": "bert"}})
    with pytest.raises(ConfigError, match="multiple of train.micro_batch"):
        _cfg({"train": {"global_batch": 10, "micro_batch": 4}})
    with pytest.raises(ConfigError, match="data.sources is empty.*data_prep"):
        require_data(config_from_dict({}))  # the trainer's check; eval, export, restore need no data


def test_mesh_product_must_equal_device_count():
    with pytest.raises(ConfigError, match=r"has 12 devices but 8 are present"):
        mesh_shape(_cfg({"mesh": {"data": 3, "tensor": 4}}).mesh, 8)
    assert mesh_shape(_cfg({"mesh": {"tensor": 2}}).mesh, 8) == {"data": 4, "fsdp": 1, "tensor": 2, "pipe": 1}
    mesh = build_mesh(_cfg({"mesh": {"data": 2, "fsdp": 2, "tensor": 2}}).mesh, jax.devices()[:8])
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2, "pipe": 1}


def test_missing_config_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(bad))


def test_an_override_typo_names_the_override_and_the_full_dotted_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim: {lr: 3.0e-4}\n")
    for override, key in [("lr=1e-3", "optim.lr"), ("optim.lrr=1e-3", "optim.lr"), ("model.lr=1", "optim.lr"),
                          ("spikes.grad_zz=3", "spikes.grad_z")]:
        with pytest.raises(ConfigError) as e:
            load_config(str(path), [override])
        name = override.split("=")[0]
        assert str(e.value) == f"override {override!r}: unknown config key {name!r}; did you mean {key!r}?"
    with pytest.raises(ConfigError, match=r"^override 'optim.lr=fast': 'optim.lr' must be a float, got str 'fast'$"):
        load_config(str(path), ["optim.lr=fast"])
    with pytest.raises(ConfigError, match=r"^override 'data.sources=\[\{path: 3\}\]': 'data.sources.0.path' must be a str"):
        load_config(str(path), ["data.sources=[{path: 3}]"])
    with pytest.raises(ConfigError, match=r"did you mean 'log.wandb.enabled' or 'diloco.enabled' or 'checkpoint.enabled'"):
        load_config(str(path), ["enabled=true"])


def test_a_file_typo_names_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim: {lrr: 3.0e-4}\n")
    with pytest.raises(ConfigError, match=rf"^{path}: unknown config key 'optim.lrr'; did you mean 'optim.lr'\?$"):
        load_config(str(path), ["train.steps=5"])
    path.write_text("train: {global_batch: 10}\n")  # a check across keys: the file and the overrides
    with pytest.raises(ConfigError, match=rf"^{path} with train.micro_batch=4: train.global_batch \(10\) must be"):
        load_config(str(path), ["train.micro_batch=4"])


def test_derived_defaults_are_resolved_once_and_written_out(tmp_path):
    c = _cfg({"model": {"family": "llama", "d_model": 96, "n_heads": 6}, "train": {"global_batch": 12}})
    assert (c.model.head_dim, c.model.n_kv_heads, c.model.d_ff, c.model.matmul_dtype) == (16, 6, 256, "float32")
    assert c.train.micro_batch == 12
    g = _cfg({"model": {"family": "gpt2", "d_model": 64, "n_kv_heads": 2, "dtype": "bfloat16"}})
    assert (g.model.head_dim, g.model.n_kv_heads, g.model.d_ff, g.model.matmul_dtype) == (16, 2, 256, "bfloat16")
    # explicit values win; the overrides are applied before the defaults are derived
    e = _cfg({"model": {"head_dim": 8, "d_ff": 100}}, ["train.micro_batch=2", "model.family=gpt2"])
    assert (e.model.head_dim, e.model.d_ff, e.train.micro_batch) == (8, 100, 2)
    written = yaml.safe_load(dump_yaml(c))  # what the workdir's config.yaml holds
    assert written["model"]["head_dim"] == 16 and written["model"]["n_kv_heads"] == 6
    assert written["model"]["d_ff"] == 256 and written["train"]["micro_batch"] == 12
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_yaml(c))
    assert load_config(str(path)) == c
    with pytest.raises(ConfigError, match=r"model.d_model \(10\) must be divisible by model.n_heads \(4\)"):
        _cfg({"model": {"d_model": 10}})


def test_configs_without_data_build():
    c = config_from_dict({"model": {"d_model": 32}})  # eval, export and restore build configs like this
    assert c.data.sources == []
    assert config_from_dict(yaml.safe_load("model:\ntrain: {steps: 3}\n")).train.steps == 3  # an empty section
    with pytest.raises(ConfigError, match=r"data.sources\[0\].weight must be positive"):
        _cfg({"data": {"sources": [{"path": "d", "weight": 0}]}})
