"""The in-training n-shot hook: tasks run every N steps and land in metrics.jsonl and TensorBoard."""

import json

import pytest

import data_prep
from jaxlm.config import config_from_dict
from jaxlm.main import train

TEXT = ("The cat sat on the mat. The dog ran in the park. A bird sang in the tree.\n" * 40)


@pytest.mark.slow
def test_eval_tasks_run_during_training(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    prep = data_prep.config.config_from_dict({
        "output": str(tmp_path / "data"), "workers": 1,
        "sources": [{"name": "t", "type": "txt", "paths": [str(corpus)], "split": {"by": "position", "val_fraction": 0.2}}],
        "tokenizer": {"model_type": "bpe", "vocab_size": 320},
    })
    data_prep.prepare(prep, log=lambda m: None)
    items = [{"query": "The cat sat on the", "choices": ["mat.", "tree."], "gold": 0},
             {"query": "A bird sang in the", "choices": ["park.", "tree."], "gold": 1}]
    data = tmp_path / "mc.jsonl"
    data.write_text("".join(json.dumps(i) + "\n" for i in items))
    spec = tmp_path / "mine.yaml"
    spec.write_text(f"name: mine\nformat: mosaic_mc\npath: {data}\nprompt: '{{context}}'\ntarget: ' {{choice}}'\n")
    config = config_from_dict({
        "workdir": str(tmp_path / "run"),
        "data": {"sources": [{"path": str(tmp_path / "data")}], "seq_len": 32},
        "model": {"vocab_size": 320, "d_model": 32, "n_layers": 1, "n_heads": 2, "max_seq_len": 32},
        "train": {"steps": 4, "global_batch": 8, "eval_every": 0, "log_every": 1,
                  "eval_tasks": [str(spec)], "eval_tasks_every": 2},
        "log": {"progress": False},
    })
    train(config)
    rows = [json.loads(l) for l in open(tmp_path / "run" / "metrics.jsonl")]
    task_rows = [r for r in rows if "eval/mine/acc" in r]
    assert [r["step"] for r in task_rows] == [2, 4]
    assert all(0.0 <= r["eval/mine/acc"] <= 1.0 for r in task_rows)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(tmp_path / "run" / "tb"))
    events.Reload()
    assert "eval/mine/acc" in events.Tags()["scalars"]
