"""`mesh: auto` and the checks that reject an impossible mesh before anything compiles."""

import jax
import pytest

from jaxlm.config import ConfigError, config_from_dict
from jaxlm.parallel.mesh import build_mesh
from jaxlm.plan import auto
from jaxlm.plan.memory import PRESETS

GiB = 2**30


def _config(model, mesh="auto", **train):
    return config_from_dict({
        "data": {"seq_len": 1024},
        "model": {**model, "dtype": "bfloat16"},
        "mesh": mesh,
        "train": {"global_batch": 64, **train},
    })


def test_small_model_gets_pure_data_parallelism():
    config = _config(PRESETS["gpt2-124m"])
    assert auto.choose_mesh(config, 8, 80 * GiB) == {"data": 8, "fsdp": 1, "tensor": 1, "pipe": 1}


def test_model_too_big_for_replicas_gets_fsdp_then_tensor():
    # llama-8b: 16 bytes/parameter of weights and Adam state (~120 GiB) fit no 80 GiB device whole.
    config = _config(PRESETS["llama-8b"], micro_batch=8)
    sizes = auto.choose_mesh(config, 8, 80 * GiB)
    assert sizes["data"] * sizes["fsdp"] * sizes["tensor"] == 8 and sizes["pipe"] == 1
    assert sizes["fsdp"] > 1 and sizes["tensor"] == 1  # sharding the state is enough; no tensor split needed


def test_impossible_fits_fail_with_the_reason():
    with pytest.raises(ConfigError, match=r"mesh: auto: does not fit: the best mesh .* GiB per device of 16 GiB"):
        auto.choose_mesh(_config(PRESETS["llama-70b"], micro_batch=8), 8, 16 * GiB)
    with pytest.raises(ConfigError, match=r"mesh: auto: no mesh of 8 devices can split a micro-batch of 3"):
        auto.choose_mesh(_config(PRESETS["gpt2-124m"], global_batch=3), 8, 80 * GiB)


def test_cpu_has_no_memory_limit_and_the_batch_decides():
    assert auto.device_memory(jax.devices()[0]) is None
    config = _config({"vocab_size": 96, "d_model": 32, "n_layers": 2, "n_heads": 4, "max_seq_len": 1024}, global_batch=4)
    mesh = build_mesh(auto.resolve_mesh(config))  # 4 sequences on 8 devices: data 4 x fsdp 2 cannot split them ...
    assert dict(mesh.shape) == {"data": 4, "fsdp": 1, "tensor": 2, "pipe": 1}  # ... so tensor takes the rest


def test_build_mesh_checks_explicit_meshes_before_compile():
    tiny = {"vocab_size": 96, "d_model": 32, "n_layers": 2, "n_heads": 4, "max_seq_len": 1024}
    with pytest.raises(ConfigError, match=r"train.micro_batch \(4\) must be divisible by the mesh's batch axes "
                                          r"data\*fsdp = 8"):
        build_mesh(_config(tiny, mesh={"data": 8}, global_batch=4))
    with pytest.raises(ConfigError, match=r"model.n_layers \(2\) must be a multiple of mesh.pipe"):
        build_mesh(_config(tiny, mesh={"data": 2, "pipe": 4}, global_batch=4))
    with pytest.raises(ConfigError, match=r"mesh data=3, fsdp=1, tensor=1, pipe=1 has 3 devices but 8"):
        build_mesh(_config(tiny, mesh={"data": 3}))
    with pytest.raises(ConfigError, match=r"mesh: auto must be resolved to sizes .* jaxlm.plan.auto.resolve_mesh"):
        build_mesh(_config(tiny))  # choosing sizes is the planner's: the mesh builder refuses `auto`


def test_resolving_auto_records_the_chosen_sizes():
    tiny = {"vocab_size": 96, "d_model": 32, "n_layers": 2, "n_heads": 4, "max_seq_len": 1024}
    config = _config(tiny, global_batch=16)
    resolved = auto.resolve_mesh(config)
    assert config.mesh.auto and not resolved.mesh.auto
    assert (resolved.mesh.data, resolved.mesh.fsdp, resolved.mesh.tensor, resolved.mesh.pipe) == (8, 1, 1, 1)
    assert auto.resolve_mesh(resolved) is resolved  # an explicit mesh is left alone
