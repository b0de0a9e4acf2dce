"""Comparisons between experiments: bootstrap intervals of metrics and of their differences, and
McNemar's test.

Paired comparisons (same test images, e.g. 28 vs 64 px or two models on one dataset) resample the
same image indices for both sides; unpaired ones (two datasets) resample each test set on its own.
Point estimates use the scikit-learn metric functions; inside the bootstrap loop the same
definitions are evaluated from precomputed per-image quantities (class decisions, ranks), which is
what makes 1000 resamples affordable. A test checks both give identical numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.stats import binomtest, rankdata

from ..evaluation.metrics import BINARY, MULTI_LABEL, accuracy, auc_score, macro_f1, predicted_labels

METRICS = {"acc": accuracy, "f1_macro": macro_f1, "auc": auc_score}


def _f1_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> float:
    denominator = 2 * tp + fp + fn
    return float(np.mean(np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0)))


def _rank_auc(positive: np.ndarray, score: np.ndarray) -> float:
    """AUC as the Mann-Whitney statistic (ties count one half), NaN without both classes."""
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return np.nan
    ranks = rankdata(score)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@dataclass
class Side:
    """One experiment's test labels and every seed's class probabilities."""

    y_true: np.ndarray
    scores: list[np.ndarray]  # one probability matrix per seed
    task: str
    _predicted: list[np.ndarray] = field(init=False, repr=False)

    def __post_init__(self):
        self._predicted = [predicted_labels(s, self.task) for s in self.scores]

    def metric(self, name: str, index: np.ndarray | None = None) -> float:
        """The scikit-learn metric (MedMNIST definitions), averaged over seeds."""
        index = slice(None) if index is None else index
        return float(np.mean([METRICS[name](self.y_true[index], s[index], self.task) for s in self.scores]))

    def resampled(self, index: np.ndarray) -> dict[str, float]:
        """Every metric on the images ``index`` (with repeats), averaged over seeds."""
        y = self.y_true[index]
        values = {name: [] for name in METRICS}
        for scores, predicted in zip(self.scores, self._predicted):
            p, s = predicted[index], scores[index]
            if self.task == MULTI_LABEL:
                values["acc"].append(float(np.mean(p == y)))
                tp, fp, fn = ((p == 1) & (y == 1)).sum(0), ((p == 1) & (y == 0)).sum(0), ((p == 0) & (y == 1)).sum(0)
                aucs = [_rank_auc(y[:, i] == 1, s[:, i]) for i in range(s.shape[1])]
            else:
                k = s.shape[1]
                values["acc"].append(float(np.mean(p == y)))
                matrix = np.bincount(y * k + p, minlength=k * k).reshape(k, k)
                tp = np.diag(matrix)
                fp, fn = matrix.sum(0) - tp, matrix.sum(1) - tp
                if self.task == BINARY:
                    aucs = [_rank_auc(y == 1, s[:, -1])]
                else:
                    aucs = [_rank_auc(y == i, s[:, i]) for i in range(k)]
            values["f1_macro"].append(_f1_from_counts(tp, fp, fn))
            valid = [a for a in aucs if not np.isnan(a)]
            values["auc"].append(float(np.mean(valid)) if valid else np.nan)
        return {name: float(np.mean(v)) for name, v in values.items()}

    def correct(self) -> np.ndarray:
        """Per-image correctness of the seed-averaged probabilities (multi-label: every label right)."""
        hit = predicted_labels(np.mean(self.scores, axis=0), self.task) == self.y_true
        return hit.all(axis=1) if hit.ndim == 2 else hit


def _interval(draws: list[float]) -> tuple[float, float]:
    low, high = np.nanpercentile(draws, [2.5, 97.5])
    return float(low), float(high)


def bootstrap_interval(side: Side, n_boot: int = 1000, seed: int = 0) -> dict[str, tuple[float, float]]:
    """95 % percentile interval of every metric, resampling test images with replacement."""
    rng = np.random.default_rng(seed)
    n = len(side.y_true)
    draws = [side.resampled(rng.integers(0, n, n)) for _ in range(n_boot)]
    return {name: _interval([d[name] for d in draws]) for name in METRICS}


def bootstrap_difference(a: Side, b: Side, paired: bool, n_boot: int = 1000, seed: int = 0) -> dict:
    """``b - a`` for every metric: the observed difference and its 95 % percentile interval."""
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_boot):
        index_a = rng.integers(0, len(a.y_true), len(a.y_true))
        index_b = index_a if paired else rng.integers(0, len(b.y_true), len(b.y_true))
        draw_a, draw_b = a.resampled(index_a), b.resampled(index_b)
        draws.append({name: draw_b[name] - draw_a[name] for name in METRICS})
    result = {}
    for name in METRICS:
        low, high = _interval([d[name] for d in draws])
        result[name] = {"difference": b.metric(name) - a.metric(name), "ci_low": low, "ci_high": high}
    return result


def mcnemar(a: Side, b: Side) -> dict:
    """Exact McNemar test on per-image correctness: a binomial test on the discordant pairs."""
    correct_a, correct_b = a.correct(), b.correct()
    only_a = int(np.sum(correct_a & ~correct_b))
    only_b = int(np.sum(~correct_a & correct_b))
    p_value = binomtest(only_b, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    return {"only_a_correct": only_a, "only_b_correct": only_b, "p_value": float(p_value)}
