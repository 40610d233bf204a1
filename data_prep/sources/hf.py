"""Hugging Face datasets (`datasets.load_dataset`), read as a stream, one shard per task."""

from __future__ import annotations

import re
from collections.abc import Iterator

from data_prep.config import SourceConfig
from data_prep.document import Document
from data_prep.errors import SourceError
from data_prep.sources.common import text_value
from data_prep.stats import StageStats

_HF_SHARD = re.compile(r".*-(\d+)-of-(\d+)")


def _load_hf(src: SourceConfig):
    """The source's split as an IterableDataset; SourceError when datasets or the dataset is missing."""
    try:
        import datasets
    except ImportError:
        raise SourceError(f"source {src.name!r} is hf but the datasets package is not installed; "
                          'pip install "jaxlm[hf]"') from None
    try:
        ds = datasets.load_dataset(src.dataset, src.dataset_config, split=src.dataset_split,
                                   data_files=src.paths or None, streaming=src.streaming)
    except Exception as e:  # no network, an unknown name, config or split, missing data files, ...
        raise SourceError(f"source {src.name!r}: cannot load the Hugging Face dataset {src.dataset!r} "
                          f"(config {src.dataset_config!r}, split {src.dataset_split!r}): {type(e).__name__}: {e}. "
                          "A Hub dataset needs the network, or HF_HUB_OFFLINE=1 and a copy in the HF cache") from None
    if not src.streaming:  # prepared in the HF cache: read it as a stream too, a shard per cache file
        ds = ds.to_iterable_dataset(num_shards=max(1, len(ds.cache_files)))
    if ds.features is not None and src.text_field not in ds.features:
        raise SourceError(f"source {src.name!r}: the dataset has no column {src.text_field!r}; its columns are "
                          f"{', '.join(ds.features)}; set sources.{src.name}.text_field")
    return ds


def hf_shards(src: SourceConfig) -> list[str]:
    """The dataset's shards (its data files, when streamed) named like files, so tasks divide them."""
    count = _load_hf(src).n_shards
    return [f"{src.dataset_split}-{index:05d}-of-{count:05d}" for index in range(count)]


def read_hf(src: SourceConfig, shard: str, where: str, stats: StageStats) -> Iterator[Document]:
    index, count = map(int, _HF_SHARD.fullmatch(shard).groups())
    ds = _load_hf(src)
    if ds.n_shards != count:
        raise SourceError(f"source {src.name!r}: the dataset changed while it was read "
                          f"({ds.n_shards} shards, {count} before); run again")
    row = 0
    try:
        for example in ds.shard(num_shards=count, index=index):
            at = f"{where}:{row}"
            text = text_value(example.get(src.text_field), at, stats)
            if text is not None:
                yield Document(text, at, src.name)
            row += 1
    except Exception as e:  # a data file that breaks part-way, or the connection: keep the rows before
        stats.skip("stream_error", f"{where}:{row} ({type(e).__name__})")
