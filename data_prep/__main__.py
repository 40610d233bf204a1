"""python -m data_prep --config data_prep/configs/X.yaml [key.path=value ...] [--overwrite]"""

from __future__ import annotations

import argparse
import sys

from data_prep.config import load_config
from data_prep.errors import DataPrepError
from data_prep.manifest import summary
from data_prep.pipeline import prepare


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m data_prep",
        description="Prepare a dataset: read sources, run the document stages (clean, filter, dedup, "
        "decontaminate, mix), train or install a SentencePiece tokenizer, encode on every core, write "
        "ArrayRecord shards, manifest.json and report.md. Rerun a killed run to resume it.",
    )
    parser.add_argument("--config", required=True, help="YAML config, e.g. data_prep/configs/demo.yaml")
    parser.add_argument("overrides", nargs="*", metavar="key.path=value", help="e.g. tokenizer.vocab_size=8192")
    parser.add_argument("--overwrite", action="store_true", help="replace a finished dataset in the output folder")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        manifest = prepare(cfg, overwrite=args.overwrite)
    except DataPrepError as e:
        print(f"data_prep: error: {e}", file=sys.stderr)
        return 2
    print(summary(manifest))
    print(f"wrote {cfg.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
