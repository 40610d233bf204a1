"""Where metrics go and what MFU is measured against: the TensorBoard writer and the CPU peak probe."""

import importlib.util
import json
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp

from jaxlm.config import Config, ModelConfig, TrainConfig
from jaxlm.train import metrics
from tests.helpers import REPO, free_port, run_python, subprocess_env



def test_tensorboard_writer_leaves_torch_unloaded_and_writes_readable_events(tmp_path):
    # A fresh process: this test session may have imported torch or tensorboardX already.
    script = f"""
import json, sys
from jaxlm.train.metrics import tensorboard_writer
writer = tensorboard_writer({str(tmp_path / "tb")!r})
writer.add_scalar("loss", 2.5, 7)
writer.close()
torch_loaded = "torch" in sys.modules
torch_importable = False
if {importlib.util.find_spec("torch") is not None}:
    import torch  # noqa: F401  (a later import still loads it as usual)
    torch_importable = True
print(json.dumps({{"torch_loaded": torch_loaded, "torch_importable": torch_importable}}))
"""
    out = run_python("-c", script, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["torch_loaded"] is False
    assert result["torch_importable"] is (importlib.util.find_spec("torch") is not None)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    [scalar] = events.Scalars("loss")
    assert (scalar.step, scalar.value) == (7, 2.5)


def test_cpu_peak_probe_runs_the_layers_product():
    # The probe multiplies in the layers' operand dtype (model.matmul_dtype, else model.dtype).
    cases = [(ModelConfig(), "float32"), (ModelConfig(dtype="bfloat16"), "bfloat16"),
             (ModelConfig(matmul_dtype="bfloat16"), "bfloat16")]
    for model, operands in cases:
        flops, source = metrics.peak_flops(Config(model=model, train=TrainConfig(peak_flops=None)))
        assert source == f"cpu matmul probe ({operands} operands)"
        assert flops > 1e8  # any CPU of the last decade multiplies faster than 0.1 GFLOP/s
    flops, source = metrics.peak_flops(Config(train=TrainConfig(peak_flops=2e12)))
    assert source == "config" and flops == 2e12 * jax.device_count()


def test_probe_product_accumulates_and_returns_float32():
    x = jnp.full((4, 300), 1.0 + 2.0 ** -7, jnp.bfloat16)  # each sum, 304.7058..., has no bfloat16 form
    y = metrics.probe_matmul(x, x.T)
    assert y.dtype == jnp.float32
    assert float(y[0, 0]) == 300 * (1.0 + 2.0 ** -7) ** 2


_PEAK_WORKER = textwrap.dedent("""
    import json, sys
    import jax
    pid, port = int(sys.argv[1]), int(sys.argv[2])
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=pid)
    from jaxlm.config import Config, TrainConfig
    from jaxlm.parallel import distributed
    from jaxlm.train import metrics
    peak, source = metrics.peak_flops(Config(train=TrainConfig(peak_flops=None)))
    print(json.dumps({"peak": peak, "source": source}), flush=True)
    distributed.exit_process(0)  # the interpreter's own teardown can hang here (see exit_process)
""")


def test_two_processes_agree_on_one_cpu_peak():
    # Each process probes its own share of the host; MFU must be against one figure for the run,
    # the same on every process (the slowest process's probe x the process count).
    env = subprocess_env(devices=2)
    port = free_port()
    procs = [subprocess.Popen([sys.executable, "-c", _PEAK_WORKER, str(pid), str(port)], env=env, cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for pid in range(2)]
    outs = [p.communicate(timeout=180) for p in procs]
    results = []
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
        results.append(json.loads(next(line for line in reversed(out.splitlines()) if line.startswith('{"peak"'))))
    assert results[0] == results[1]  # bit for bit: one peak for the run
    assert results[0]["source"] == "cpu matmul probe (float32 operands), slowest of 2 processes x 2"
    assert results[0]["peak"] > 1e8
    # process 0 says what MFU is measured against; the other process stays quiet
    assert "mfu: against a measured matmul probe, not a datasheet peak" in outs[0][1]
    assert "mfu:" not in outs[1][1]
