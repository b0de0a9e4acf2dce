"""Comparisons between experiments: bootstrap intervals of metrics and of their differences, and
McNemar's test.

An experiment's metric varies with the training run (seed) and with the test sample, so every
interval is a two-level bootstrap: each draw resamples the seeds with replacement, then the test
images, and averages the metric over the drawn seeds. With one seed only the images vary, and the
report says that the spread between runs is unknown. Paired comparisons (same test images, e.g. 28
vs 64 px or two models on one dataset) resample the same image indices for both sides (seeds are
drawn for each side on its own: they are separate runs); unpaired ones (two datasets) resample each
test set on its own. McNemar's test compares per-image correctness of one trained model with one
other, so it is run per seed pair, never on seed-averaged predictions.
Intervals are percentile intervals, except for the debiased calibration errors, whose resampled
values are offset by the very bias the estimator removes: they get the basic bootstrap interval
(:func:`bootstrap_calibration`), so that every reported estimate lies inside its own interval.
Point estimates use the scikit-learn metric functions; inside the bootstrap loop the same
definitions are evaluated from precomputed per-image quantities (class decisions, ranks), which is
what makes 1000 resamples affordable. A test checks both give identical numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.stats import binomtest, rankdata

from ..tasks import Task
from .metrics import (
    CALIBRATION_METRICS,
    PLUG_IN_OF,
    REPORTED_CALIBRATION_METRICS,
    accuracy,
    auc_score,
    calibration_errors,
    calibration_metrics,
    macro_f1,
    predicted_labels,
)

METRICS = {"acc": accuracy, "f1_macro": macro_f1, "auc": auc_score}


def _agreement(matrix: np.ndarray, ordinal: bool) -> dict[str, float]:
    """Balanced accuracy, Matthews correlation and Cohen's kappa from a confusion matrix (rows: true)."""
    n = matrix.sum()
    truth, decided = matrix.sum(1).astype(float), matrix.sum(0).astype(float)
    present = truth > 0
    balanced = float(np.mean(np.diag(matrix)[present] / truth[present]))
    trace = float(np.trace(matrix))
    denominator = np.sqrt((n * n - decided @ decided) * (n * n - truth @ truth))
    mcc = float((trace * n - truth @ decided) / denominator) if denominator > 0 else 0.0
    k = len(matrix)
    weights = (np.subtract.outer(np.arange(k), np.arange(k)) ** 2 if ordinal else 1 - np.eye(k)).astype(float)
    expected = np.outer(truth, decided) / n
    kappa = float(1 - (weights * matrix).sum() / (weights * expected).sum()) if (weights * expected).sum() > 0 else 0.0
    return {"balanced_acc": balanced, "mcc": mcc, "kappa": kappa}


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
    task: Task
    _predicted: list[np.ndarray] = field(init=False, repr=False)

    def __post_init__(self):
        self._predicted = [predicted_labels(s, self.task) for s in self.scores]
        self._calibration = (
            None
            if self.task == Task.MULTI_LABEL
            else [self._per_image(s, p) for s, p in zip(self.scores, self._predicted)]
        )

    def _per_image(self, scores: np.ndarray, predicted: np.ndarray) -> dict:
        """What the calibration figures of any resample are made of, per image."""
        y, k = self.y_true, scores.shape[1]
        onehot = np.eye(k)[y]
        brier = (scores[:, -1] - y) ** 2 if self.task == Task.BINARY else ((scores - onehot) ** 2).sum(1)
        return {
            "brier": brier,
            "nll": -np.log(np.clip(scores[np.arange(len(y)), y], 1e-15, 1.0)),
            "confidence": scores[np.arange(len(y)), predicted],
            "correct": predicted == y,
            "onehot": onehot,
            "scores": scores,
        }

    def resampled_calibration(
        self, index: np.ndarray, seeds: Sequence[int] | np.ndarray | None = None
    ) -> dict[str, float]:
        """:data:`CALIBRATION_METRICS` on the images ``index``, averaged over ``seeds`` (as
        :meth:`resampled`; multi-label through the scikit-learn functions)."""
        values: dict[str, list[float]] = {name: [] for name in CALIBRATION_METRICS}
        for k in range(self.n_seeds) if seeds is None else seeds:
            if self._calibration is None:
                draw = calibration_metrics(self.y_true[index], self.scores[k][index], self.task)
            else:
                c, y, p = self._calibration[k], self.y_true[index], self._predicted[k][index]
                classes = c["scores"].shape[1]
                confidence, correct = c["confidence"][index], c["correct"][index]
                top_label = calibration_errors(confidence, correct)
                one_vs_rest = np.array(
                    [calibration_errors(c["scores"][index, j], c["onehot"][index, j] == 1) for j in range(classes)]
                )
                draw = {
                    "brier": float(c["brier"][index].mean()),
                    "nll": float(c["nll"][index].mean()),
                    "ece": top_label[0],
                    "ece_debiased": top_label[1],
                    "classwise_ece": float(one_vs_rest[:, 0].mean()),
                    "classwise_ece_debiased": float(one_vs_rest[:, 1].mean()),
                    **_agreement(
                        np.bincount(y * classes + p, minlength=classes * classes).reshape(classes, classes),
                        self.task == Task.ORDINAL,
                    ),
                }
            for name in CALIBRATION_METRICS:
                values[name].append(draw[name])
        return {name: float(np.nanmean(v)) for name, v in values.items()}

    def metric(self, name: str, index: np.ndarray | None = None) -> float:
        """The scikit-learn metric (MedMNIST definitions), averaged over seeds."""
        chosen = slice(None) if index is None else index
        return float(np.mean([METRICS[name](self.y_true[chosen], s[chosen], self.task) for s in self.scores]))

    @property
    def n_seeds(self) -> int:
        return len(self.scores)

    def draw_seeds(self, rng: np.random.Generator) -> np.ndarray:
        """Seeds resampled with replacement (one seed: always itself, drawing nothing)."""
        return rng.integers(0, self.n_seeds, self.n_seeds) if self.n_seeds > 1 else np.zeros(1, dtype=int)

    def resampled(self, index: np.ndarray, seeds: Sequence[int] | np.ndarray | None = None) -> dict[str, float]:
        """Every metric on the images ``index`` (with repeats), averaged over ``seeds`` (positions in
        ``scores``, with repeats; default: every seed once); besides ACC, macro-F1 and macro-AUC, the
        AUC of each class (``class_auc_I``; not for binary tasks, whose AUC is the positive class's)."""
        y = self.y_true[index]
        values: dict[str, list] = {name: [] for name in METRICS}
        for k in range(self.n_seeds) if seeds is None else seeds:
            scores, predicted = self.scores[k], self._predicted[k]
            p, s = predicted[index], scores[index]
            if self.task == Task.MULTI_LABEL:
                values["acc"].append(float(np.mean(p == y)))
                tp, fp, fn = ((p == 1) & (y == 1)).sum(0), ((p == 1) & (y == 0)).sum(0), ((p == 0) & (y == 1)).sum(0)
                aucs = [_rank_auc(y[:, i] == 1, s[:, i]) for i in range(s.shape[1])]
            else:
                classes = s.shape[1]
                values["acc"].append(float(np.mean(p == y)))
                matrix = np.bincount(y * classes + p, minlength=classes * classes).reshape(classes, classes)
                tp = np.diag(matrix)
                fp, fn = matrix.sum(0) - tp, matrix.sum(1) - tp
                if self.task == Task.BINARY:
                    aucs = [_rank_auc(y == 1, s[:, -1])]
                else:
                    aucs = [_rank_auc(y == i, s[:, i]) for i in range(classes)]
            values["f1_macro"].append(_f1_from_counts(tp, fp, fn))
            valid = [a for a in aucs if not np.isnan(a)]
            values["auc"].append(float(np.mean(valid)) if valid else np.nan)
            if self.task != Task.BINARY:
                for i, value in enumerate(aucs):
                    values.setdefault(f"class_auc_{i}", []).append(value)
        with np.errstate(all="ignore"):  # a class absent from a resample has no AUC: NaN, left out of the interval
            return {name: float(np.nanmean(v)) if not np.isnan(v).all() else np.nan for name, v in values.items()}

    def correct(self, seed: int = 0) -> np.ndarray:
        """Per-image correctness of one seed's model (multi-label: every label right)."""
        hit = self._predicted[seed] == self.y_true
        return hit.all(axis=1) if hit.ndim == 2 else hit


def _interval(draws: list[float]) -> tuple[float, float]:
    if np.isnan(draws).all():  # e.g. the AUC of a class no test image has
        return float("nan"), float("nan")
    low, high = np.nanpercentile(draws, [2.5, 97.5])
    return float(low), float(high)


def percentile_bootstrap(side: Side, resampled, n_boot: int, seed: int) -> dict[str, tuple[float, float]]:
    """95 % percentile intervals of every figure ``resampled(index, seeds)`` returns: each draw
    resamples the seeds, then the test images."""
    rng = np.random.default_rng(seed)
    n = len(side.y_true)
    draws = []
    for _ in range(n_boot):
        seeds = side.draw_seeds(rng)
        draws.append(resampled(rng.integers(0, n, n), seeds))
    return {name: _interval([d[name] for d in draws]) for name in draws[0]}


def bootstrap_interval(side: Side, n_boot: int = 1000, seed: int = 0) -> dict[str, tuple[float, float]]:
    """95 % interval of ACC, macro-F1, macro-AUC and each class's AUC, over seeds and test images."""
    return percentile_bootstrap(side, side.resampled, n_boot, seed)


def bootstrap_calibration(side: Side, n_boot: int = 1000, seed: int = 0) -> dict[str, tuple[float, float]]:
    """95 % interval of every calibration and agreement figure a study reports
    (:data:`REPORTED_CALIBRATION_METRICS`), over seeds and test images.

    A debiased calibration error gets the basic bootstrap interval, not the percentile one: a
    resample's debiased figure estimates the plug-in figure of the test split (the resampling
    population), which lies above the population's by the bias, so the percentile interval would sit
    above its own estimate. Reflected around the estimate, estimate - (draw - plug-in), the draws'
    spread carries over without their offset (floored at 0). ``bench/ece_interval_coverage.py``
    measures the coverage this gives."""
    intervals = percentile_bootstrap(side, side.resampled_calibration, n_boot, seed)
    estimate = side.resampled_calibration(np.arange(len(side.y_true)))
    for name, plug_in in PLUG_IN_OF.items():
        low, high = intervals[name]
        offset = estimate[name] + estimate[plug_in]
        intervals[name] = (max(0.0, offset - high), max(0.0, offset - low))
    return {name: intervals[name] for name in REPORTED_CALIBRATION_METRICS}


def bootstrap_difference(a: Side, b: Side, paired: bool, n_boot: int = 1000, seed: int = 0) -> dict:
    """``b - a`` for every metric: the observed difference and its 95 % percentile interval, over
    seeds (each side's own) and test images (shared when ``paired``)."""
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_boot):
        seeds_a, seeds_b = a.draw_seeds(rng), b.draw_seeds(rng)
        index_a = rng.integers(0, len(a.y_true), len(a.y_true))
        index_b = index_a if paired else rng.integers(0, len(b.y_true), len(b.y_true))
        draw_a, draw_b = a.resampled(index_a, seeds_a), b.resampled(index_b, seeds_b)
        draws.append({name: draw_b[name] - draw_a[name] for name in METRICS})
    result = {}
    for name in METRICS:
        low, high = _interval([d[name] for d in draws])
        result[name] = {"difference": b.metric(name) - a.metric(name), "ci_low": low, "ci_high": high}
    return result


def mcnemar(a: Side, b: Side, seed_a: int = 0, seed_b: int = 0) -> dict:
    """Exact McNemar test on per-image correctness of one model of each side (their seeds'
    positions): a binomial test on the discordant pairs."""
    correct_a, correct_b = a.correct(seed_a), b.correct(seed_b)
    only_a = int(np.sum(correct_a & ~correct_b))
    only_b = int(np.sum(~correct_a & correct_b))
    p_value = binomtest(only_b, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    return {"only_a_correct": only_a, "only_b_correct": only_b, "p_value": float(p_value)}


def mcnemar_per_seed(a: Side, b: Side, seeds_a: list[int], seeds_b: list[int]) -> list[dict]:
    """McNemar per seed pair: the same seed on both sides where both have it, else by position."""
    shared = [s for s in seeds_a if s in seeds_b]
    pairs = [(seeds_a.index(s), seeds_b.index(s)) for s in shared] or list(zip(range(a.n_seeds), range(b.n_seeds)))
    return [{**mcnemar(a, b, i, j), "seed_a": seeds_a[i], "seed_b": seeds_b[j]} for i, j in pairs]
