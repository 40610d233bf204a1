"""Output steering: the banned-string automaton against a direct substring search, every spelling
of a banned string caught, and sampled generations (many seeds) that never contain a banned string
while unsteered ones do; logit bias and re-ranking."""

import random

import numpy as np
import pytest

from jaxlm.eval.generate import Generator, SamplingConfig
from jaxlm.eval.steering import Steering, automaton, ban_tables, rerank, token_bytes
from jaxlm.eval.tokenizer import Tokenizer
from tests.helpers import make_tokenizer_dir, random_params, tiny_config


def test_automaton_finds_exactly_the_substrings():
    rng = random.Random(0)
    for _ in range(200):
        patterns = [bytes(rng.choice(b"abc") for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(1, 3))]
        text = bytes(rng.choice(b"abcd") for _ in range(rng.randint(0, 12)))
        delta, ends = automaton(patterns)
        state, found = 0, []
        for i, byte in enumerate(text):
            state = delta[state, byte]
            found.append(bool(ends[state]))
        direct = [any(text[:i + 1].endswith(p) for p in patterns) for i in range(len(text))]
        assert found == direct, (patterns, text)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    tok_dir = make_tokenizer_dir(str(tmp_path_factory.mktemp("steer") / "data"))
    config = tiny_config("llama", seq_len=64, dataset=tok_dir, model={"vocab_size": 384, "init_std": 0.2})
    _, graphdef, params = random_params(config.model, seed=5)
    return graphdef, params, Tokenizer(f"{tok_dir}/tokenizer.model")


def spellings(tok, text):
    """Every way to write `text` as a sequence of the vocabulary's pieces' surfaces."""
    surfaces = token_bytes(tok.sp, ignore_case=False)
    target = text.encode()
    out = []

    def walk(pos, ids):
        if pos == len(target):
            out.append(ids)
            return
        for i, s in enumerate(surfaces):
            if s and target.startswith(s, pos):
                walk(pos + len(s), ids + [i])
    walk(0, [])
    return out


def test_every_spelling_of_a_banned_string_is_caught(model):
    _, _, tok = model
    nxt, hit = ban_tables(tok.sp, Steering(banned=("the",)))
    ways = spellings(tok, " the")
    assert len(ways) > 3  # one piece, several pieces, byte pieces...
    for ids in ways:
        state, hits = 0, []
        for t in ids:
            hits.append(bool(hit[state, t]))
            state = nxt[state, t]
        assert hits[-1] and not any(hits[:-1]), ids


def test_tables_agree_with_a_search_in_the_decoded_bytes(model):
    _, _, tok = model
    banned = ("he ", "uck", "q")
    nxt, hit = ban_tables(tok.sp, Steering(banned=banned, ignore_case=False))
    surfaces = token_bytes(tok.sp, ignore_case=False)
    rng = np.random.default_rng(0)
    for _ in range(300):
        ids = rng.integers(0, tok.vocab_size, size=12)
        state, first = 0, None
        for k, t in enumerate(ids):
            if hit[state, t] and first is None:
                first = k
            state = nxt[state, t]
        text = b"".join(surfaces[t] for t in ids)
        prefix_hits = [any(p.encode() in b"".join(surfaces[t] for t in ids[:k + 1]) for p in banned) for k in range(12)]
        assert first == (prefix_hits.index(True) if True in prefix_hits else None), (ids, text)


def test_sampled_generations_never_contain_a_banned_string(model):
    graphdef, params, tok = model
    cfg = SamplingConfig(max_new_tokens=24, temperature=1.5, seed=0)
    prompts = ["The quick brown fox", "A man is sitting", "Janet sells", "def fib(n):"] * 4
    free = Generator(graphdef, params, 64, tokenizer=tok, batch_size=16)
    texts = [g.text.lower() for s in range(4) for g in free.generate(prompts, SamplingConfig(**{**cfg.__dict__, "seed": s}))]
    # ban the most frequent 2- and 3-character strings (letters and spaces) of the free samples:
    # they surely occur, and such text reads the same in the raw bytes as in the decoded string
    counts = {}
    for t in texts:
        for n in (2, 3):
            for i in range(len(t) - n + 1):
                if all(c.isascii() and (c.isalpha() or c == " ") for c in t[i:i + n]):
                    counts[t[i:i + n]] = counts.get(t[i:i + n], 0) + 1
    banned = tuple(sorted(counts, key=lambda k: -counts[k])[:8]) + ("The",)
    assert sum(any(b.lower() in t for b in banned) for t in texts) > len(texts) // 4
    steered = Generator(graphdef, params, 64, tokenizer=tok, batch_size=16, steering=Steering(banned=banned))
    for seed in range(8):
        for g in steered.generate(prompts, SamplingConfig(**{**cfg.__dict__, "seed": seed})):
            assert not any(b.lower() in g.text.lower() for b in banned), (banned, g.text)
            raw = b"".join(token_bytes(tok.sp, ignore_case=True)[t] for t in g.tokens)
            assert not any(b.lower().encode() in raw for b in banned)


def test_word_bias_and_rerank(model):
    graphdef, params, tok = model
    word = next(p.replace("\u2581", "") for p in map(tok.sp.id_to_piece, range(tok.vocab_size))
                if p.startswith("\u2581") and p[1:].isalpha() and len(p) >= 4)
    ids = [i for i in range(tok.vocab_size) if tok.sp.id_to_piece(i).replace("\u2581", "").lower() == word.lower()]
    assert ids
    greedy = SamplingConfig(max_new_tokens=6, temperature=0.0)
    pushed = Generator(graphdef, params, 64, tokenizer=tok, steering=Steering(word_bias=((word, 1e4),)))
    out = pushed.generate_ids([tok.encode("The quick")], greedy)[0]
    assert out.tokens and all(t in ids for t in out.tokens)

    class Length:
        def score(self, texts):
            return np.array([len(t) for t in texts], float)

    assert rerank([["aaa", "a", "aa"], ["bb", "bbbb"]], Length()) == [1, 0]
