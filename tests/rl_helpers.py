"""Test helper (no tests here): the shipped arithmetic task as a tiny instruction dataset, a tiny SFT
base trained on it, and online-RL configs that start from it."""

from __future__ import annotations

import json
import os

from data_prep import arithmetic, prepare
from data_prep.config import config_from_dict as data_config
from jaxlm import main as jaxlm_main
from jaxlm.config import config_from_dict

MODEL = {"vocab_size": 512, "d_model": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "d_ff": 64,
         "max_seq_len": 128}


def digit_share(response: str, answer: str) -> float:
    """A reward with spread even for an untrained model: the share of the response's characters that
    are digits (the tests' verifier; the real task's is jaxlm.eval.verifiers:final_number)."""
    return sum(ch.isdigit() for ch in response) / max(len(response), 1)


def make_task(root) -> tuple[str, str]:
    """(the arithmetic items folder, the data_prep instruction dataset made from it)."""
    items = os.path.join(root, "arithmetic")
    assert arithmetic.main(["--out", items, "--train", "120", "--test", "12", "--seed", "1"]) == 0
    out = os.path.join(root, "arith_sft")
    sources = [{"name": "train", "type": "alpaca", "paths": [os.path.join(items, "train.jsonl")],
                "split": {"by": "hash", "val_fraction": 0.0}},
               {"name": "test", "type": "alpaca", "paths": [os.path.join(items, "test.jsonl")],
                "split": {"by": "hash", "val_fraction": 1.0}}]
    prepare(data_config({"output": out, "sources": sources, "tokenizer": {"vocab_size": 512, "num_threads": 1}, "workers": 1,
                         "chat": {"max_tokens": 128}}), log=lambda _: None)
    return items, out


def sft_config(workdir, dataset, steps: int = 2) -> dict:
    return {"workdir": str(workdir), "data": {"sources": [{"path": dataset}], "seq_len": 128},
            "model": dict(MODEL), "mesh": {"data": 4, "fsdp": 2},
            "train": {"steps": steps, "global_batch": 8, "log_every": 1, "eval_every": 0, "peak_flops": 1e9},
            "optim": {"lr": 1e-2}, "log": {"progress": False, "tensorboard": False},
            "checkpoint": {"every_steps": steps, "every_minutes": 0}}


def train_base(root, dataset) -> str:
    workdir = os.path.join(root, "sft")
    jaxlm_main.train(config_from_dict(sft_config(workdir, dataset)))
    return workdir


def rl_config(workdir, base, items, dataset, *, steps: int = 4, every: int = 2, **rl) -> dict:
    return {"workdir": str(workdir), "init": {"from": base}, "data": {"sources": [{"path": dataset}], "seq_len": 96},
            "model": dict(MODEL),
            "mesh": {"data": 4, "fsdp": 2},
            "train": {"objective": "policy_gradient", "steps": steps, "global_batch": 16, "micro_batch": 8,
                      "log_every": 1, "eval_every": 0, "peak_flops": 1e9},
            "optim": {"lr": 1e-3, "schedule": {"name": "constant"}},
            "log": {"progress": False, "tensorboard": False},
            "checkpoint": {"every_steps": every, "keep_last": 4, "every_minutes": 0},
            "rl": {"algorithm": "grpo", "prompts": os.path.join(items, "train.jsonl"), "group_size": 4,
                   "reward": {"verifier": "tests.rl_helpers:digit_share"}, "max_new_tokens": 12,
                   "kl_coef": 0.1, **rl}}


def read_metrics(workdir) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
