import random

import numpy as np
import pytest

from data_prep.document import Document
from data_prep.executors import LocalExecutor
from data_prep.stages import minhash
from data_prep.stages.dedup import cluster_size_histogram
from data_prep.stages.files import read_documents, write_documents
from data_prep.stages.runner import jsonl_input, run_stages

VOCAB = [f"word{i}" for i in range(5000)]


def random_text(rng, n=200):
    return " ".join(rng.choice(VOCAB) for _ in range(n))


def test_shingle_hashes_depend_only_on_normalised_words():
    texts = ["Alpha beta, gamma delta epsilon!", "x alpha BETA gamma -- delta epsilon", "", "short text",
             "caf\u00e9 \u201cna\u00efve\u201d r\u00e9sum\u00e9 co\u00f6perate d\u00e9j\u00e0"]
    hashes, offsets = minhash.shingle_hashes(texts, 5)
    assert offsets.tolist() == [0, 1, 3, 3, 4, 5]
    assert hashes[0] == hashes[2]  # same five words, other case, punctuation and position
    assert hashes[1] != hashes[2]
    (same,), _ = minhash.shingle_hashes(["Caf\u00e9, na\u00efve r\u00e9sum\u00e9 co\u00f6perate d\u00e9j\u00e0."], 5)
    assert same == hashes[4]
    _, offsets = minhash.shingle_hashes(texts, 5, short_docs=False)
    assert offsets.tolist() == [0, 1, 3, 3, 3, 4]


def test_exact_jaccard_of_shingle_sets():
    a = " ".join(VOCAB[:20])  # 16 shingles
    b = " ".join(VOCAB[:18] + ["other", "words"])  # shares the first 14
    assert minhash.exact_jaccard(a, b) == pytest.approx(14 / (16 + 16 - 14))


def test_signature_agreement_estimates_jaccard():
    rng = random.Random(0)
    a, b = minhash.permutations(1024, seed=3)
    estimates, truths = [], []
    for _ in range(20):
        words = random_text(rng, 300).split()
        edited = list(words)
        for i in rng.sample(range(300), 12):
            edited[i] = rng.choice(VOCAB)
        texts = [" ".join(words), " ".join(edited)]
        sig = minhash.signatures(*minhash.shingle_hashes(texts, 5), a, b)
        estimates.append((sig[0] == sig[1]).mean())
        truths.append(minhash.exact_jaccard(*texts))
    assert np.mean(truths) == pytest.approx(0.67, abs=0.05)
    assert np.mean(estimates) == pytest.approx(np.mean(truths), abs=0.01)  # 20 x 1024 draws: sd 0.0033
    assert np.abs(np.array(estimates) - truths).max() < 0.06  # each: sd ~0.015


def test_signatures_of_documents_without_shingles():
    a, b = minhash.permutations(16)
    sig = minhash.signatures(*minhash.shingle_hashes(["", "one two three four five", "!!!"], 5), a, b)
    assert (sig[0] == 0xFFFFFFFF).all() and (sig[2] == 0xFFFFFFFF).all() and (sig[1] < 0xFFFFFFFF).all()


def test_signatures_do_not_depend_on_batching():
    rng = random.Random(1)
    texts = [random_text(rng, rng.randint(1, 400)) for _ in range(50)]
    a, b = minhash.permutations(112)
    whole = minhash.signatures(*minhash.shingle_hashes(texts, 5), a, b, chunk=64)
    parts = np.concatenate([minhash.signatures(*minhash.shingle_hashes(texts[i:i + 7], 5), a, b)
                            for i in range(0, 50, 7)])
    assert np.array_equal(whole, parts)


def test_band_keys_match_only_on_equal_bands():
    sig = np.arange(2 * 112, dtype=np.uint32).reshape(2, 112)
    sig[1] = sig[0]
    sig[1, 9] += 1  # row 9 is in band 1
    keys = minhash.band_keys(sig, 14, 8)
    assert (keys[0] == keys[1]).tolist() == [True, False] + [True] * 12
    assert len(set(keys[0].tolist())) == 14  # bands are kept apart


def test_union_find_matches_breadth_first_search():
    rng = np.random.default_rng(0)
    n = 500
    u, v = rng.integers(0, n, 300), rng.integers(0, n, 300)
    labels = minhash.union_find(n, u, v)
    adjacent = {i: set() for i in range(n)}
    for x, y in zip(u.tolist(), v.tolist()):
        adjacent[x].add(y)
        adjacent[y].add(x)
    for start in range(n):
        seen, todo = {start}, [start]
        while todo:
            for y in adjacent[todo.pop()]:
                if y not in seen:
                    seen.add(y)
                    todo.append(y)
        assert labels[start] == min(seen)


def test_s_curve():
    assert minhash.candidate_probability(0.8, 14, 8) == pytest.approx(1 - (1 - 0.8**8) ** 14)
    assert minhash.s_curve_threshold(14, 8) == pytest.approx(0.7190, abs=1e-4)
    text = minhash.format_s_curve(14, 8)
    assert "14 bands x 8 rows = 112 hashes" in text and "0.80        0.9235" in text


def test_cluster_size_histogram():
    assert cluster_size_histogram(np.array([0, 0, 2, 3, 3, 3, 6])) == {2: 1, 3: 1}


def write_shards(tmp_path, docs, shards):
    paths = []
    for s in range(shards):
        paths.append(tmp_path / f"in-{s}.jsonl")
        write_documents(paths[-1], docs[s::shards])
    return paths


def dedup_output(tmp_path, docs, spec, shards, world_size):
    paths = write_shards(tmp_path / f"in{shards}", docs, shards)
    work = tmp_path / f"work-{spec.get('name', spec['type'])}-{shards}-{world_size}"
    result = run_stages([spec], jsonl_input(paths), world_size, work, LocalExecutor(1))
    return [d for p in result.outputs for d in read_documents(p)], result


def test_exact_dedup_keeps_smallest_id_whatever_the_layout(tmp_path):
    texts = ["Hello world, again.", "hello   WORLD again", "Something else.", "something else!", "unique"]
    docs = [Document(t, f"src/f:{9 - i}", "web") for i, t in enumerate(texts)]
    for shards, world in ((1, 1), (3, 3), (5, 2), (2, 4)):  # (2, 4): two tasks read nothing
        out, result = dedup_output(tmp_path, docs, {"type": "exact_dedup"}, shards, world)
        assert sorted(d.id for d in out) == ["src/f:5", "src/f:6", "src/f:8"]
        assert result.stats[0].removed == {"exact_dedup:exact_duplicate": 2}
        assert result.reports["exact_dedup"]["cluster_sizes"] == {"2": 2}


def test_near_dedup_removes_near_copies_only(tmp_path):
    rng = random.Random(2)
    base = [random_text(rng, 300) for _ in range(30)]
    docs = [Document(t, f"a/{i:03d}", "web") for i, t in enumerate(base)]
    for i in range(10):  # one word in 300 replaced: Jaccard ~0.97
        words = base[i].split()
        words[150] = "replaced"
        docs.append(Document(" ".join(words), f"b/{i:03d}", "web"))
    for i in range(10, 20):  # 60 of 300 replaced: Jaccard ~0.3
        words = base[i].split()
        for j in rng.sample(range(300), 60):
            words[j] = rng.choice(VOCAB)
        docs.append(Document(" ".join(words), f"c/{i:03d}", "web"))
    docs.append(Document(base[0], "0/first", "web"))  # exact copy with the smallest id of all
    out, result = dedup_output(tmp_path, docs, {"type": "minhash_dedup"}, 4, 2)
    ids = sorted(d.id for d in out)
    assert ids == ["0/first"] + [f"a/{i:03d}" for i in range(1, 30)] + [f"c/{i:03d}" for i in range(10, 20)]
    report = result.reports["minhash_dedup"]
    assert report["removed"] == 11 and report["cluster_sizes"] == {"2": 9, "3": 1}
    assert "threshold ~ 0.719" in report["s_curve"]


def test_near_dedup_verification_trims_the_soft_tail(tmp_path):
    rng = random.Random(3)
    base = [random_text(rng, 400) for _ in range(40)]
    docs = [Document(t, f"a/{i:03d}", "web") for i, t in enumerate(base)]
    for i, t in enumerate(base):  # 8 of 400 words replaced, spread out: Jaccard ~0.8
        words = t.split()
        for j in range(25, 400, 50):
            words[j] = "edited"
        docs.append(Document(" ".join(words), f"b/{i:03d}", "web"))
    plain, _ = dedup_output(tmp_path, docs, {"type": "minhash_dedup"}, 2, 2)
    strict, _ = dedup_output(tmp_path, docs, {"type": "minhash_dedup", "verify_threshold": 0.95,
                                              "name": "strict"}, 2, 3)  # the third task is empty
    assert len(plain) < 50  # most ~0.8 pairs are candidates (P = 0.92 each)
    assert len(strict) == 80  # none agrees on 95% of its hashes
