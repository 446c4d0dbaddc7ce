"""Answer normalisation, exact match, token F1 and the cluster bootstrap (including coverage)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from videopanda_cluster.eval import metrics
from videopanda_cluster.eval.metrics import bootstrap_ci, exact_match, normalize_answer, token_f1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The  Cat's hat!", "cats hat"),
        ("An apple, a pear and THE plum.", "apple pear and plum"),
        ("another theory", "another theory"),  # articles only as whole words
        ("“Quoted” — text…", "quoted text"),  # Unicode punctuation too
        ("  tabs\tand\nnewlines ", "tabs and newlines"),
        ("a an the", ""),
        ("Café", "café"),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


@pytest.mark.parametrize(
    ("pred", "ref", "em", "f1"),
    [
        ("The dog.", "dog", 1.0, 1.0),
        ("dogs", "dog", 0.0, 0.0),
        ("three cats", "two cats", 0.0, 0.5),
        ("cat cat", "cat", 0.0, 2 / 3),  # repeated tokens count once per match
        ("a black cat sits", "the cat is black", 0.0, 2 * (2 / 3) * (2 / 3) / (4 / 3)),
        ("the", "a", 1.0, 1.0),  # both empty once normalised
        ("", "dog", 0.0, 0.0),
        ("dog", "", 0.0, 0.0),
    ],
)
def test_exact_match_and_token_f1(pred, ref, em, f1):
    assert exact_match(pred, ref) == em
    assert token_f1(pred, ref) == pytest.approx(f1)


def _clustered_yes_no(rng: np.random.Generator, p: float, clusters: int, concentration: float):
    """Yes/no marks for ``clusters`` videos of 3-11 questions; each video has its own accuracy
    drawn from Beta with mean ``p`` (lower ``concentration`` = stronger within-video correlation).
    """
    sizes = rng.integers(3, 12, size=clusters)
    video_p = rng.beta(p * concentration, (1 - p) * concentration, size=clusters)
    labels = np.repeat(np.arange(clusters), sizes)
    return (rng.random(labels.size) < video_p[labels]).astype(float), labels


def test_bootstrap_is_deterministic_under_a_seed():
    values, labels = _clustered_yes_no(np.random.default_rng(1), 0.6, 40, 4.0)
    first = bootstrap_ci(values, labels, seed=5)
    assert bootstrap_ci(values, labels, seed=5) == first
    others = {bootstrap_ci(values, labels, seed=s) for s in range(6, 11)}
    assert any(other != first for other in others)
    low, high = first
    assert low < values.mean() < high


def test_bootstrap_edge_cases():
    assert all(math.isnan(x) for x in bootstrap_ci([], []))
    assert bootstrap_ci([0.7], ["v"]) == (0.7, 0.7)
    assert bootstrap_ci([1.0, 1.0, 1.0], ["a", "b", "a"]) == (1.0, 1.0)
    with pytest.raises(ValueError, match="cluster labels"):
        bootstrap_ci([1.0, 0.0], ["a"])
    with pytest.raises(ValueError, match="alpha"):
        bootstrap_ci([1.0, 0.0], alpha=1.5)


def test_wider_interval_for_higher_confidence():
    values, labels = _clustered_yes_no(np.random.default_rng(2), 0.5, 50, 4.0)
    low95, high95 = bootstrap_ci(values, labels, alpha=0.05)
    low80, high80 = bootstrap_ci(values, labels, alpha=0.2)
    assert low95 < low80 < high80 < high95


def test_vectorised_mean_matches_the_general_path(monkeypatch):
    """The fast pooled-mean path, in one chunk or many, equals resampling value by value."""
    values, labels = _clustered_yes_no(np.random.default_rng(3), 0.4, 30, 2.0)
    fast = bootstrap_ci(values, labels, n_resamples=300, seed=9)
    general = bootstrap_ci(
        values, labels, statistic=lambda x: float(np.mean(x)), n_resamples=300, seed=9
    )
    monkeypatch.setattr(metrics, "_CHUNK_DRAWS", 30 * 7)  # 7 resamples per chunk
    chunked = bootstrap_ci(values, labels, n_resamples=300, seed=9)
    assert fast == pytest.approx(general) and fast == pytest.approx(chunked)


def test_other_statistics():
    values = np.append(np.arange(1.0, 21.0), 1000.0)
    low, high = bootstrap_ci(values, statistic=np.median, n_resamples=500)
    assert 1.0 <= low <= np.median(values) <= high <= 20.0  # the outlier does not move it
    assert bootstrap_ci(values, n_resamples=500)[1] > 50  # while the mean chases it


def test_clustered_interval_covers_the_true_accuracy():
    """Over 200 synthetic benchmarks of ~60 videos with correlated answers, the 95% interval
    resampling videos contains the true accuracy about 95% of the time; treating questions as
    independent gives narrower intervals that miss it far more often.
    """
    rng = np.random.default_rng(2024)
    p, reps = 0.6, 200
    clustered_hits = iid_hits = 0
    clustered_width = iid_width = 0.0
    for _ in range(reps):
        values, labels = _clustered_yes_no(rng, p, int(rng.integers(55, 66)), 2.0)
        seed = int(rng.integers(1 << 31))
        low, high = bootstrap_ci(values, labels, n_resamples=500, seed=seed)
        iid_low, iid_high = bootstrap_ci(values, None, n_resamples=500, seed=seed)
        clustered_hits += low <= p <= high
        iid_hits += iid_low <= p <= iid_high
        clustered_width += high - low
        iid_width += iid_high - iid_low
    assert 0.90 <= clustered_hits / reps <= 0.99
    assert iid_hits / reps < 0.85
    assert iid_width < 0.75 * clustered_width
