"""Every shipped recipe loads and validates (so a typo in configs/ fails here, not on a pod)."""

import pathlib

import pytest
import yaml

from jaxlm.config import load_config
from jaxlm.train.state import model_spec
from tests.helpers import REPO, run_python

CONFIGS = sorted((pathlib.Path(REPO) / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_recipe_validates(path):
    config = load_config(str(path))
    assert config.train.steps > 0 and config.data.sources


@pytest.mark.parametrize("name, low, high", [("gpt2-124m.yaml", 123e6, 126e6), ("llama-1b.yaml", 1.0e9, 1.4e9),
                                             ("llama-8b.yaml", 7.9e9, 8.1e9)])
def test_named_recipes_have_their_size(name, low, high):
    count = model_spec(load_config(str(CONFIGS[0].parent / name))).param_count
    assert low <= count <= high, count


def test_every_recipes_data_is_what_a_shipped_data_prep_config_writes():
    """A recipe's relative data paths must be a data_prep recipe's `output`, so the command the
    comments give produces the folder the training run reads."""

    outputs = {yaml.safe_load(p.read_text())["output"]
               for p in (CONFIGS[0].parents[1] / "data_prep" / "configs").glob("*.yaml")}
    for path in CONFIGS:
        for source in load_config(str(path)).data.sources:
            if not pathlib.PurePath(source.path).is_absolute():
                assert source.path in outputs, (path.name, source.path, sorted(outputs))


def test_debiasing_fine_tune_starts_from_the_wikitext2_model():
    base = load_config(str(CONFIGS[0].parent / "wikitext2.yaml"))
    tune = load_config(str(CONFIGS[0].parent / "wikitext2_debias.yaml"))
    assert tune.init.from_ == base.workdir
    assert tune.model == base.model and tune.data.seq_len == base.data.seq_len
    assert tune.train.global_batch == base.train.global_batch and tune.optim.lr < base.optim.lr


@pytest.mark.parametrize("module", ["jaxlm.main", "jaxlm.sample", "jaxlm.eval", "jaxlm.export", "jaxlm.plan",
                                    "jaxlm.sweep"])
def test_every_command_has_the_same_help(module):
    """`--help` exits 0 and prints an argparse usage line naming the command, for every command."""

    out = run_python("-m", module, "--help", timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"usage: python -m {module}"), out.stdout[:200]
