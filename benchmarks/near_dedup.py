"""Near-duplicate detection: data_prep's MinHash LSH against datasketch's, side by side.

Corpus (real text from ../shared/data): WikiText-2 paragraphs, Tiny Shakespeare and Penn
Treebank chunks, thousands of distinct documents. For a few hundred of them a copy is edited
(word replacements, insertions, deletions, or only case/punctuation for 1.0) until the exact
Jaccard similarity of the two 5-gram shingle sets reaches a target level. Gold: every pair
whose exact Jaccard is >= the threshold, found exactly through an inverted shingle index
(no sampling). Predicted: every pair inside a predicted cluster. Both systems use the same
normalisation, 5-grams, 112 hashes as 14 bands x 8 rows; the threshold is that S-curve's,
(1/14)^(1/8) = 0.719. Throughput: one process each, raw text to clusters.

    python benchmarks/near_dedup.py [--data DIR] [--per-level 60]
"""

from __future__ import annotations

import argparse
import collections
import itertools
import os
import pathlib
import random
import re
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from data_prep.stages import minhash  # noqa: E402
from data_prep.stages.text import normalize_for_dedup  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data"
BANDS, ROWS, NGRAM = 14, 8, 5
THRESHOLD = minhash.s_curve_threshold(BANDS, ROWS)
LEVELS = (0.3, 0.5, 0.6, 0.8, 0.85, 0.9, 0.95, 1.0)


# ---- corpus ----------------------------------------------------------------------------------
def load_corpus(data: pathlib.Path) -> list[str]:
    docs = []
    for name in ("wiki.valid.tokens", "wiki.test.tokens"):
        path = data / "text" / "wikitext-2" / name
        if path.is_file():
            docs += [p.strip() for p in path.read_text().split("\n")
                     if len(p.split()) >= 30 and not p.strip().startswith("=")]
    path = data / "text" / "tinyshakespeare" / "input.txt"
    if path.is_file():
        words = path.read_text().split(" ")
        docs += [" ".join(words[i: i + 120]) for i in range(0, len(words), 120)]
    for name in ("ptb.valid.txt", "ptb.test.txt"):
        path = data / "text" / "ptb" / name
        if path.is_file():
            lines = path.read_text().split("\n")
            docs += [" ".join(lines[i: i + 8]) for i in range(0, len(lines), 8)]
    return [d for d in docs if d.strip()]


def shingle_set(text: str) -> set[tuple[str, ...]]:
    words = normalize_for_dedup(text).split()
    if len(words) < NGRAM:
        return {tuple(words)} if words else set()
    return {tuple(words[i: i + NGRAM]) for i in range(len(words) - NGRAM + 1)}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def edit_to_level(text: str, level: float, vocab: list[str], rng: random.Random) -> tuple[str, float]:
    """A copy of `text` edited one word at a time until its Jaccard with `text` is closest to `level`."""
    if level >= 1.0:  # same words: only case and punctuation change
        return re.sub(r"[.,;:!?]", "", text).upper(), 1.0
    original, words = shingle_set(text), text.split()
    best = (text, 1.0)
    while True:
        op, pos = rng.random(), rng.randrange(len(words))
        if op < 0.6:
            words[pos] = rng.choice(vocab)
        elif op < 0.8 and len(words) > 10:
            del words[pos]
        else:
            words.insert(pos, rng.choice(vocab))
        candidate = " ".join(words)
        j = jaccard(original, shingle_set(candidate))
        if abs(j - level) < abs(best[1] - level):
            best = (candidate, j)
        if j < level - 0.05:
            return best


def build_benchmark(data: pathlib.Path, per_level: int, seed: int = 0):
    """(texts, designed pairs [(i, j, level, exact Jaccard)])."""
    rng = random.Random(seed)
    texts = load_corpus(data)
    vocab = sorted({w for t in texts[:2000] for w in t.split()})
    bases = [i for i, t in enumerate(texts) if len(t.split()) >= 100]
    rng.shuffle(bases)
    pairs = []
    for level, chunk in zip(LEVELS, itertools.batched(bases, per_level) if hasattr(itertools, "batched")
                            else (bases[k: k + per_level] for k in range(0, len(bases), per_level))):
        for i in chunk:
            edited, j = edit_to_level(texts[i], level, vocab, rng)
            pairs.append((i, len(texts), level, j))
            texts.append(edited)
    return texts, pairs


def gold_pairs(texts: list[str]) -> dict[tuple[int, int], float]:
    """Every pair with exact Jaccard >= THRESHOLD, via an inverted index of shingles."""
    sets = [shingle_set(t) for t in texts]
    index = collections.defaultdict(list)
    for i, s in enumerate(sets):
        for sh in s:
            index[sh].append(i)
    shared = collections.Counter()
    for docs in index.values():
        if 1 < len(docs) < 200:  # a shingle in 200+ documents is boilerplate; its pairs are counted elsewhere
            shared.update(itertools.combinations(docs, 2))
    gold = {}
    for (i, j), n in shared.items():
        if n / (len(sets[i]) + len(sets[j]) - n) >= THRESHOLD:  # |A & B| = shared shingles
            gold[(i, j)] = n / (len(sets[i]) + len(sets[j]) - n)
    return gold


# ---- the two systems ------------------------------------------------------------------------
def ours(texts: list[str], verify: float | None = None) -> np.ndarray:
    a, b = minhash.permutations(BANDS * ROWS, seed=1)
    keys, active, sigs = [], [], []
    for lo in range(0, len(texts), 512):
        hashes, offsets = minhash.shingle_hashes(texts[lo: lo + 512], NGRAM)
        sig = minhash.signatures(hashes, offsets, a, b)
        keys.append(minhash.band_keys(sig, BANDS, ROWS))
        active.append(np.diff(offsets) > 0)
        sigs.append(sig)
    keys, active = np.concatenate(keys), np.concatenate(active)
    u, v = minhash.candidate_edges(keys, active)
    if verify is not None:
        sig = np.concatenate(sigs)
        keep = (sig[u] == sig[v]).mean(axis=1) >= verify
        u, v = u[keep], v[keep]
    return minhash.union_find(len(texts), u, v)


def datasketch_lsh(texts: list[str]) -> np.ndarray:
    from datasketch import MinHash, MinHashLSH

    def shingles(text):
        words = normalize_for_dedup(text).split()
        grams = [" ".join(words[i: i + NGRAM]) for i in range(max(len(words) - NGRAM + 1, 1))] if words else []
        return [g.encode() for g in grams]

    lsh = MinHashLSH(num_perm=BANDS * ROWS, params=(BANDS, ROWS))
    sketches = MinHash.bulk([shingles(t) for t in texts], num_perm=BANDS * ROWS)
    for i, m in enumerate(sketches):
        if not m.is_empty():
            lsh.insert(i, m)
    u, v = [], []
    for i, m in enumerate(sketches):
        if not m.is_empty():
            for j in lsh.query(m):
                if j != i:
                    u.append(i)
                    v.append(j)
    return minhash.union_find(len(texts), np.array(u, dtype=np.int64), np.array(v, dtype=np.int64))


def predicted_pairs(labels: np.ndarray) -> set[tuple[int, int]]:
    clusters = collections.defaultdict(list)
    for i, label in enumerate(labels.tolist()):
        clusters[label].append(i)
    return {p for members in clusters.values() if len(members) > 1 for p in itertools.combinations(members, 2)}


def scores(predicted: set, gold: dict) -> tuple[float, float, float]:
    tp = len(predicted & gold.keys())
    p = tp / len(predicted) if predicted else 1.0
    r = tp / len(gold) if gold else 1.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def timed(fn, *args, repeats: int = 3):
    """(result, best wall seconds, best CPU seconds of this process) over `repeats` runs.

    The machine may be shared: CPU time is what one core spent, wall time includes waiting."""
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        out = fn(*args)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return out, min(walls), min(cpus)


def caesar(text: str, shift: int) -> str:
    """Shift ASCII letters: a copy of the corpus with the same sizes and duplicate structure, new words."""
    table = str.maketrans({c: chr((ord(c) - base + shift) % 26 + base)
                           for base in (65, 97) for c in map(chr, range(base, base + 26))})
    return text.translate(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=pathlib.Path, default=DEFAULT_DATA)
    parser.add_argument("--per-level", type=int, default=60, help="edited pairs per Jaccard level")
    args = parser.parse_args()
    if not (args.data / "text").is_dir():
        sys.exit(f"no text corpora under {args.data}/text")
    texts, pairs = build_benchmark(args.data, args.per_level)
    megabytes = sum(len(t.encode()) for t in texts) / 1e6
    gold = gold_pairs(texts)
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} (shared machines inflate wall times)")
    print(f"{len(texts):,} documents, {megabytes:.2f} MB; {len(pairs)} edited pairs; "
          f"{len(gold):,} gold pairs with exact Jaccard >= {THRESHOLD:.3f}")
    print(minhash.format_s_curve(BANDS, ROWS), "\n")

    ours(texts[:100]), datasketch_lsh(texts[:100])  # warm up both
    runs = {}
    runs["data_prep minhash_dedup"] = timed(ours, texts)
    runs["datasketch MinHashLSH"] = timed(datasketch_lsh, texts, repeats=2)
    runs["data_prep + verify_threshold"] = timed(ours, texts, THRESHOLD)

    print(f"{'level':>6s} {'pairs':>5s} {'mean J':>7s} {'S-curve':>8s}" + "".join(f" {n[:24]:>24s}" for n in runs))
    by_level = collections.defaultdict(list)
    for i, j, level, exact in pairs:
        by_level[level].append((i, j, exact))
    for level in LEVELS:
        rows = by_level[level]
        mean_j = np.mean([e for _, _, e in rows])
        line = f"{level:6.2f} {len(rows):5d} {mean_j:7.3f} {float(minhash.candidate_probability(mean_j, BANDS, ROWS)):8.3f}"
        for labels, _, _ in runs.values():
            line += f" {np.mean([labels[i] == labels[j] for i, j, _ in rows]):24.3f}"
        print(line)
    print("(rate at which each system put the edited pair in one cluster)\n")

    print(f"{'system':30s} {'precision':>9s} {'recall':>7s} {'F1':>6s} {'wall s':>7s} {'cpu s':>6s} "
          f"{'MB/s/core':>10s}")
    speed = {}
    for name, (labels, wall, cpu) in runs.items():
        p, r, f1 = scores(predicted_pairs(labels), gold)
        speed[name] = megabytes / cpu
        print(f"{name:30s} {p:9.3f} {r:7.3f} {f1:6.3f} {wall:7.2f} {cpu:6.2f} {speed[name]:10.2f}")
    ratio = speed["data_prep minhash_dedup"] / speed["datasketch MinHashLSH"]
    print(f"throughput per core, data_prep / datasketch: {ratio:.1f}x (one process each; MB/s per CPU second)\n")

    print(f"{'scale':>5s} {'documents':>10s} {'MB':>7s} {'wall s':>7s} {'ratio':>6s} {'cpu s':>6s} {'ratio':>6s}")
    base = None
    for scale in (1, 2, 4):
        corpus = [caesar(t, shift) for shift in range(scale) for t in texts]
        _, wall, cpu = timed(ours, corpus)
        base = base or (wall, cpu)
        mb = sum(len(t.encode()) for t in corpus) / 1e6
        print(f"{scale:4d}x {len(corpus):10,d} {mb:7.2f} {wall:7.2f} {wall / base[0]:6.2f} {cpu:6.2f} {cpu / base[1]:6.2f}")
    print("(copies are letter-shifted: same sizes and duplicate structure, no shingle shared across copies)")


if __name__ == "__main__":
    main()
