"""Test setup: 8 fake CPU devices for mesh tests, set before JAX is first imported."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def shared_data():
    """The real public data beside the checkout; tests that need it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent")
    return SHARED_DATA


@pytest.fixture(scope="session")
def learnable_dataset(tmp_path_factory):
    """Shards of learnable documents (vocab 64) for tests that train through the Trainer."""
    from test_data_loader_util import learnable_docs, write_dataset
    root = tmp_path_factory.mktemp("learnable_data") / "ds"
    return write_dataset(root, {"train": learnable_docs(400, 64, 0), "val": learnable_docs(40, 64, 1)},
                         vocab_size=64)
