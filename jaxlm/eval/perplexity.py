"""Perplexity and bits per byte of a text file or of a dataset's validation split.

    bits_per_byte = total NLL (nats) / ln 2 / UTF-8 bytes of the scored text

Perplexity per token depends on the tokenizer; bits per byte does not, so it compares models with
different vocabularies. Long texts are scored in sliding windows of the model's context: every
token is scored once, and (stride s) each token after the first window sees at least window - s
tokens of context; the default stride is window / 2.

A text's first token is context only unless the dataset puts BOS before documents (then BOS is
the context and every text token is scored): training never predicts a document's first token.
Its bytes are left out of the byte count so numerator and denominator cover the same text.
Validation documents are scored with their EOS (as the training loss is); bytes are those of the
decoded text.
"""

from __future__ import annotations

import math
from typing import Optional

from jaxlm.data.format import DataFormatError, record_tokens
from jaxlm.data.shards import DocumentSource, open_dataset
from jaxlm.eval.errors import EvalError
from jaxlm.eval.loading import EvalModel
from jaxlm.eval.scoring import Scorer, rolling_windows


def _summary(source: str, nll: float, tokens: int, n_bytes: int, window: int, stride: int, **extra) -> dict:
    return dict(source=source, tokens_scored=tokens, bytes_scored=n_bytes, nll_nats=nll,
                loss=nll / max(tokens, 1), perplexity=math.exp(nll / max(tokens, 1)),
                bits_per_byte=nll / math.log(2) / max(n_bytes, 1), window=window, stride=stride, **extra)


def _check_stride(em: EvalModel, stride: Optional[int]) -> int:
    stride = stride or max(1, em.window // 2)
    if not 0 < stride <= em.window:
        raise EvalError(f"stride must be between 1 and the model's context ({em.window}), got {stride}")
    return stride


def text_perplexity(em: EvalModel, text: str, *, stride: Optional[int] = None, source: str = "text",
                    batch_size: int = 8) -> dict:
    if em.tokenizer is None:
        raise EvalError("perplexity of a text needs the model's tokenizer")
    stride = _check_stride(em, stride)
    tok = em.tokenizer
    ids = tok.prefix() + tok.encode(text)
    if len(ids) < 2:
        raise EvalError(f"{source} is too short to score: it has {len(ids)} token(s), at least 2 are needed")
    n_bytes = len(text.encode("utf-8"))
    if not tok.prefix():  # the first token is context only; so are its bytes
        n_bytes -= len(tok.decode(ids[:1]).encode("utf-8"))
    logprob, count = Scorer(em.graphdef, em.params, em.window, batch_size).rolling(ids, stride)
    return _summary(source, -logprob, count, n_bytes, em.window, stride)


def dataset_perplexity(em: EvalModel, dataset_dir: str, *, split: str = "val", stride: Optional[int] = None,
                       max_documents: Optional[int] = None, batch_size: int = 8) -> dict:
    """Over the documents of a data_prep split (all of them, or the first max_documents)."""

    if em.tokenizer is None:
        raise EvalError("bits per byte of a dataset needs its tokenizer to count the bytes")
    stride = _check_stride(em, stride)
    try:
        docs = DocumentSource(open_dataset(dataset_dir, em.model_cfg.vocab_size), split)
    except DataFormatError as e:
        raise EvalError(str(e)) from None
    tok = em.tokenizer
    specials = {t for t in (tok.bos_id, tok.eos_id) if t is not None}
    scorer = Scorer(em.graphdef, em.params, em.window, batch_size)
    requests, n_bytes = [], 0
    count = len(docs) if max_documents is None else min(max_documents, len(docs))
    for i in range(count):
        ids = [int(t) for t in record_tokens(docs[i])]  # instruction records: the whole conversation
        if len(ids) < 2:
            continue
        # rolling() scores tokens 1.., i.e. all but the first (BOS when the dataset has one)
        text_ids = [t for t in ids[1:] if t not in specials]
        n_bytes += len(tok.decode(text_ids).encode("utf-8"))
        requests.extend(rolling_windows(ids, em.window, stride))
    nll, tokens = 0.0, 0
    for s in scorer.score(requests):
        nll -= s.logprob
        tokens += s.tokens
    return _summary(f"{dataset_dir}:{split}", nll, tokens, n_bytes, em.window, stride, documents=count)

