"""KV-cache generation: same tokens as full recomputation, batching with left padding, sampling
controls, stop conditions and the prompt truncation policy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.eval.errors import EvalError
from jaxlm.eval.generate import Generator, SamplingConfig, sample_logits
from jaxlm.eval.tokenizer import Tokenizer
from tests.helpers import make_tokenizer_dir, random_params, tiny_config


def naive_greedy(model, prompt, steps):
    """One unbatched full forward pass per new token: the oracle. The row is right-padded to a fixed
    length (one compilation); causal attention keeps the padding out of the logits read."""
    forward = jax.jit(lambda tokens: model(tokens))
    length = model.cfg.max_seq_len
    seq = list(prompt)
    for _ in range(steps):
        row = np.zeros((1, length), np.int32)
        row[0, :len(seq)] = seq
        seq.append(int(jnp.argmax(forward(row)[0, len(seq) - 1])))
    return seq[len(prompt):]


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_cached_greedy_equals_recomputation(family):
    cfg = tiny_config(family, seq_len=48, model={"vocab_size": 97, "init_std": 0.2}).model
    model, graphdef, params = random_params(cfg)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, 97, n).tolist() for n in (3, 21, 9)]  # different lengths: left padding
    gen = Generator(graphdef, params, 48, batch_size=4)
    cached = gen.generate_ids(prompts, SamplingConfig(max_new_tokens=16))
    full = gen.generate_ids(prompts, SamplingConfig(max_new_tokens=16), use_cache=False)
    for prompt, c, f in zip(prompts, cached, full):
        expected = naive_greedy(model, prompt, 16)
        assert c.tokens == expected
        assert f.tokens == expected
        assert c.finish_reason == "length" and c.prompt_tokens_dropped == 0


def test_cache_logits_equal_full_forward():
    """Prefill of a left-padded row, then one-token steps: logits equal the plain forward pass."""
    cfg = tiny_config("llama", seq_len=32, model={"vocab_size": 97, "init_std": 0.2}).model
    model, _, _ = random_params(cfg)
    tokens = np.random.default_rng(1).integers(0, 97, 12)
    expected = np.asarray(model(jnp.asarray(tokens[None])))[0]  # (12, V)
    pad = 4
    prompt = np.concatenate([np.zeros(pad, np.int32), tokens[:8]])[None]
    segments = (np.arange(12) >= pad).astype(np.int32)[None]
    positions = np.maximum(np.arange(12) - pad, 0)[None]
    cache = model.init_cache(1, 16)
    h, cache = model.hidden(jnp.asarray(prompt), jnp.asarray(positions), jnp.asarray(segments), cache=cache)
    w = model.unembedding()
    got = [np.asarray(h[0, pad:] @ w)]
    for t in range(8, 12):
        h, cache = model.hidden(jnp.asarray([[tokens[t]]]), jnp.asarray([[t]]), jnp.ones((1, 1), jnp.int32), cache=cache)
        got.append(np.asarray(h[0] @ w))
    np.testing.assert_allclose(np.concatenate(got), expected, atol=1e-5, rtol=1e-5)
    assert int(cache["index"][0]) == 16


def test_sample_logits_controls():
    logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]] * 4000))
    keys = jax.random.key(0)
    greedy = sample_logits(logits, keys, 0.0, 0, 1.0)
    assert set(np.asarray(greedy).tolist()) == {0}
    top2 = np.asarray(sample_logits(logits, keys, 1.0, 2, 1.0))
    assert set(top2.tolist()) == {0, 1}
    np.testing.assert_allclose(np.mean(top2 == 0), 0.5 / 0.8, atol=0.03)
    nucleus = np.asarray(sample_logits(logits, keys, 1.0, 0, 0.7))  # 0.5 + 0.3 reaches 0.7
    assert set(nucleus.tolist()) == {0, 1}
    full = np.asarray(sample_logits(logits, keys, 1.0, 0, 1.0))
    np.testing.assert_allclose(np.bincount(full, minlength=4) / 4000, [0.5, 0.3, 0.15, 0.05], atol=0.03)


def test_sampling_is_seeded_and_top_k_one_is_greedy():
    cfg = tiny_config("llama", seq_len=32, model={"vocab_size": 97, "init_std": 0.2}).model
    _, graphdef, params = random_params(cfg)
    gen = Generator(graphdef, params, 32, batch_size=2)
    prompts = [[5, 6, 7], [8]]
    greedy = gen.generate_ids(prompts, SamplingConfig(max_new_tokens=8))
    k1 = gen.generate_ids(prompts, SamplingConfig(max_new_tokens=8, temperature=1.0, top_k=1, seed=3))
    assert [g.tokens for g in greedy] == [g.tokens for g in k1]
    a = gen.generate_ids(prompts, SamplingConfig(max_new_tokens=8, temperature=2.0, seed=1))
    b = gen.generate_ids(prompts, SamplingConfig(max_new_tokens=8, temperature=2.0, seed=1))
    c = gen.generate_ids(prompts, SamplingConfig(max_new_tokens=8, temperature=2.0, seed=2))
    assert [g.tokens for g in a] == [g.tokens for g in b]
    assert [g.tokens for g in a] != [g.tokens for g in c]


def test_eos_stops_a_row_and_others_continue():
    cfg = tiny_config("llama", seq_len=32, model={"vocab_size": 97, "init_std": 0.2}).model
    model, graphdef, params = random_params(cfg)
    prompts = [[5, 6, 7], [40, 41]]
    free = Generator(graphdef, params, 32, batch_size=2).generate_ids(prompts, SamplingConfig(max_new_tokens=10))
    eos = free[0].tokens[3]  # make row 0's 4th token the end of sequence
    out = Generator(graphdef, params, 32, eos_id=eos, batch_size=2).generate_ids(prompts, SamplingConfig(max_new_tokens=10))
    assert out[0].finish_reason == "eos"
    assert out[0].tokens == free[0].tokens[:free[0].tokens.index(eos)]
    if eos not in free[1].tokens:
        assert out[1].tokens == free[1].tokens and out[1].finish_reason == "length"


def test_stop_strings_cut_text(tmp_path):
    tok = Tokenizer.from_dataset(make_tokenizer_dir(str(tmp_path / "tok")))
    cfg = tiny_config("llama", seq_len=64, model={"vocab_size": tok.vocab_size, "init_std": 0.2}).model
    _, graphdef, params = random_params(cfg)
    gen = Generator(graphdef, params, 64, tokenizer=tok, batch_size=2)
    free = gen.generate(["The quick brown", "def fib"], SamplingConfig(max_new_tokens=12))
    text = free[0].text
    assert len(text) > 4
    stop = text[2:4]  # a stop string inside the free-running text
    cut = gen.generate(["The quick brown", "def fib"], SamplingConfig(max_new_tokens=12, stop=(stop,)))
    assert cut[0].text == text[:text.find(stop)]
    assert cut[0].finish_reason == "stop"
    assert stop not in cut[1].text and free[1].text.startswith(cut[1].text)


def test_long_prompt_keeps_rightmost_tokens():
    cfg = tiny_config("gpt2", seq_len=32, model={"vocab_size": 97, "init_std": 0.2}).model
    model, graphdef, params = random_params(cfg)
    gen = Generator(graphdef, params, 32, batch_size=2)
    prompt = np.random.default_rng(2).integers(0, 97, 40).tolist()
    out = gen.generate_ids([prompt], SamplingConfig(max_new_tokens=8))[0]
    assert out.prompt_tokens_dropped == 40 - 24
    assert out.tokens == naive_greedy(model, prompt[-24:], 8)
    with pytest.raises(EvalError, match="leaves no room"):
        gen.generate_ids([prompt], SamplingConfig(max_new_tokens=32))
    with pytest.raises(EvalError, match="empty"):
        gen.generate_ids([[]], SamplingConfig(max_new_tokens=4))
    with pytest.raises(EvalError, match="top_p"):
        gen.generate_ids([prompt], SamplingConfig(top_p=0.0))
