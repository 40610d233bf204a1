"""What the trainer shows while it runs: MFU values (not just the key) and the progress bar."""

import pytest

from jaxlm.model.counting import matmul_param_count
from jaxlm.train.loop import train
from jaxlm.train.metrics import flops_per_token
from tests.helpers import golden_config, read_jsonl

PEAK = 1e12  # train.peak_flops: per device, so the run's peak is 8 x this on the 8 test devices


def test_mfu_is_tokens_per_sec_times_flops_per_token_over_the_peak(learnable_dataset, tmp_path):
    config = golden_config(learnable_dataset, tmp_path / "mfu", train={"steps": 4, "eval_every": 0, "peak_flops": PEAK})
    train(config)
    per_token = flops_per_token(config.model, config.data.seq_len)
    # 6 x the matmul parameters plus attention (2 layers, 4 heads of 8, 32 positions)
    assert per_token == 6.0 * matmul_param_count(config.model) + 12.0 * 2 * 4 * (32 // 4) * 32
    rows = [r for r in read_jsonl(tmp_path / "mfu" / "metrics.jsonl") if "mfu" in r]
    assert len(rows) >= 3
    for r in rows:
        assert r["tokens_per_sec"] > 0
        assert r["mfu"] == pytest.approx(r["tokens_per_sec"] * per_token / (8 * PEAK), rel=1e-9)


def test_progress_bar_counts_every_step_and_shows_the_loss(learnable_dataset, tmp_path, capfd):
    config = golden_config(learnable_dataset, tmp_path / "bar", train={"steps": 6, "eval_every": 3, "log_every": 1},
                           log={"progress": True})
    summary = train(config)
    err = capfd.readouterr().err
    final = err.replace("\r", "\n").strip().splitlines()[-1]
    assert "6/6" in final and "100%" in final, final
    assert f"loss={summary['loss']:.4f}" in final and f"val(first 4 batches)={summary['val_loss']:.4f}" in final, final

    quiet = golden_config(learnable_dataset, tmp_path / "quiet", train={"steps": 2, "eval_every": 0}, log={"progress": False})
    train(quiet)
    assert "2/2" not in capfd.readouterr().err
