"""Test setup: 8 fake CPU devices for mesh tests, set before JAX is first imported; and fixtures for
what is worth making once and sharing (the functions themselves are in helpers.py)."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pathlib

import pytest

from tests import helpers  # after the flags above: it imports JAX

SHARED_DATA = pathlib.Path(helpers.REPO).parent / "shared" / "data"


@pytest.fixture
def shared_data():
    """The real public data beside the checkout; tests that need it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent")
    return SHARED_DATA


@pytest.fixture(scope="session")
def learnable_dataset(tmp_path_factory):
    """Shards of learnable documents (vocab 64) for tests that train through the Trainer."""
    return helpers.write_learnable_dataset(tmp_path_factory.mktemp("learnable_data") / "ds")


@pytest.fixture(scope="session")
def run_dataset(tmp_path_factory):
    """The subprocess runs' dataset (helpers.write_run_dataset: 96 tokens, seed 0, 300 documents)."""
    return helpers.write_run_dataset(tmp_path_factory.mktemp("run_data") / "tiny")


@pytest.fixture(scope="session")
def jax_cache(tmp_path_factory):
    """One persistent JAX compilation cache for the session's subprocess runs: only the first run
    of a config pays for compiling."""
    return tmp_path_factory.mktemp("jax_cache")
