"""Packing documents into fixed-length rows: concatenate, then split with a one-token overlap.

The documents are concatenated into one token stream; row r covers stream tokens
[r*L, r*L + L + 1): `inputs` are its first L tokens and `targets` its last L, so every token is an
input exactly once and the last target of a row is the first input of the next row.

Per row, for each position t:
  segment_ids[t]  1, 2, 3, ... one per document piece in the row; 0 only for padding.
  positions[t]    position inside the document piece. A document continued from the previous row
                  restarts at 0 in this row (each row is attended to on its own).
  loss_mask[t]    1 iff targets[t] belongs to the same document as inputs[t]: the last token of a
                  document never predicts the first of the next, and padding is never a target;
                  for instruction examples (records with a loss mask, `format.MASKED_TOKEN`) also
                  only where the record's mask is 1 for targets[t]: response tokens only.
Padding (token 0, segment 0, loss_mask 0) only appears at the very end of a finite stream; a
last, partial batch is padded with whole empty rows to keep the shape (rows, L).

Whole examples (`whole_examples=True`, what the loader uses for instruction data): an example is
never split across rows, since a response cut from its prompt teaches nothing. If it does not fit
in what is left of the row, the rest of the row is padding and it starts the next row. An example
longer than L tokens is truncated to its first L (the tail is dropped; data_prep already cuts
examples at `chat.max_tokens` and counts them in the manifest, so this only happens when the
model's context is shorter than the one the data was prepared for). Several examples share a row
with distinct segment ids, so no attention crosses examples.

The iterator state is (position, offset): the index of the current document in the document
sequence and how many of its tokens were already used as inputs. That is all it takes to resume
exactly, whatever the number of reader workers, since the document sequence is a pure function
of the position (a random-access `grain.MapDataset`).
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import grain
import numpy as np

# Opens an iterator over docs[start:], in order (threads or worker processes do the reading).
ReaderFactory = Callable[[grain.MapDataset, int], Iterator[np.ndarray]]


def rows_from_stream(tokens: np.ndarray, doc_ids: np.ndarray, rows: int, seq_len: int,
                     trained: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Batch arrays from rows*seq_len + 1 consecutive stream tokens and their document ids (-1 = pad);
    `trained` (same length, bool): whether each token may be a target (None: all)."""
    n = rows * seq_len
    inputs, targets = tokens[:n].reshape(rows, seq_len), tokens[1 : n + 1].reshape(rows, seq_len)
    doc_in, doc_tgt = doc_ids[:n].reshape(rows, seq_len), doc_ids[1 : n + 1].reshape(rows, seq_len)
    real = doc_in >= 0
    starts = np.ones((rows, seq_len), bool)  # a new piece starts at t = 0 and where the document changes
    starts[:, 1:] = doc_in[:, 1:] != doc_in[:, :-1]
    t = np.arange(seq_len)
    piece_start = np.maximum.accumulate(np.where(starts, t, 0), axis=1)
    loss = real & (doc_in == doc_tgt)
    if trained is not None:
        loss &= trained[1 : n + 1].reshape(rows, seq_len)
    return {
        "inputs": inputs.astype(np.int32),
        "targets": targets.astype(np.int32),
        "segment_ids": (np.cumsum(starts, axis=1) * real).astype(np.int32),
        "positions": ((t - piece_start) * real).astype(np.int32),
        "loss_mask": loss.astype(np.int32),
    }


class PackedBatchDataset(grain.IterDataset):
    """Batches of packed rows, (rows, seq_len) each, from a random-access document sequence."""

    def __init__(self, docs: grain.MapDataset, *, seq_len: int, rows: int, open_reader: ReaderFactory,
                 whole_examples: bool = False):
        super().__init__()
        self._docs, self._seq_len, self._rows, self._open_reader = docs, seq_len, rows, open_reader
        self._whole = whole_examples

    def __iter__(self) -> "PackedBatchIterator":
        return PackedBatchIterator(self._docs, self._seq_len, self._rows, self._open_reader, self._whole)

    def __str__(self) -> str:
        return f"PackedBatchDataset(rows={self._rows}, seq_len={self._seq_len}, whole_examples={self._whole})"


class PackedBatchIterator(grain.DatasetIterator):
    def __init__(self, docs: grain.MapDataset, seq_len: int, rows: int, open_reader: ReaderFactory,
                 whole_examples: bool = False):
        super().__init__()
        self._docs, self._seq_len, self._rows, self._open_reader = docs, seq_len, rows, open_reader
        self._whole = whole_examples
        self._position = 0  # document the next input token comes from
        self._offset = 0  # tokens of that document already used as inputs
        self._doc: np.ndarray | None = None  # tokens of document `_position`, once read
        self._reader: Iterator[np.ndarray] | None = None  # yields documents _position + 1, ... once _doc is read

    def _current(self) -> np.ndarray | None:
        """The current document with offset < its length, moving past used-up ones; None at the end."""
        while True:
            if self._doc is None:
                if self._reader is None:
                    self._reader = self._open_reader(self._docs, self._position)
                self._doc = next(self._reader, None)
                if self._doc is None:
                    return None
            if self._offset < len(self._doc):
                return self._doc
            self._doc, self._position, self._offset = None, self._position + 1, 0

    def __next__(self) -> dict[str, np.ndarray]:
        n, seq_len = self._rows * self._seq_len, self._seq_len
        tokens = np.zeros(n + 1, np.int64)
        trained = np.ones(n + 1, bool)
        doc_ids = np.full(n + 1, -1, np.int64)
        filled = 0
        while filled < n and (doc := self._current()) is not None:
            take = min(len(doc) - self._offset, n - filled)
            if self._whole:
                row_left = seq_len - filled % seq_len
                if min(len(doc), seq_len) > row_left:  # does not fit: pad the row, start the next
                    filled += row_left
                    continue
                take = min(len(doc), seq_len)  # truncated to the context; the tail is dropped
            piece = doc[self._offset : self._offset + take]
            if piece.dtype.names:  # an instruction example: tokens and their loss mask
                tokens[filled : filled + take], trained[filled : filled + take] = piece["token"], piece["mask"]
            else:
                tokens[filled : filled + take] = piece
            doc_ids[filled : filled + take] = self._position
            filled += take
            self._offset = len(doc) if self._whole else self._offset + take
        if not (doc_ids[:n] >= 0).any():
            raise StopIteration
        if not self._whole and filled == n and (doc := self._current()) is not None:  # the overlap token: read, not used
            token = doc[self._offset]
            tokens[n], doc_ids[n] = (token["token"], self._position) if doc.dtype.names else (token, self._position)
            trained[n] = bool(token["mask"]) if doc.dtype.names else True
        return rows_from_stream(tokens, doc_ids, self._rows, self._seq_len, trained)

    def get_state(self) -> dict[str, Any]:
        return {"position": int(self._position), "offset": int(self._offset)}

    def set_state(self, state: dict[str, Any]) -> None:
        self._close_reader()
        self._position, self._offset = int(state["position"]), int(state["offset"])

    def _close_reader(self) -> None:
        if self._reader is not None and hasattr(self._reader, "close"):
            self._reader.close()  # stops worker processes
        self._reader, self._doc = None, None

    def close(self) -> None:
        self._close_reader()
        self._closed = True

    def __str__(self) -> str:
        return f"PackedBatchIterator(rows={self._rows}, seq_len={self._seq_len})"
