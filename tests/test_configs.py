"""Every shipped recipe loads and validates (so a typo in configs/ fails here, not on a pod)."""

import pathlib

import pytest

from jaxlm.config import load_config

CONFIGS = sorted((pathlib.Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_recipe_validates(path):
    config = load_config(str(path))
    assert config.train.steps > 0 and config.data.sources


@pytest.mark.parametrize("name, low, high", [("gpt2-124m.yaml", 123e6, 126e6), ("llama-1b.yaml", 1.0e9, 1.4e9),
                                             ("llama-8b.yaml", 7.9e9, 8.1e9)])
def test_named_recipes_have_their_size(name, low, high):
    from jaxlm.train.state import model_spec
    count = model_spec(load_config(str(CONFIGS[0].parent / name))).param_count
    assert low <= count <= high, count
