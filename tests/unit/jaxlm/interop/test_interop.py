"""Hugging Face interop: export and import parity with `transformers` (float32 logits within 1e-4),
the exported tokenizer, warm start checks and clear errors for checkpoints that do not fit."""

import json
import os
import stat

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sentencepiece as spm

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jaxlm.interop import InteropError, export_hf, load_hf, warm_start_params  # noqa: E402
from jaxlm.interop import tokenizer as hf_tokenizer  # noqa: E402
from jaxlm.model import Transformer  # noqa: E402
from flax import nnx  # noqa: E402
from tests.helpers import CORPUS, make_tokenizer_dir, random_params, run_python, tiny_config  # noqa: E402

TOKENS = np.random.default_rng(0).integers(0, 96, (2, 24))


def hf_logits(path):
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    with torch.no_grad():
        return model(torch.tensor(TOKENS)).logits.numpy(), model


@pytest.mark.parametrize("family,tie", [("llama", True), ("llama", False), ("gpt2", True), ("gpt2", False)])
def test_export_parity(tmp_path, family, tie):
    cfg = tiny_config(family, seq_len=32, model={"vocab_size": 96, "init_std": 0.2, "tie_embeddings": tie,
                                                 "rope_theta": 500.0, "norm_eps": 1e-6}).model
    model, _, params = random_params(cfg, seed=3)
    export_hf(cfg, params, str(tmp_path), eos_id=3)
    theirs, hf = hf_logits(str(tmp_path))
    assert type(hf).__name__ == {"llama": "LlamaForCausalLM", "gpt2": "GPT2LMHeadModel"}[family]
    ours = np.asarray(model(jnp.asarray(TOKENS)))
    assert np.abs(ours).max() > 1.0  # logits far from zero, so the comparison means something
    np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=0)


def _hf_model(family):
    torch.manual_seed(0)
    if family == "llama":
        conf = transformers.LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=80, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                        rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 1000.0},
                                        tie_word_embeddings=False, initializer_range=0.2)
        return transformers.LlamaForCausalLM(conf)
    conf = transformers.GPT2Config(vocab_size=96, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                   initializer_range=0.2, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)
    return transformers.GPT2LMHeadModel(conf)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_import_parity(tmp_path, family):
    hf = _hf_model(family).eval()
    hf.save_pretrained(str(tmp_path))
    with torch.no_grad():
        theirs = hf(torch.tensor(TOKENS)).logits.numpy()
    cfg, params = load_hf(str(tmp_path))
    assert cfg.family == family and cfg.vocab_size == 96 and cfg.n_layers == 2
    model = nnx.merge(nnx.graphdef(Transformer(cfg, rngs=nnx.Rngs(0))), jax.tree.map(jnp.asarray, params))
    np.testing.assert_allclose(np.asarray(model(jnp.asarray(TOKENS))), theirs, atol=1e-4, rtol=0)


def test_export_import_round_trip_is_exact(tmp_path):
    cfg = tiny_config("gpt2", seq_len=32, model={"vocab_size": 96, "init_std": 0.2}).model
    _, _, params = random_params(cfg)
    export_hf(cfg, params, str(tmp_path))
    cfg2, back = load_hf(str(tmp_path))
    flat = jax.tree_util.tree_leaves_with_path(params)
    back_flat = dict(jax.tree_util.tree_leaves_with_path(back))
    for path, value in flat:
        np.testing.assert_array_equal(np.asarray(back_flat[path]), np.asarray(value))


def test_exported_weights_get_the_mode_of_the_other_files(tmp_path):
    """safetensors writes 0600; an export others must read gets the umask's mode like config.json."""
    cfg = tiny_config("llama", seq_len=32, model={"vocab_size": 96, "init_std": 0.2}).model
    _, _, params = random_params(cfg)
    old = os.umask(0o022)
    try:
        export_hf(cfg, params, str(tmp_path))
    finally:
        os.umask(old)
    modes = {name: stat.S_IMODE(os.stat(tmp_path / name).st_mode) for name in ("config.json", "model.safetensors")}
    assert modes == {"config.json": 0o644, "model.safetensors": 0o644}


def test_export_without_the_hf_extra_says_what_to_install(tmp_path):
    """Before loading any model: one line naming the extra, no traceback."""
    block = "import sys; sys.modules['tokenizers'] = None; from jaxlm.export import main; sys.exit(main())"
    out = run_python("-c", block, "--workdir", str(tmp_path / "nothere"), "--out", str(tmp_path / "hf"), timeout=120)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip() == ('error: python -m jaxlm.export needs tokenizers, which is not installed: '
                                  'pip install "jaxlm[hf]"')


def test_tokenizer_export_matches_sentencepiece(tmp_path):
    tok_dir = make_tokenizer_dir(str(tmp_path / "tok"))
    texts = [CORPUS[i:i + 300] for i in range(0, len(CORPUS), 97)] + ["x  =  12345\n\n\tindent", "héllo ünïcode ✓"]
    report = hf_tokenizer.export(os.path.join(tok_dir, "tokenizer.model"), str(tmp_path / "hf"), check_texts=texts)
    assert report["mismatch_count"] == 0 and report["checked_texts"] == len(texts)
    auto = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    sp = spm.SentencePieceProcessor(model_file=os.path.join(tok_dir, "tokenizer.model"))
    for text in texts:
        ids = auto(text, add_special_tokens=False)["input_ids"]
        assert ids == sp.encode(text)
        assert auto.decode(ids) == text
    assert auto.eos_token_id == sp.eos_id()


def test_warm_start_checks_the_run_config(tmp_path):
    cfg = tiny_config("llama", seq_len=32, model={"vocab_size": 96, "init_std": 0.2}).model
    _, _, params = random_params(cfg)
    export_hf(cfg, params, str(tmp_path))
    got = warm_start_params(cfg, str(tmp_path))
    np.testing.assert_array_equal(np.asarray(got["embed"]), np.asarray(params["embed"]))
    other_vocab = tiny_config("llama", seq_len=32, model={"vocab_size": 128, "init_std": 0.2}).model
    with pytest.raises(InteropError, match=r"model.vocab_size=96 \(the run has 128\)"):
        warm_start_params(other_vocab, str(tmp_path))
    other_family = tiny_config("gpt2", seq_len=32, model={"vocab_size": 96, "init_std": 0.2}).model
    with pytest.raises(InteropError, match="model.family=llama"):
        warm_start_params(other_family, str(tmp_path))


def test_bad_checkpoints_give_clear_errors(tmp_path):
    with pytest.raises(InteropError, match="no config.json"):
        load_hf(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(InteropError, match="model_type 'bert' is not supported"):
        load_hf(str(tmp_path))
    cfg = tiny_config("llama", seq_len=32, model={"vocab_size": 96, "init_std": 0.2}).model
    _, _, params = random_params(cfg)
    export_hf(cfg, params, str(tmp_path))
    os.remove(tmp_path / "model.safetensors")
    (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(InteropError, match="never unpickles"):
        load_hf(str(tmp_path))
    with pytest.raises(InteropError, match="qk_norm"):
        export_hf(tiny_config("llama", seq_len=64, model={"vocab_size": 360, "init_std": 0.2, "qk_norm": True}).model,
                  params, str(tmp_path / "x"))
    gpt2 = tiny_config("gpt2", seq_len=32, model={"vocab_size": 96, "init_std": 0.2}).model
    with pytest.raises(InteropError, match="another model family"):
        export_hf(gpt2, params, str(tmp_path / "y"))
