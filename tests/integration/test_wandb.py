"""Weights & Biases logging: offline runs hold the same values as metrics.jsonl; a missing wandb
package is one line naming the extra, before anything is written."""

import glob
import json
import sys

import pytest
from tests.helpers import golden_config, read_jsonl

from jaxlm.extras import MissingExtra
from jaxlm.train.loop import train


def wandb_history(run_file: str) -> list[dict]:
    """The history rows of an offline run's `.wandb` file: a LevelDB-style log (32 KiB blocks,
    records cut into FULL/FIRST/MIDDLE/LAST chunks behind 7-byte headers) of wandb's protobuf
    `Record`s, after a 7-byte file header."""
    from wandb.proto import wandb_internal_pb2

    with open(run_file, "rb") as f:
        data = f.read()
    assert data[:4] == b":W&B", "not a W&B run file"
    pos, block, pending, rows = 7, 32768, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            if record.WhichOneof("record_type") == "history":
                rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
    return rows


@pytest.mark.slow  # wandb's service start-up: ~20-60 s on a loaded 2-core machine
def test_wandb_offline_run_logs_the_metrics_values(learnable_dataset, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_MODE", "offline")
    config = golden_config(learnable_dataset, tmp_path / "wandb", train={"steps": 4, "eval_every": 2},
                           log={"wandb": {"enabled": True, "mode": "offline"}})
    train(config)
    (run_file,) = glob.glob(str(tmp_path / "wandb" / "wandb" / "offline-run-*" / "run-*.wandb"))
    logged = {r["_step"]: r for r in wandb_history(run_file)}
    expected = [r for r in read_jsonl(tmp_path / "wandb" / "metrics.jsonl") if "loss" in r or "val_loss" in r]
    assert {r["step"] for r in expected} <= set(logged) and {1, 2, 3, 4} <= set(logged)
    for row in expected:
        for key in ("loss", "lr", "grad_norm", "tokens_per_sec", "mfu", "val_loss"):
            if key in row:
                assert logged[row["step"]][key] == pytest.approx(row[key], rel=1e-12), (row["step"], key)


def test_missing_wandb_names_the_extra_before_writing(learnable_dataset, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    config = golden_config(learnable_dataset, tmp_path / "nowandb", log={"wandb": {"enabled": True}})
    with pytest.raises(MissingExtra, match=r'^log.wandb.enabled needs wandb, which is not installed: '
                                           r'pip install "jaxlm\[wandb\]"$'):
        train(config)
    assert not (tmp_path / "nowandb" / "metrics.jsonl").exists()
