"""Parquet files: one document per row of the `text_field` column, read in batches."""

from __future__ import annotations

import os
from collections.abc import Iterator

from data_prep.config import SourceConfig
from data_prep.document import Document
from data_prep.errors import SourceError
from data_prep.sources.common import text_value
from data_prep.stats import StageStats


def read_parquet(src: SourceConfig, path: str, where: str, stats: StageStats) -> Iterator[Document]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise SourceError(f"source {src.name!r} is parquet but pyarrow is not installed; pip install pyarrow") from None
    if os.path.getsize(path) == 0:
        stats.skip("empty_file", where)
        return
    try:
        pf = pq.ParquetFile(path)
    except Exception:  # pyarrow raises ArrowInvalid and friends for a file that is not parquet
        stats.skip("not_parquet", where)
        return
    if src.text_field not in pf.schema_arrow.names:
        stats.skip("missing_text_column", f"{where} (columns: {', '.join(pf.schema_arrow.names)})")
        return
    row = 0
    for batch in pf.iter_batches(columns=[src.text_field], batch_size=1024):
        for value in batch.column(0).to_pylist():
            at = f"{where}:{row}"
            text = text_value(value, at, stats)
            if text is not None:
                yield Document(text, at, src.name)
            row += 1
