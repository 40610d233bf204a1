"""Config errors surface before any compute, naming the key and the fix."""

import jax
import pytest

from jaxlm.config import ConfigError, config_from_dict, load_config
from jaxlm.parallel.mesh import build_mesh, mesh_shape

BASE = {"data": {"sources": [{"path": "d"}]}}


def _cfg(extra=None, overrides=()):
    raw = {**BASE, **(extra or {})}
    return config_from_dict(raw, list(overrides))


def test_unknown_key_names_the_closest_valid_one():
    with pytest.raises(ConfigError, match=r"unknown config key 'optim\.learning_rat'; valid keys: .*\blr\b"):
        _cfg({"optim": {"learning_rat": 1e-3}})
    with pytest.raises(ConfigError, match=r"model\.n_layer'.*did you mean 'n_layers'"):
        _cfg(overrides=["model.n_layer=4"])


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"model\.d_model must be of type int"):
        _cfg({"model": {"d_model": "wide"}})
    with pytest.raises(ConfigError, match=r"optim\.lr must be of type float"):
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
        config_from_dict({})


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
