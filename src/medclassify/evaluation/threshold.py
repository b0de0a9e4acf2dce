"""Operating points: the probability threshold at which a binary decision (or one class against the
rest) is made, chosen on the validation split by a clinical rule, and the test split's sensitivity,
specificity, PPV and NPV at it with Wilson 95 % intervals.

Rules (``--threshold``): ``youden`` (the largest sensitivity + specificity - 1),
``sensitivity=0.95`` (the highest threshold whose validation sensitivity is at least 0.95: the most
specific screening rule that still finds 95 % of the positives), ``specificity=0.9`` (the lowest
threshold whose validation specificity is at least 0.9), or a number (that threshold as it is). An
image is positive when its probability is at least the threshold.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import binomtest
from sklearn.metrics import roc_curve

from ..errors import ConfigError


def parse_rule(rule: str) -> tuple[str, float]:
    """``youden``, ``sensitivity=X``, ``specificity=X`` (0 < X <= 1) or a threshold in [0, 1]; the
    rule's kind and its number (NaN for youden, which has none)."""
    text = rule.strip().lower()
    if text == "youden":
        return "youden", math.nan
    name, _, value = text.partition("=")
    try:
        number = float(value if value else name)
    except ValueError:
        number = math.nan
    if value and name in ("sensitivity", "specificity") and 0 < number <= 1:
        return name, number
    if not value and 0 <= number <= 1:
        return "fixed", number
    raise ConfigError(
        f"threshold {rule}: expected youden, sensitivity=X, specificity=X (0 < X <= 1) or a probability from 0 to 1",
        parameters=("threshold",),
    )


def choose_threshold(positive: np.ndarray, score: np.ndarray, rule: str) -> float:
    """The threshold the rule picks on these (validation) labels and scores."""
    kind, value = parse_rule(rule)
    if kind == "fixed":
        return float(value)
    positive = np.asarray(positive).astype(bool)
    if positive.all() or not positive.any():
        raise ConfigError(
            f"threshold {rule}: the validation split needs positive and negative images to choose a threshold",
            parameters=("threshold",),
        )
    fpr, tpr, thresholds = roc_curve(positive, score)
    thresholds = np.minimum(thresholds, 1.0)  # scikit-learn's first threshold is +inf: nothing positive
    if kind == "youden":
        return float(thresholds[int(np.argmax(tpr - fpr))])
    if kind == "sensitivity":  # thresholds fall along the curve, so the first that reaches it is the highest
        return float(thresholds[int(np.argmax(tpr >= value - 1e-12))])
    allowed = np.flatnonzero(1 - fpr >= value - 1e-12)
    return float(thresholds[allowed[-1]])


def wilson_interval(successes: int, total: int) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion (NaN, NaN without any trial)."""
    if total == 0:
        return math.nan, math.nan
    interval = binomtest(successes, total).proportion_ci(0.95, method="wilson")
    return float(interval.low), float(interval.high)


def operating_point(positive: np.ndarray, score: np.ndarray, threshold: float) -> dict:
    """Counts, and sensitivity, specificity, PPV and NPV with their Wilson intervals, at ``threshold``."""
    positive = np.asarray(positive).astype(bool)
    decided = np.asarray(score) >= threshold
    tp, fn = int(np.sum(decided & positive)), int(np.sum(~decided & positive))
    fp, tn = int(np.sum(decided & ~positive)), int(np.sum(~decided & ~positive))
    result: dict[str, float | list[float]] = {"threshold": float(threshold), "tp": tp, "fp": fp, "tn": tn, "fn": fn}
    for name, hits, total in (
        ("sensitivity", tp, tp + fn),
        ("specificity", tn, tn + fp),
        ("ppv", tp, tp + fp),
        ("npv", tn, tn + fn),
    ):
        low, high = wilson_interval(hits, total)
        result[name] = hits / total if total else math.nan
        result[f"{name}_ci"] = [low, high]
    return result
