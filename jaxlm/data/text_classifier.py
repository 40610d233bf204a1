"""Hashed word n-gram logistic regression, numpy only: the text classifier data_prep's quality
and toxicity filters and jaxlm.eval's toxicity scorer share (data_prep may import this module).

Features: log(1 + count) of hashed word 1- and 2-grams (`texthash.shingle_hashes`), each row
L2-normalised. Training: full-batch Adam on the mean log-loss + l2/2 |w|^2, deterministic.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxlm.data.texthash import shingle_hashes


def features(texts: list[str], bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sparse (docs x 2^bits) matrix as (doc (nnz,), bucket (nnz,), value (nnz,) float32):
    log(1 + count) of hashed word 1- and 2-grams, each row L2-normalised."""
    doc_parts, bucket_parts = [], []
    for n in (1, 2):
        hashes, offsets = shingle_hashes(texts, n, short_docs=False)
        doc_parts.append(np.repeat(np.arange(len(texts), dtype=np.uint64), np.diff(offsets)))
        bucket_parts.append(hashes >> np.uint64(64 - bits))
    key = (np.concatenate(doc_parts) << np.uint64(bits)) | np.concatenate(bucket_parts)
    key, counts = np.unique(key, return_counts=True)
    doc = (key >> np.uint64(bits)).astype(np.int64)
    bucket = (key & np.uint64((1 << bits) - 1)).astype(np.int64)
    value = np.log1p(counts).astype(np.float32)
    norm = np.sqrt(np.bincount(doc, weights=value * value, minlength=len(texts)))
    return doc, bucket, (value / np.maximum(norm[doc], 1e-12)).astype(np.float32)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))


@dataclasses.dataclass
class LogisticModel:
    weights: np.ndarray  # (2^bits,) float32
    bias: float

    def scores(self, texts: list[str]) -> np.ndarray:
        """(len(texts),) P(the positive class) of each text."""
        bits = int(np.log2(len(self.weights)))
        doc, bucket, value = features(texts, bits)
        logits = np.bincount(doc, weights=value * self.weights[bucket], minlength=len(texts)) + self.bias
        return _sigmoid(logits)


def train_logistic(texts: list[str], labels: np.ndarray, bits: int = 18, l2: float = 1e-4,
                   steps: int = 300, lr: float = 0.1) -> LogisticModel:
    """Full-batch Adam on the mean log-loss + l2/2 |w|^2; deterministic."""
    doc, bucket, value = features(texts, bits)
    y = labels.astype(np.float64)
    n, dim = len(texts), 1 << bits
    w, b = np.zeros(dim), 0.0
    m, v, mb, vb = np.zeros(dim), np.zeros(dim), 0.0, 0.0
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    for t in range(1, steps + 1):
        p = _sigmoid(np.bincount(doc, weights=value * w[bucket], minlength=n) + b)
        err = (p - y) / n  # d(mean log-loss)/d(logit)
        grad = np.bincount(bucket, weights=value * err[doc], minlength=dim) + l2 * w
        grad_b = err.sum()
        m = beta1 * m + (1 - beta1) * grad
        v = beta2 * v + (1 - beta2) * grad * grad
        mb = beta1 * mb + (1 - beta1) * grad_b
        vb = beta2 * vb + (1 - beta2) * grad_b * grad_b
        step = lr * np.sqrt(1 - beta2**t) / (1 - beta1**t)
        w -= step * m / (np.sqrt(v) + eps)
        b -= step * mb / (np.sqrt(vb) + eps)
    return LogisticModel(w.astype(np.float32), float(b))


def save(path: str, model: LogisticModel, kind: str) -> None:
    """Weights, bias and a `kind` tag (what the classifier scores) in one .npz."""
    np.savez(path, weights=model.weights, bias=np.float64(model.bias), kind=np.array(kind))


def load(path: str, kind: str) -> LogisticModel:
    """A model `save` wrote with this `kind`; ValueError when the file is anything else."""
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile) or str(data["kind"]) != kind:
            raise ValueError(f"not a {kind} classifier")
        return LogisticModel(data["weights"], float(data["bias"]))
    except (OSError, KeyError, ValueError) as e:
        raise ValueError(f"{path!r} is not a {kind} classifier ({e})") from None
