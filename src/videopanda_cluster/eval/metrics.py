"""Offline answer metrics (exact match, token F1) and cluster bootstrap confidence intervals."""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_ASCII_PUNCT = frozenset(string.punctuation)
# Draws per chunk of the vectorised mean bootstrap (resamples x clusters), bounding memory.
_CHUNK_DRAWS = 4_000_000


def _is_punctuation(ch: str) -> bool:
    return ch in _ASCII_PUNCT or unicodedata.category(ch).startswith("P")


def normalize_answer(text: str) -> str:
    """Lowercase, delete punctuation, drop the articles a/an/the and collapse whitespace.

    As SQuAD's evaluation script, punctuation is deleted rather than spaced (``don't`` -> ``dont``);
    Unicode punctuation counts too.
    """
    text = "".join(ch for ch in text.lower() if not _is_punctuation(ch))
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when both answers are equal after :func:`normalize_answer`, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    """Harmonic mean of token precision and recall over normalised answers (SQuAD style).

    When either side has no tokens, the score is 1.0 if both are empty and 0.0 otherwise.
    """
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    clusters: Sequence[object] | np.ndarray | None = None,
    statistic: Callable[[np.ndarray], float] = np.mean,
    n_resamples: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile ``1 - alpha`` interval of ``statistic`` under a cluster bootstrap.

    Each resample draws whole clusters (e.g. all questions about one video) with replacement and
    pools their values, so correlation inside a cluster widens the interval as it should.
    ``clusters=None`` treats every value as its own cluster (the ordinary bootstrap). The same
    ``seed`` gives the same interval. No values gives ``(nan, nan)``.
    """
    data = np.asarray(values, dtype=float)
    if data.ndim != 1:
        raise ValueError(f"values must be one-dimensional, got shape {data.shape}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    if data.size == 0:
        return (float("nan"), float("nan"))
    labels = np.arange(data.size) if clusters is None else _cluster_labels(clusters, data.size)
    rng = np.random.default_rng(seed)
    if statistic is np.mean:
        stats = _resampled_means(data, labels, n_resamples, rng)
    else:
        stats = _resampled_statistic(data, labels, statistic, n_resamples, rng)
    low, high = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return (float(low), float(high))


def _cluster_labels(clusters: Sequence[object] | np.ndarray, size: int) -> np.ndarray:
    """Integer codes ``0..k-1`` for the cluster of each value."""
    keys = list(clusters)
    if len(keys) != size:
        raise ValueError(f"got {size} values but {len(keys)} cluster labels")
    codes: dict[object, int] = {}
    return np.array([codes.setdefault(key, len(codes)) for key in keys], dtype=np.int64)


def _resampled_means(
    data: np.ndarray, labels: np.ndarray, n_resamples: int, rng: np.random.Generator
) -> np.ndarray:
    """Pooled means of resampled clusters, from per-cluster sums and sizes (vectorised)."""
    sums = np.bincount(labels, weights=data)
    sizes = np.bincount(labels).astype(float)
    k = sums.size
    chunk = max(1, _CHUNK_DRAWS // k)
    out = np.empty(n_resamples)
    for start in range(0, n_resamples, chunk):
        stop = min(n_resamples, start + chunk)
        picks = rng.integers(0, k, size=(stop - start, k))
        out[start:stop] = sums[picks].sum(axis=1) / sizes[picks].sum(axis=1)
    return out


def _resampled_statistic(
    data: np.ndarray,
    labels: np.ndarray,
    statistic: Callable[[np.ndarray], float],
    n_resamples: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Any statistic of the pooled values of resampled clusters (one resample at a time)."""
    order = np.argsort(labels, kind="stable")
    groups = np.split(data[order], np.cumsum(np.bincount(labels))[:-1])
    k = len(groups)
    return np.array(
        [
            statistic(np.concatenate([groups[i] for i in rng.integers(0, k, size=k)]))
            for _ in range(n_resamples)
        ]
    )
