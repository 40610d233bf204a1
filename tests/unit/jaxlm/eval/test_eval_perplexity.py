"""Perplexity and bits per byte: sliding windows score every token once with enough context, and the
numbers equal a direct computation with the model; the CLI on an exported model."""

import math
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.eval import perplexity
from jaxlm.eval.__main__ import main
from jaxlm.eval.errors import EvalError
from jaxlm.eval.loading import from_params
from jaxlm.eval.scoring import Scorer, rolling_windows
from jaxlm.export import export_run
from tests.helpers import CORPUS, make_tokenizer_dir, random_params, tiny_config, write_dataset


@pytest.fixture(scope="module")
def em(tmp_path_factory):
    tok_dir = make_tokenizer_dir(str(tmp_path_factory.mktemp("ppl") / "data"))
    config = tiny_config("gpt2", seq_len=64, dataset=tok_dir, model={"vocab_size": 360, "init_std": 0.2})
    model, _, params = random_params(config.model, seed=2)
    result = from_params(config, params)
    result.model = model
    return result


def direct_logprobs(model, ids):
    """log p(ids[t] | ids[:t]) for t >= 1 from one forward pass over ids[:-1] (it must fit the model)."""
    logp = jax.nn.log_softmax(model(jnp.asarray([ids[:-1]]))[0], -1)
    return np.asarray(logp[np.arange(len(ids) - 1), np.asarray(ids[1:])])


@pytest.mark.parametrize("n,window,stride", [(10, 8, 8), (50, 8, 3), (50, 8, 1), (9, 8, 4)])
def test_rolling_windows_score_each_token_once(n, window, stride):
    tokens = list(range(100, 100 + n))
    seen = []
    for ctx, cont in rolling_windows(tokens, window, stride):
        assert ctx and len(ctx) + len(cont) <= window + 1
        assert ctx + cont == tokens[tokens.index(ctx[0]):tokens.index(cont[-1]) + 1]  # contiguous
        if seen:  # after the first window every token sees at least window - stride tokens
            assert len(ctx) >= window - stride + 1
        seen.extend(cont)
    assert seen == tokens[1:]


def test_text_perplexity_equals_direct_computation(em):
    text = CORPUS[:60]
    ids = em.tokenizer.encode(text)
    assert 2 < len(ids) <= 65  # fits the window: one forward pass is the oracle
    expected = -direct_logprobs(em.model, ids).sum()
    got = perplexity.text_perplexity(em, text)
    assert got["tokens_scored"] == len(ids) - 1
    assert got["nll_nats"] == pytest.approx(expected, rel=1e-5)
    first = len(em.tokenizer.decode(ids[:1]).encode())
    assert got["bytes_scored"] == len(text.encode()) - first
    assert got["bits_per_byte"] == pytest.approx(expected / math.log(2) / (len(text.encode()) - first), rel=1e-5)
    assert got["perplexity"] == pytest.approx(math.exp(expected / (len(ids) - 1)), rel=1e-5)


def test_sliding_windows_on_long_text(em):
    ids = em.tokenizer.encode(CORPUS)[:150]
    scorer = Scorer(em.graphdef, em.params, 64)
    total, count = scorer.rolling(ids, stride=64)  # disjoint windows: sum of independent passes
    expected = sum(direct_logprobs(em.model, ids[max(0, end - 65):end])[-(end - start):].sum()
                   for start, end in [(1, 65), (65, 129), (129, 150)])
    assert count == 149 and total == pytest.approx(float(expected), rel=1e-5)
    overlapped, count = scorer.rolling(ids, stride=16)  # more context per token: a different, finite score
    assert count == 149 and math.isfinite(overlapped) and overlapped != pytest.approx(total)


def test_dataset_perplexity(em, tmp_path):
    tok = em.tokenizer
    texts = [CORPUS[:200], CORPUS[200:260], CORPUS[300:700]]
    docs = [np.array(tok.encode(t) + [tok.eos_id]) for t in texts]
    root = write_dataset(tmp_path / "ds", {"train": docs, "val": docs}, vocab_size=tok.vocab_size, shards=1)
    shutil.copy(tok.model_file, root + "/tokenizer.model")
    got = perplexity.dataset_perplexity(em, root, stride=16)
    scorer = Scorer(em.graphdef, em.params, 64)
    expected = [scorer.rolling(d.tolist(), 16) for d in docs]
    assert got["tokens_scored"] == sum(len(d) - 1 for d in docs) == sum(c for _, c in expected)
    assert got["nll_nats"] == pytest.approx(-sum(t for t, _ in expected), rel=1e-5)
    text_bytes = sum(len(tok.decode(d[1:-1]).encode()) for d in docs)  # first token is context; EOS has no bytes
    assert got["bytes_scored"] == text_bytes
    with pytest.raises(EvalError, match="has no 'test' split"):
        perplexity.dataset_perplexity(em, root, split="test")


def test_bad_input(em):
    with pytest.raises(EvalError, match="too short"):
        perplexity.text_perplexity(em, "a")
    with pytest.raises(EvalError, match="stride must be between 1 and the model's context"):
        perplexity.text_perplexity(em, CORPUS, stride=65)


def test_cli_on_an_exported_model(em, tmp_path, capsys):
    pytest.importorskip("safetensors")

    export_run(em.config, em.params, str(tmp_path / "hf"))
    text = tmp_path / "t.txt"
    text.write_text(CORPUS[:400])
    assert main(["--hf", str(tmp_path / "hf"), "--text", str(text)]) == 0
    out = capsys.readouterr().out
    expected = perplexity.text_perplexity(em, CORPUS[:400])
    assert f"{expected['bits_per_byte']:.6g}" in out
    assert main(["--hf", str(tmp_path / "hf"), "--text", str(tmp_path / "missing.txt")]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert main(["--hf", str(tmp_path / "hf"), "--tasks", "nope"]) == 2
    assert "unknown task 'nope'" in capsys.readouterr().err
