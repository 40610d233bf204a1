"""Warm start (`init.from`, `init.hf`): a fresh run starts from another run's or a transformers
folder's parameters, with new token rows at the mean of the trained rows; a run with checkpoints of
its own resumes instead; bad combinations fail before compute."""

import numpy as np
import pytest
import yaml
from jaxlm.export import export_run
from tests.helpers import golden_config

from jaxlm.config import ConfigError, config_from_dict, dump_yaml
from jaxlm.interop import InteropError
from jaxlm.interop.warm_start import initial_params
from jaxlm.main import train as main_train
from jaxlm.train.checkpoint_reader import read_params
from jaxlm.train.loop import Trainer, train


@pytest.fixture(scope="module")
def source(learnable_dataset, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("warm") / "source"
    train(golden_config(learnable_dataset, workdir, train={"steps": 4, "eval_every": 0},
                        checkpoint={"every_steps": 4, "async_save": False}))
    _, params = read_params(str(workdir))
    return workdir, {k: np.asarray(v) for k, v in _flat(params).items()}


def _flat(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}{k}/") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def test_init_from_a_workdir_grows_the_vocabulary(learnable_dataset, source, tmp_path):
    workdir, trained = source
    config = golden_config(learnable_dataset, tmp_path / "sft", model={"vocab_size": 68}, init={"from": str(workdir)},
                           train={"steps": 2, "eval_every": 0})
    trainer = Trainer(config, init_params=lambda: initial_params(config))
    try:
        got = {k: np.asarray(v) for k, v in _flat(trainer.state["params"]).items()}
    finally:
        trainer.close()
    for name, value in trained.items():
        if name == "embed":  # (vocab, embed): old rows unchanged, new rows their mean
            np.testing.assert_array_equal(got[name][:64], value)
            mean = value.astype(np.float64).mean(0)  # float32 sums of near-zero rows: compare absolutely
            np.testing.assert_allclose(got[name][64:], np.broadcast_to(mean, (4, value.shape[1])), rtol=0, atol=1e-8)
        else:
            np.testing.assert_array_equal(got[name], value, err_msg=name)
    assert int(trainer.state["step"]) == 0


def test_init_hf_and_the_cli_path(learnable_dataset, source, tmp_path):
    pytest.importorskip("safetensors")

    workdir, trained = source
    config, params = read_params(str(workdir))
    export_run(config, params, str(tmp_path / "hf"))  # the learnable dataset has no tokenizer: weights only
    run = golden_config(learnable_dataset, tmp_path / "from_hf", init={"hf": str(tmp_path / "hf")},
                        train={"steps": 1, "eval_every": 0})
    warm = {k: np.asarray(v) for k, v in _flat(initial_params(run)).items()}
    for name, value in trained.items():
        np.testing.assert_array_equal(warm[name], value, err_msg=name)
    summary = main_train(run)  # the command's path reads init and records it
    assert summary["step"] == 1
    incidents = (tmp_path / "from_hf" / "incidents.jsonl").read_text()
    assert '"warm_start"' in incidents and str(tmp_path / "hf") in incidents
    main_train(run)  # a rerun resumes from its own checkpoint: no second warm start
    assert (tmp_path / "from_hf" / "incidents.jsonl").read_text().count('"warm_start"') == 1


def test_config_key_and_bad_input(learnable_dataset, source, tmp_path):
    workdir, _ = source
    config = golden_config(learnable_dataset, tmp_path / "x", init={"from": str(workdir)})
    assert config.init.from_ == str(workdir)
    assert yaml.safe_load(dump_yaml(config))["init"] == {"from": str(workdir), "hf": ""}
    with pytest.raises(ConfigError, match="init.from and init.hf both set"):
        golden_config(learnable_dataset, tmp_path / "y", init={"from": str(workdir), "hf": "x"})
    with pytest.raises(ConfigError, match="read by `python -m jaxlm.main`"):
        Trainer(config)
    wider = golden_config(learnable_dataset, tmp_path / "z", model={"d_model": 64}, init={"from": str(workdir)})
    with pytest.raises(InteropError, match="model.d_model=32"):
        initial_params(wider)
    with pytest.raises(ConfigError, match="unknown config key 'init.form'"):
        config_from_dict({"init": {"form": "x"}})
