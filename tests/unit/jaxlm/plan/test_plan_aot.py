"""`python -m jaxlm.plan compile`: TPU slices described by name, compiled on this CPU machine with
libtpu (the `tpu` extra), memory reported per chip beside the planner's estimate."""

import importlib.util
import os

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxlm.config import ConfigError, load_config
from jaxlm.parallel.mesh import build_mesh
from jaxlm.plan import PlanError, aot
from tests.helpers import REPO, run_python


def _needs_libtpu():
    if importlib.util.find_spec("libtpu") is None:
        if os.environ.get("CI"):
            pytest.fail("libtpu is missing; .ci/run installs it with jaxlm[tpu]")
        pytest.skip("libtpu is not installed (pip install \"jaxlm[tpu]\")")


@pytest.mark.parametrize("name, generation, chips, shape, per_host", [
    ("v4-8", "v4", 4, (2, 2, 1), (2, 2, 1)),
    ("v4-32", "v4", 16, (2, 2, 4), (2, 2, 1)),
    ("v5p-8", "v5p", 4, (2, 2, 1), (2, 2, 1)),
    ("v5p-64", "v5p", 32, (2, 4, 4), (2, 2, 1)),
    ("v5p-128", "v5p", 64, (4, 4, 4), (2, 2, 1)),
    ("v5p-1024", "v5p", 512, (8, 8, 8), (2, 2, 1)),
    ("v5e-16", "v5e", 16, (4, 4), (2, 2, 1)),
    ("v5litepod-8", "v5e", 8, (2, 4), (2, 4, 1)),
    ("v5e-256", "v5e", 256, (16, 16), (2, 2, 1)),
    ("v6e-8", "v6e", 8, (2, 4), (2, 4, 1)),
    ("v6e-1", "v6e", 1, (1, 1), (1, 1, 1)),
])
def test_accelerator_types_name_their_slice(name, generation, chips, shape, per_host):
    topo = aot.parse_topology(name)
    assert (topo.generation, topo.chips, topo.shape, topo.chips_per_host) == (generation, chips, shape, per_host)
    assert topo.topology_name == f"{generation}:{'x'.join(map(str, shape))}"


@pytest.mark.parametrize("name, message", [
    ("v7-8", "unknown TPU topology 'v7-8'"),
    ("a100-8", "unknown TPU topology"),
    ("v5p-12", "v5p slices count TensorCores (2 per chip) in powers of two, e.g. v5p-8"),
    ("v4-4", "v4 slices count TensorCores"),
    ("v5e-512", "v5e slices count chips in powers of two"),
])
def test_unknown_topologies_say_what_is_known(name, message):
    with pytest.raises(PlanError, match="known: v4-8") as e:
        aot.parse_topology(name)
    assert message in str(e.value)


def test_cli_rejects_a_bad_topology_before_anything_else():
    out = run_python("-m", "jaxlm.plan", "compile", "--config", "no/such.yaml", "--topology", "v9-8", timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("error: unknown TPU topology 'v9-8'")


def test_slice_devices_and_a_mesh_across_two_slices():
    _needs_libtpu()

    topo = aot.parse_topology("v5e-16", slices=2)
    devices = aot.topology_devices(topo)
    assert len(devices) == 32 and {d.device_kind for d in devices} == {"TPU v5 lite"}
    assert sorted({d.slice_index for d in devices}) == [0, 1]
    config = load_config(os.path.join(REPO, "configs/llama-1b.yaml"), ["mesh.data=2"])
    mesh = build_mesh(config, devices)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 16, "tensor": 1, "pipe": 1}
    # the data axis spans the slices (the data-centre network); fsdp stays within one slice's ICI
    for i in range(2):
        assert {d.slice_index for d in mesh.devices[i].flat} == {i}
    with pytest.raises(ConfigError, match=r"mesh.dcn_axis=data, so mesh.data \(1\) must be a multiple of 2"):
        build_mesh(load_config(os.path.join(REPO, "configs/llama-1b.yaml")), devices)
    with pytest.raises(PlanError, match="only a batch axis"):
        aot.compile_report(load_config(os.path.join(REPO, "configs/llama-1b.yaml"), ["mesh.dcn_axis=tensor"]), topo)


@pytest.fixture(scope="module")
def gpt2_on_v4_8():
    """`plan compile` of gpt2-124m for a v4-8: (exit status, stdout lines); several minutes."""
    _needs_libtpu()
    out = run_python("-m", "jaxlm.plan", "compile", "--config", "configs/gpt2-124m.yaml", "--topology", "v4-8",
                     timeout=3000)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.splitlines()


def _planner_off(lines) -> float:
    verdict = next(line for line in lines if line.startswith("fits: "))
    return float(verdict.rsplit("estimate is ", 1)[1].split("%")[0])


@pytest.mark.slow  # XLA's TPU compiler on a small CPU
def test_cli_compiles_gpt2_for_v4_8(gpt2_on_v4_8):
    lines = gpt2_on_v4_8
    assert lines[1].startswith("v4-8: 4 x TPU v4 (v4:2x2x1, 32 GiB each); mesh data=4,fsdp=1,tensor=1,pipe=1")
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in lines if line.startswith("| ")}
    assert {"init", "train step", "eval step", "planner (train step)"} <= set(rows)
    # the train state (parameters + Adam moments, float32) is exactly the planner's
    assert rows["train step"][0] == "1.39"
    assert 0.15 < float(rows["train step"][3]) / 32 < 0.4  # total vs HBM
    assert -30 < _planner_off(lines) < 0


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="the planner undershoots XLA's TPU temporaries (17% under for this recipe, "
                                       "docs/tpu.md); the 15% target is open")
def test_planner_is_within_15_percent_of_the_tpu_compiler(gpt2_on_v4_8):
    assert abs(_planner_off(gpt2_on_v4_8)) <= 15


@pytest.mark.slow
def test_a_recipe_that_does_not_fit_is_reported_as_such():
    _needs_libtpu()
    config = load_config(os.path.join(REPO, "configs/llama-8b.yaml"))
    report = aot.compile_report(config, aot.parse_topology("v5e-16"), programs=("train step",))
    assert not report.fits and report.train.peak > 16 * 2**30
    assert "DOES NOT FIT" in aot.format_report(report)


@pytest.mark.slow
def test_a_program_the_compiler_refuses_for_want_of_hbm_is_reported_with_its_need():
    _needs_libtpu()

    devices = aot.topology_devices(aot.parse_topology("v5e-4"))
    sharding = NamedSharding(Mesh(devices, ("data",)), PartitionSpec("data"))
    x = jax.ShapeDtypeStruct((4, 2**16), jnp.float32, sharding=sharding)
    def outer(x):  # a (2^16, 2^16) float32 temporary per chip: 16 GiB, kept whole by the barrier
        return jnp.sum(jax.lax.optimization_barrier(x[:, :, None] * x[:, None, :]), axis=2)

    outer = jax.jit(outer)
    program = aot._compile("outer", outer.lower(x), (x,))
    assert program.arguments == 2**16 * 4
    assert 16 * 2**30 <= program.temps <= 17 * 2**30 and program.peak > aot.get_device("v5e").hbm_bytes
