"""manifest.json (the dataset contract of jaxlm/data/format.py, plus how it was made) and its summary."""

from __future__ import annotations

import hashlib
import platform
from typing import Any

import numpy as np
import sentencepiece as spm

from data_prep.config import Config
from data_prep.stages.report import manifest_stages
from data_prep.stats import StageStats
from jaxlm.data import format


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def build_manifest(cfg: Config, files: dict[str, list[str]], tok_info: dict, training: dict, encoded,
                   stats: list[StageStats], stage_reports: dict[str, dict]) -> dict[str, Any]:
    """`encoded` is the pipeline's EncodeStats; `stats` every step's StageStats, reading to encoding;
    `stage_reports` the global stages' reduce reports (dedup clusters, contamination, mix shares)."""
    # tokens per record that are not text; an instruction record's template markers are counted as tokens
    specials = 0 if cfg.instruct() else 1 + int(cfg.tokenizer.add_bos)

    def bytes_per_token(counts) -> float | None:
        text_tokens = counts["tokens"] - specials * counts["documents"]
        return round(counts["bytes"] / text_tokens, 4) if text_tokens > 0 else None

    source_entries = [{"name": s.name, "type": s.type, "weight": s.weight, "files": len(files[s.name]),
                       **encoded.per_source[s.name]} for s in cfg.sources]
    total = {"documents": encoded.stats.docs_out, "bytes": encoded.stats.bytes_out,
             "tokens": encoded.stats.counters.get("tokens", 0)}
    return {
        "format_version": format.FORMAT_VERSION,
        "dtype": encoded.dtype.name,
        "tokenizer": {**tok_info, "add_bos": cfg.tokenizer.add_bos},
        "sources": source_entries,
        "splits": encoded.splits,
        "stages": manifest_stages(stats),
        "stage_reports": stage_reports,
        "encode": {"workers": encoded.workers, "roundtrip_check": encoded.checks},
        "compression": {
            "unit": "UTF-8 bytes per token, " + ("chat template tokens counted" if cfg.instruct() else "BOS/EOS not counted"),
            "bytes_per_token": bytes_per_token(total),
            "per_source": {s["name"]: bytes_per_token(s) for s in source_entries},
        },
        "tokenizer_training": training,
        "config": cfg.to_dict(),
        "versions": {"python": platform.python_version(), "sentencepiece": spm.__version__, "numpy": np.__version__},
    }


def summary(manifest: dict[str, Any]) -> str:
    """A short table of what was prepared: per source documents, tokens, bytes per token."""
    rows = [f"{'source':<16}{'weight':>8}{'documents':>12}{'MB':>10}{'tokens':>14}{'bytes/token':>13}"]
    for s in manifest["sources"]:
        bpt = manifest["compression"]["per_source"][s["name"]]
        rows.append(f"{s['name']:<16}{s['weight']:>8g}{s['documents']:>12,}{s['bytes'] / 1e6:>10.2f}{s['tokens']:>14,}"
                    f"{(bpt or 0):>13.3f}")
    for split in format.SPLITS:
        sp_ = manifest["splits"][split]
        rows.append(f"{split}: {sp_['documents']:,} documents, {sp_['tokens']:,} tokens in {len(sp_['shards'])} shard(s)")
    chat = manifest.get("chat")
    if chat:
        kind = "pair" if manifest.get("record_kind") == "pair" else "example"
        rows.append(f"{'pair' if kind == 'pair' else 'instruction'} records: {chat['trained_tokens']:,} response tokens "
                    f"trained; {chat['examples_truncated']:,} {kind}(s) cut to chat.max_tokens={chat['max_tokens']}, "
                    f"{chat['examples_dropped']:,} dropped (no response token left)")
    tok = manifest["tokenizer"]
    rows.append(f"tokenizer: {tok['model_type']} {tok['vocab_size']:,} pieces; dtype {manifest['dtype']}; "
                f"{manifest['compression']['bytes_per_token']} bytes/token overall; {manifest.get('elapsed_seconds', 0):.1f} s")
    return "\n".join(rows)
