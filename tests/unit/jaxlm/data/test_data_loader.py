"""jaxlm.data.loader: packing, round trip, shuffling, process split, mixtures, resume, bad input."""

import collections
import json
import math
import os
import shutil

import grain
import numpy as np
import pytest

from jaxlm.data.format import DataFormatError
from jaxlm.data.loader import LoaderStateError, build_loader, open_dataset
from jaxlm.data.mixing import MixedDocuments, integer_weights
from tests.helpers import TOKENIZER_SHA, random_docs, write_dataset

L, B = 64, 4  # seq_len, rows per batch
FIELDS = ("inputs", "targets", "segment_ids", "positions", "loss_mask")


def load(sources, **kw):
    """All batches of a finite loader (1 epoch, no shuffle unless overridden)."""
    sources = sources if isinstance(sources, list) else [(sources, 1.0)]
    kw = {"seq_len": L, "batch_rows": B, "num_epochs": 1, "shuffle": False, "prefetch": 0, **kw}
    with build_loader(sources, **kw) as loader:
        return list(loader)


def take(loader, n):
    return [next(loader) for _ in range(n)]


def assert_same_batches(expected, got):
    assert len(expected) == len(got)
    for a, b in zip(expected, got):
        assert sorted(a) == sorted(b) == sorted(FIELDS)
        for k in FIELDS:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def flatten(batches):
    """Every row, in stream order, concatenated: {field: (rows * L,)}."""
    return {k: np.concatenate([b[k].reshape(-1) for b in batches]) for k in FIELDS}


def documents(batches):
    """Rebuilds documents from packed rows using only segment_ids, positions and loss_mask.

    A piece continues the previous row's last document iff that row's last loss_mask is 1.
    """
    docs, continues = [], False
    for batch in batches:
        for r in range(batch["inputs"].shape[0]):
            seg, pos = batch["segment_ids"][r], batch["positions"][r]
            ids = np.unique(seg[seg > 0])
            np.testing.assert_array_equal(ids, np.arange(1, len(ids) + 1))
            for s in ids:
                idx = np.flatnonzero(seg == s)
                np.testing.assert_array_equal(idx, np.arange(idx[0], idx[0] + len(idx)))  # contiguous
                np.testing.assert_array_equal(pos[idx], np.arange(len(idx)))  # restarts at 0 per piece
                piece = batch["inputs"][r, idx]
                if s == 1 and continues:
                    docs[-1] = np.concatenate([docs[-1], piece])
                else:
                    docs.append(piece)
            continues = bool(batch["loss_mask"][r, -1])
    return docs


def key(doc):
    return tuple(int(t) for t in doc)


@pytest.fixture(scope="module")
def corpus():
    """Unique documents: random ones, 1-token ones (also side by side) and long ones spanning many rows."""
    docs = random_docs(240, seed=1)
    docs[10:10] = [np.array([7]), np.array([8]), np.array([9])]
    docs[100:100] = [np.arange(3, 3 + 1500) % 997 + 3, np.array([11])]
    docs.append((np.arange(4000) * 7) % 991 + 3)
    docs.append(np.array([12]))
    assert len({key(d) for d in docs}) == len(docs)
    return docs


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, corpus):
    val = random_docs(37, seed=2)
    return write_dataset(tmp_path_factory.mktemp("a"), {"train": corpus, "val": val}, shards=3)


def test_packing_by_hand(tmp_path):
    path = write_dataset(tmp_path, {"train": [np.array([5, 6, 2]), np.array([2]), np.array([9, 10, 11, 12, 2])]}, shards=1)
    batches = load(path, seq_len=4, batch_rows=2)
    assert len(batches) == 2  # 9 tokens -> 3 rows, the 4th row is padding
    got = flatten(batches)
    expect = {
        "inputs":      [5, 6, 2, 2,  9, 10, 11, 12,  2, 0, 0, 0,  0, 0, 0, 0],
        "targets":     [6, 2, 2, 9,  10, 11, 12, 2,  0, 0, 0, 0,  0, 0, 0, 0],
        "segment_ids": [1, 1, 1, 2,  1, 1, 1, 1,     1, 0, 0, 0,  0, 0, 0, 0],
        "positions":   [0, 1, 2, 0,  0, 1, 2, 3,     0, 0, 0, 0,  0, 0, 0, 0],
        "loss_mask":   [1, 1, 0, 0,  1, 1, 1, 1,     0, 0, 0, 0,  0, 0, 0, 0],
    }  # fmt: skip
    for k in FIELDS:
        np.testing.assert_array_equal(got[k], expect[k], err_msg=k)
        assert batches[0][k].dtype == np.int32 and batches[0][k].shape == (2, 4)


def test_round_trip_gives_back_every_document(dataset, corpus):
    batches = load(dataset)
    total = sum(len(d) for d in corpus)
    assert len(batches) == math.ceil(math.ceil(total / L) / B)
    assert all(b[k].shape == (B, L) and b[k].dtype == np.int32 for b in batches for k in FIELDS)
    rebuilt = documents(batches)
    assert [key(d) for d in rebuilt] == [key(d) for d in corpus]

    # Stream view: every token an input exactly once, targets = next token, masks from true documents.
    flat = flatten(batches)
    labels = np.full(len(flat["inputs"]) + 1, -1)
    labels[:total] = np.repeat(np.arange(len(corpus)), [len(d) for d in corpus])
    np.testing.assert_array_equal(flat["inputs"][:total], np.concatenate(corpus))
    np.testing.assert_array_equal(flat["targets"][: total - 1], flat["inputs"][1:total])
    np.testing.assert_array_equal(flat["loss_mask"], (labels[:-1] >= 0) & (labels[:-1] == labels[1:]))
    for k in FIELDS:  # padding only after the last token
        assert not flat[k][total:].any()
    same_row = (np.arange(len(flat["inputs"]) - 1) + 1) % L != 0
    seg_same = flat["segment_ids"][:-1] == flat["segment_ids"][1:]
    doc_same = labels[:-2] == labels[1:-1]
    np.testing.assert_array_equal(seg_same[same_row], doc_same[same_row])  # segments change exactly at borders


def test_shuffled_epoch_has_every_token_once(dataset, corpus):
    batches = load(dataset, shuffle=True, seed=3)
    rebuilt = documents(batches)
    assert collections.Counter(map(key, rebuilt)) == collections.Counter(map(key, corpus))
    assert [key(d) for d in rebuilt] != [key(d) for d in corpus]
    flat = flatten(batches)
    real = flat["segment_ids"] > 0
    np.testing.assert_array_equal(np.sort(flat["inputs"][real]), np.sort(np.concatenate(corpus)))


@pytest.mark.parametrize("num_epochs", [1, 2])
def test_processes_split_disjoint_and_complete(dataset, corpus, num_epochs):
    parts = [
        collections.Counter(map(key, documents(load(dataset, shuffle=True, seed=4, num_epochs=num_epochs,
                                                     process_index=i, process_count=2))))
        for i in range(2)
    ]
    everything = collections.Counter({key(d): num_epochs for d in corpus})
    assert parts[0] + parts[1] == everything
    if num_epochs == 1:
        assert not set(parts[0]) & set(parts[1])
        assert abs(sum(parts[0].values()) - sum(parts[1].values())) <= 1


def test_shuffle_is_deterministic_per_seed_and_reshuffled_per_epoch(dataset, corpus):
    def first(seed, n=5):
        with build_loader([(dataset, 1.0)], seq_len=L, batch_rows=B, seed=seed) as loader:
            return take(loader, n)

    assert_same_batches(first(0), first(0))
    assert not np.array_equal(first(0, 1)[0]["inputs"], first(1, 1)[0]["inputs"])

    rebuilt = [key(d) for d in documents(load(dataset, shuffle=True, seed=0, num_epochs=2))]
    n = len(corpus)
    assert len(rebuilt) == 2 * n
    epoch1, epoch2 = rebuilt[:n], rebuilt[n:]
    assert sorted(epoch1) == sorted(epoch2) == sorted(map(key, corpus))
    assert epoch1 != epoch2


def test_single_document_dataset_over_epochs(tmp_path):
    doc = np.arange(1000) % 97 + 3  # like a whole-text char-level dataset: one record
    path = write_dataset(tmp_path, {"train": [doc]}, shards=1)
    rebuilt = documents(load(path, shuffle=True, num_epochs=3))
    assert [key(d) for d in rebuilt] == [key(doc)] * 3


def test_eval_stream_is_finite_and_identical_each_time(dataset):
    first, again = load(dataset, split="val"), load(dataset, split="val")
    assert_same_batches(first, again)
    info = open_dataset(dataset)
    rows = math.ceil(info.split("val").tokens / L)
    assert len(first) == math.ceil(rows / B)
    assert flatten(first)["segment_ids"][-1] == 0  # last batch padded to full shape


@pytest.fixture(scope="module")
def mixture(tmp_path_factory):
    """Two datasets with one tokenizer; A's ids are < 1000, B's >= 1000 (first token tells the source)."""
    a = random_docs(150, seed=5, low=3, high=1000, min_len=2, max_len=60)
    b = random_docs(40, seed=6, low=1000, high=2000, min_len=2, max_len=60)
    paths = [write_dataset(tmp_path_factory.mktemp(n), {"train": d}, vocab_size=2000) for n, d in (("ma", a), ("mb", b))]
    return paths, a, b


def test_mixture_document_shares_follow_weights(mixture):
    (pa, pb), _, _ = mixture
    with build_loader([(pa, 0.75), (pb, 0.25)], seq_len=L, batch_rows=B, seed=1) as loader:
        rebuilt = documents(take(loader, 60))  # ~500 documents: A cycles ~2.5 epochs, B ~3
    from_a = np.cumsum([d[0] < 1000 for d in rebuilt])
    k = np.arange(1, len(rebuilt) + 1)
    # The interleave is deterministic, not sampled: at every prefix the count is ceil(0.75 k), so the
    # error is in [0, 1) -- no statistical tolerance is needed.
    assert len(rebuilt) > 400
    assert np.all((from_a - 0.75 * k >= 0) & (from_a - 0.75 * k < 1))


def test_finite_mixture_keeps_every_document(mixture):
    (pa, pb), a, b = mixture
    rebuilt = documents(load([(pa, 1.0), (pb, 1.0)], shuffle=True, seed=2))
    assert collections.Counter(map(key, rebuilt)) == collections.Counter(map(key, a + b))
    first = [d[0] < 1000 for d in rebuilt[: 2 * len(b)]]
    assert first == [True, False] * len(b)  # equal weights alternate until B runs out


def test_mixed_documents_interleave():
    ranges = [grain.MapDataset.range(i * 10**6, i * 10**6 + n) for i, n in enumerate((5, 2))]
    assert list(MixedDocuments(ranges, [1, 1])) == [0, 10**6, 1, 10**6 + 1, 2, 3, 4]
    weights = [0.5, 0.3, 0.2]
    forever = [grain.MapDataset.range(i * 10**6, (i + 1) * 10**6).repeat() for i in range(3)]
    mixed = MixedDocuments(forever, weights)
    sources = np.array([mixed[k] // 10**6 for k in range(3000)])
    counts = np.stack([np.cumsum(sources == i) for i in range(3)])
    k = np.arange(1, 3001)
    assert np.abs(counts - np.outer(weights, k)).max() < 2  # bounded by the number of split levels
    assert integer_weights([0.75, 0.25]) == (3, 1)


@pytest.mark.parametrize("use_mixture", [False, True])
def test_resume_from_state_is_exact(dataset, mixture, use_mixture):
    sources = [(p, w) for p, w in zip(mixture[0], (2.0, 1.0))] if use_mixture else [(dataset, 1.0)]
    kw = dict(seq_len=L, batch_rows=B, seed=5)  # infinite, shuffled, thread prefetch on
    with build_loader(sources, **kw) as loader:
        seen = 0
        while seen < 7 or loader.get_state()["stream"]["offset"] == 0:  # resume inside a document
            next(loader)
            seen += 1
        state = json.loads(json.dumps(loader.get_state()))
        expected = take(loader, 6)
    assert len(json.dumps(state["stream"])) < 64
    with build_loader(sources, **kw) as resumed:
        resumed.set_state(state)
        assert_same_batches(expected, take(resumed, 6))


def test_resume_at_end_of_finite_stream(dataset):
    with build_loader([(dataset, 1.0)], "val", seq_len=L, batch_rows=B, num_epochs=1, shuffle=False) as loader:
        list(loader)
        state = loader.get_state()
    with build_loader([(dataset, 1.0)], "val", seq_len=L, batch_rows=B, num_epochs=1, shuffle=False) as again:
        again.set_state(state)
        assert list(again) == []


def test_state_from_another_setup_is_refused(dataset):
    with build_loader([(dataset, 1.0)], seq_len=L, batch_rows=B, seed=5, prefetch=0) as loader:
        next(loader)
        state = loader.get_state()
    with build_loader([(dataset, 1.0)], seq_len=L, batch_rows=B, seed=6, prefetch=0) as other:
        with pytest.raises(LoaderStateError, match="seed: saved 5, now 6"):
            other.set_state(state)
        with pytest.raises(LoaderStateError, match="not a jaxlm loader state"):
            other.set_state({"position": 3})


# ---- bad input --------------------------------------------------------------------------------


@pytest.fixture
def small(tmp_path):
    return write_dataset(tmp_path / "small", {"train": random_docs(300, seed=7, max_len=200)}, shards=2)


def _shard(path, i=1):
    return os.path.join(path, "shards", f"train-{i:05d}-of-00002.array_record")


def test_missing_folder_and_manifest(tmp_path):
    with pytest.raises(DataFormatError, match=r"does not exist.*python -m data_prep --config"):
        build_loader([(str(tmp_path / "nope"), 1.0)], seq_len=L, batch_rows=B)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataFormatError, match=r"manifest.json is missing.*python -m data_prep --config"):
        build_loader([(str(tmp_path / "empty"), 1.0)], seq_len=L, batch_rows=B)


def test_missing_and_truncated_shard_named(small):
    with open(_shard(small), "rb") as f:
        data = f.read()
    with open(_shard(small), "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(DataFormatError, match=rf"{_shard(small)} has \d+ bytes, the manifest says {len(data)}"):
        open_dataset(small)
    # Without sizes in the manifest the record count still gives it away.
    with open(os.path.join(small, "manifest.json")) as f:
        manifest = json.load(f)
    for shard in manifest["splits"]["train"]["shards"]:
        del shard["bytes"]
    with open(os.path.join(small, "manifest.json"), "w") as f:
        json.dump(manifest, f)
    with pytest.raises(DataFormatError, match=rf"{_shard(small)} cannot be opened as ArrayRecord.*truncated"):
        open_dataset(small)
    os.remove(_shard(small))
    with pytest.raises(DataFormatError, match=rf"{_shard(small)} listed in the manifest is missing"):
        build_loader([(small, 1.0)], seq_len=L, batch_rows=B)


@pytest.mark.parametrize("field,bad", [("shard", "../outside.array_record"), ("shard", "/etc/passwd"),
                                       ("tokenizer", "../../tokenizer.model"), ("tokenizer", "/tmp/tokenizer.model")])
def test_manifest_paths_outside_the_folder_are_refused(small, field, bad):
    """A manifest names files inside its own folder; absolute and '..' paths are refused up front."""
    with open(os.path.join(small, "manifest.json")) as f:
        manifest = json.load(f)
    if field == "shard":
        manifest["splits"]["train"]["shards"][0]["path"] = bad
    else:
        manifest["tokenizer"]["path"] = bad
    with open(os.path.join(small, "manifest.json"), "w") as f:
        json.dump(manifest, f)
    with pytest.raises(DataFormatError, match=rf"path '{bad}' is not a relative path inside the dataset folder"):
        open_dataset(small)


def test_corrupt_shard_named_when_read_and_by_verify(small):
    path = _shard(small)
    with open(path, "r+b") as f:  # same size, damaged bytes inside the first 64 KiB block's records
        f.seek(20_000)
        block = f.read(256)
        f.seek(-len(block), os.SEEK_CUR)
        f.write(bytes(x ^ 0xFF for x in block))
    with pytest.raises(DataFormatError, match=rf"{path} does not match its sha256"):
        open_dataset(small, verify=True)
    with pytest.raises(DataFormatError, match=rf"shard {path} record \d+ cannot be read"):
        load(small)


def test_vocab_and_tokenizer_mismatch_named(tmp_path, small):
    with pytest.raises(DataFormatError, match=rf"{small}.*vocabulary of 1000 ids.*vocab_size=500"):
        build_loader([(small, 1.0)], seq_len=L, batch_rows=B, model_vocab_size=500)
    other = write_dataset(tmp_path / "other", {"train": random_docs(20, seed=8)}, tokenizer_sha="0" * 64)
    assert TOKENIZER_SHA != "0" * 64
    with pytest.raises(DataFormatError, match=rf"{other}.*different tokenizer"):
        build_loader([(small, 1.0), (other, 1.0)], seq_len=L, batch_rows=B)
    with pytest.raises(DataFormatError, match=r"no 'val' split"):
        build_loader([(small, 1.0)], "val", seq_len=L, batch_rows=B)


def test_bad_arguments_say_what_is_wrong(small):
    with pytest.raises(ValueError, match=r"seq_len=0 must be an integer >= 1"):
        build_loader([(small, 1.0)], seq_len=0, batch_rows=B)
    with pytest.raises(ValueError, match=r"process_index=2 must be in \[0, process_count=2\)"):
        build_loader([(small, 1.0)], seq_len=L, batch_rows=B, process_index=2, process_count=2)
    with pytest.raises(ValueError, match=r"weight -1"):
        build_loader([(small, -1)], seq_len=L, batch_rows=B)
    with pytest.raises(ValueError, match=r"num_epochs=0"):
        build_loader([(small, 1.0)], seq_len=L, batch_rows=B, num_epochs=0)


def test_dataset_info(small):
    info = open_dataset(small, expected_vocab_size=1024)
    assert info.vocab_size == 1000 and info.dtype == np.dtype("<u2") and info.tokenizer_sha256 == TOKENIZER_SHA
    split = info.split("train")
    assert split.documents == 300 and len(split.shards) == 2
    assert sum(s.records for s in split.shards) == 300
    shutil.rmtree(small)
