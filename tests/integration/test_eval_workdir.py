"""End to end on a real training run: train a few steps, then evaluate, sample and export the
workdir through the command-line entry points (slow: a training subprocess)."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlm.eval.__main__ import main as eval_main
from jaxlm.eval.loading import load_workdir
from jaxlm.export import main as export_main
from jaxlm.sample import main as sample_main
from tests.helpers import run_python, train_on_corpus


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, jax_cache):
    return train_on_corpus(tmp_path_factory.mktemp("run"), jax_cache)


@pytest.mark.slow
def test_eval_sample_export_on_a_trained_run(workdir, tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")

    assert eval_main(["--workdir", workdir, "--val", "--output", str(tmp_path / "val.json")]) == 0
    val = json.loads((tmp_path / "val.json").read_text())
    assert val["window"] == 32 and val["tokens_scored"] > 0 and 0 < val["bits_per_byte"] < 20

    spec = tmp_path / "mc.yaml"
    (tmp_path / "mc.jsonl").write_text(json.dumps({"query": "The quick brown fox", "choices": ["jumps.", "sits."], "gold": 0}) + "\n")
    spec.write_text(f"name: mc\nformat: mosaic_mc\npath: {tmp_path / 'mc.jsonl'}\nprompt: '{{context}}'\ntarget: ' {{choice}}'\n")
    assert eval_main(["--workdir", workdir, "--tasks", str(spec)]) == 0
    assert "mc " in capsys.readouterr().out

    assert sample_main(["--workdir", workdir, "--prompt", "def fib", "--max-new-tokens", "8", "--temperature", "0"]) == 0
    assert capsys.readouterr().out.startswith("--- (")

    out = str(tmp_path / "hf")
    assert export_main(["--workdir", workdir, "--out", out]) == 0
    em = load_workdir(workdir)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    tokens = np.asarray([em.tokenizer.encode("The quick brown fox jumps over")])
    ours = np.asarray(nnx.merge(em.graphdef, em.params)(jnp.asarray(tokens)))
    with torch.no_grad():
        theirs = hf(torch.tensor(tokens)).logits.numpy()
    np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_sample_prints_no_library_warnings(workdir):
    """Orbax's read-only notices (four absl warnings) used to precede every sample/eval/export."""

    out = run_python("-m", "jaxlm.sample", "--workdir", workdir, "--prompt", "def", "--max-new-tokens", "4",
                     "--temperature", "0", timeout=300)
    assert out.returncode == 0, out.stderr
    assert "WARNING" not in out.stderr and "absl" not in out.stderr, out.stderr
    assert out.stdout.startswith("--- (")


def test_missing_workdir_is_a_clear_error(tmp_path, capsys):
    assert eval_main(["--workdir", str(tmp_path / "nope"), "--val"]) == 2
    assert "does not exist" in capsys.readouterr().err
