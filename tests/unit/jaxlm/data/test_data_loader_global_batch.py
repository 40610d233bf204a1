"""jaxlm.data.global_batch.to_global on 8 fake CPU devices, in one process and in two real processes."""

import json
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from jaxlm.data.global_batch import to_global
from tests.helpers import REPO, free_port, subprocess_env



@pytest.fixture(scope="module")
def mesh():
    assert jax.device_count() == 8, "tests/conftest.py should give 8 CPU devices"
    return jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"))


def test_one_process_rows_split_over_batch_axes(mesh):
    batch = {"inputs": np.arange(8 * 5, dtype=np.int32).reshape(8, 5), "loss_mask": np.ones((8, 5), np.int32)}
    out = to_global(batch, mesh)
    assert set(out) == set(batch)
    for name, array in out.items():
        assert array.shape == (8, 5) and array.dtype == np.int32
        assert array.sharding.spec == PartitionSpec(("data", "fsdp"))
        np.testing.assert_array_equal(np.asarray(array), batch[name])
    # Each device holds the 2 rows of its (data, fsdp) block; the tensor axis holds copies.
    for shard in out["inputs"].addressable_shards:
        assert shard.data.shape == (2, 5)
        np.testing.assert_array_equal(np.asarray(shard.data), batch["inputs"][shard.index])


def test_bad_batch_or_axes_say_what_to_do(mesh):
    with pytest.raises(ValueError, match=r"make the per-process batch_rows a multiple of 4"):
        to_global({"inputs": np.zeros((6, 5), np.int32)}, mesh)
    with pytest.raises(ValueError, match=r"\['pipe'\] are not axes of the mesh"):
        to_global({"inputs": np.zeros((8, 5), np.int32)}, mesh, batch_axes=("data", "pipe"))


_WORKER = textwrap.dedent("""
    import json, sys
    import jax
    pid, port = int(sys.argv[1]), int(sys.argv[2])
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=pid)
    import numpy as np
    from jax.experimental import multihost_utils
    from jaxlm.data.global_batch import to_global
    mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"))
    local = {"inputs": np.arange(4 * 3, dtype=np.int32).reshape(4, 3) + 1000 * pid}
    array = to_global(local, mesh)["inputs"]
    full = multihost_utils.process_allgather(array, tiled=True)
    print(json.dumps({"shape": list(array.shape), "full": np.asarray(full).tolist()}), flush=True)
    from jaxlm.parallel import distributed
    distributed.exit_process(0)  # the interpreter's own teardown can hang here (see exit_process)
""")


def test_two_processes_make_one_global_batch():
    env = subprocess_env(devices=4)
    port = free_port()
    procs = [
        subprocess.Popen([sys.executable, "-c", _WORKER, str(pid), str(port)], env=env, cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for pid in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
        assert '{"shape"' in out, f"worker printed no result; stdout: {out[-1000:]!r} stderr: {err[-2000:]}"
    expected = np.concatenate([np.arange(12).reshape(4, 3) + 1000 * pid for pid in range(2)])
    for out, _ in outs:
        # The worker's one JSON line; shutdown messages may print after it.
        result = json.loads(next(l for l in reversed(out.splitlines()) if l.startswith('{"shape"')))
        assert result["shape"] == [8, 3]  # 4 rows per process, 2 processes
        np.testing.assert_array_equal(result["full"], expected)  # process order along the rows
