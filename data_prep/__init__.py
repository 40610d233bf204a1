"""Offline data preparation: raw text -> SentencePiece tokenizer -> ArrayRecord shards + manifest.

    python -m data_prep --config data_prep/configs/demo.yaml [key.path=value ...]

`prepare(load_config(path, overrides))` does the same from Python. The output folder's layout is
the contract in `jaxlm/data/format.py`.
"""

from data_prep.config import Config, load_config
from data_prep.errors import DataPrepError
from data_prep.pipeline import prepare

__all__ = ["Config", "DataPrepError", "load_config", "prepare"]
