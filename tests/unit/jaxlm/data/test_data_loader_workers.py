"""jaxlm.data.loader with Grain worker processes: same batches as without, exact resume, errors named."""

import json
import os

import numpy as np
import pytest

from jaxlm.data.format import DataFormatError
from jaxlm.data.loader import build_loader
from tests.helpers import random_docs, write_dataset

L, B = 64, 4
FIELDS = ("inputs", "targets", "segment_ids", "positions", "loss_mask")


def assert_same_batches(expected, got):
    assert len(expected) == len(got)
    for a, b in zip(expected, got):
        for k in FIELDS:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    a = write_dataset(tmp_path_factory.mktemp("wa"), {"train": random_docs(300, seed=11)}, vocab_size=2000, shards=3)
    b = write_dataset(tmp_path_factory.mktemp("wb"), {"train": random_docs(90, seed=12, low=1000, high=2000)}, vocab_size=2000)
    return [(a, 2.0), (b, 1.0)]


def test_workers_do_not_change_the_stream(sources):
    kw = dict(seq_len=L, batch_rows=B, num_epochs=1, shuffle=True, seed=3)
    with build_loader(sources, worker_count=0, **kw) as threads:
        expected = list(threads)
    with build_loader(sources, worker_count=2, **kw) as workers:
        assert_same_batches(expected, list(workers))


def test_resume_with_workers_is_exact(sources):
    kw = dict(seq_len=L, batch_rows=B, seed=7)  # infinite mixture
    with build_loader(sources, worker_count=2, **kw) as loader:
        for _ in range(9):
            next(loader)
        state = json.loads(json.dumps(loader.get_state()))
        expected = [next(loader) for _ in range(5)]
    for workers in (2, 0):  # the state does not depend on the reader setup
        with build_loader(sources, worker_count=workers, **kw) as resumed:
            resumed.set_state(state)
            assert_same_batches(expected, [next(resumed) for _ in range(5)])


def test_corrupt_shard_named_from_a_worker(tmp_path):
    path = write_dataset(tmp_path, {"train": random_docs(300, seed=13, max_len=200)}, shards=1)
    shard = os.path.join(path, "shards", "train-00000-of-00001.array_record")
    with open(shard, "r+b") as f:
        f.seek(20_000)
        block = f.read(256)
        f.seek(-len(block), os.SEEK_CUR)
        f.write(bytes(x ^ 0xFF for x in block))
    with build_loader([(path, 1.0)], seq_len=L, batch_rows=B, num_epochs=1, shuffle=False, worker_count=2) as loader:
        with pytest.raises(DataFormatError, match=rf"shard {shard} record \d+ cannot be read"):
            list(loader)
