"""Split conformal prediction sets over a model's class probabilities.

Calibrated on held-out images (the validation split), a set-valued prediction covers the true class
of a new image with probability at least ``1 - alpha``, whatever the model, as long as the new image
is exchangeable with the calibration images (Vovk et al., 2005; Angelopoulos & Bates, 2021). Scores:

* ``lac`` (Sadinle et al., 2019): a class is in the set when its probability is at least ``1 - q``.
  The smallest sets on average; a set may be empty when no class is likely enough.
* ``aps`` (Romano et al., 2020): the most probable classes until their probabilities add up to
  ``q``. Never empty, so it covers at least as often as the model is right.

The scores on the calibration split come from MAPIE (``SplitConformalClassifier`` over the stored
probabilities); ``q`` is their conformal quantile, one number that travels with the model bundle to
``predict``, ``serve`` and the ONNX graph, where :func:`prediction_sets` applies it (tested to give
MAPIE's own sets). ``mondrian`` computes one ``q`` per class from that class's calibration images
(class-conditional conformal, Vovk 2003), so that each class, rare ones included, gets the coverage.
"""

from __future__ import annotations

import math

import numpy as np

from ..defaults import CONFORMAL_SCORES
from ..errors import ConfigError


def _mapie(y_prob: np.ndarray, alpha: float, score: str, seed: int = 0):
    from mapie.classification import SplitConformalClassifier
    from sklearn.base import BaseEstimator, ClassifierMixin

    class StoredProbabilities(ClassifierMixin, BaseEstimator):
        """A fitted classifier whose input rows are already the class probabilities, so that MAPIE
        can conformalise a model that ran elsewhere."""

        def __init__(self, n_classes: int = 2):
            self.n_classes = n_classes

        def fit(self, X, y=None):
            self.classes_ = np.arange(self.n_classes)
            return self

        def predict_proba(self, X) -> np.ndarray:
            return np.asarray(X, dtype=np.float64)

        def predict(self, X) -> np.ndarray:
            return np.asarray(X).argmax(axis=1)

    return SplitConformalClassifier(
        StoredProbabilities(y_prob.shape[1]).fit(y_prob),
        confidence_level=1 - alpha,
        conformity_score=score,
        prefit=True,
        random_state=seed,
    )


def conformal_quantile(scores: np.ndarray, alpha: float) -> float:
    """The ``ceil((n + 1)(1 - alpha)) / n`` empirical quantile of ``n`` calibration scores: the
    smallest threshold that covers a new exchangeable score with probability ``>= 1 - alpha``
    (``inf`` when there are too few scores for that level)."""
    n = len(scores)
    rank = math.ceil((n + 1) * (1 - alpha))
    if n == 0 or rank > n:
        return math.inf
    return float(np.sort(scores)[rank - 1])


def calibration_scores(y_prob: np.ndarray, y_true: np.ndarray, score: str = "lac", seed: int = 0) -> np.ndarray:
    """MAPIE's conformity score of each calibration image's true class (``aps``: randomised, with ``seed``)."""
    check_score(score)
    # the scores do not depend on the level; MAPIE only needs one to be built
    model = _mapie(y_prob, 0.1, score, seed).conformalize(y_prob, np.asarray(y_true))
    return np.asarray(model.conformity_scores, dtype=np.float64).reshape(-1)


def fit_conformal(
    y_prob: np.ndarray, y_true: np.ndarray, alpha: float, score: str = "lac", mondrian: bool = False
) -> dict:
    """The conformal thresholds for ``1 - alpha`` coverage from calibration probabilities: a dict
    that a model bundle stores (``alpha``, ``score``, ``threshold`` and, with ``mondrian``, one
    threshold per class in ``class_thresholds``). A threshold is None when there are too few
    calibration images for the level (in JSON as in the bundle): every class is then kept."""
    check_level(alpha)
    scores = calibration_scores(y_prob, y_true, score)
    fitted = {
        "alpha": float(alpha),
        "score": score,
        "threshold": _stored(conformal_quantile(scores, alpha)),
        "mondrian": mondrian,
    }
    if mondrian:
        labels = np.asarray(y_true)
        fitted["class_thresholds"] = [
            _stored(conformal_quantile(scores[labels == k], alpha)) for k in range(y_prob.shape[1])
        ]
    fitted["n_calibration"] = len(scores)
    return fitted


def _stored(threshold: float) -> float | None:
    return None if math.isinf(threshold) else threshold


def check_level(alpha: float) -> None:
    """A one-line :class:`ConfigError` unless ``alpha`` is a miscoverage level strictly between 0 and 1."""
    if not 0 < alpha < 1:
        raise ConfigError(
            f"conformal must lie between 0 and 1 (0.1 for 90% sets), got {alpha}", parameters=("conformal",)
        )


def check_score(score: str) -> None:
    if score not in CONFORMAL_SCORES:
        raise ConfigError(f"unknown conformal score '{score}': expected one of {', '.join(CONFORMAL_SCORES)}")


def prediction_sets(y_prob: np.ndarray, fitted: dict) -> np.ndarray:
    """Boolean ``n x classes`` membership of each class in each image's set, for thresholds from
    :func:`fit_conformal`: LAC keeps the classes whose ``1 - p`` is at most the threshold, APS the most
    probable classes until the probability before the class reaches the threshold (MAPIE's sets with
    ``include_last_label``)."""
    y_prob = np.asarray(y_prob, dtype=np.float64)
    stored = fitted["class_thresholds"] if fitted.get("mondrian") else [fitted["threshold"]]
    threshold = np.array([math.inf if t is None else t for t in stored])
    if fitted["score"] == "lac":
        return 1 - y_prob <= threshold
    order = np.argsort(-y_prob, axis=1, kind="stable")
    ranked = np.take_along_axis(y_prob, order, axis=1)
    before = np.cumsum(ranked, axis=1) - ranked
    ranked_in = before < np.take_along_axis(np.broadcast_to(threshold, y_prob.shape), order, axis=1)
    sets = np.zeros_like(ranked_in)
    np.put_along_axis(sets, order, ranked_in, axis=1)
    return sets


def coverage_report(sets: np.ndarray, y_true: np.ndarray, class_names: list[str], alpha: float) -> dict:
    """Empirical coverage of prediction ``sets`` on labelled images with its Wilson interval, the mean
    set size, coverage by set size and by true class, and the classes whose coverage interval lies
    wholly below the target."""
    from .threshold import wilson_interval

    y_true = np.asarray(y_true)
    covered = sets[np.arange(len(y_true)), y_true]
    sizes = sets.sum(axis=1)
    target = 1 - alpha

    def summary(mask: np.ndarray) -> dict:
        hits, total = int(covered[mask].sum()), int(mask.sum())
        low, high = wilson_interval(hits, total)
        return {"n": total, "coverage": hits / total if total else float("nan"), "ci": [low, high]}

    per_class = {name: summary(y_true == k) for k, name in enumerate(class_names)}
    return {
        "target": target,
        **summary(np.ones(len(y_true), dtype=bool)),
        "mean_size": float(sizes.mean()),
        "empty_share": float((sizes == 0).mean()),
        "by_size": {str(size): summary(sizes == size) for size in np.unique(sizes).tolist()},
        "by_class": per_class,
        "classes_below_target": [name for name, part in per_class.items() if part["n"] and part["ci"][1] < target],
    }


def conformal_summary(record: dict) -> str:
    """One line on a calibrated run's test sets: coverage and its interval against the target, the mean
    set size, whether the test split falls short of the target (conformal coverage holds for images
    exchangeable with the calibration images, so a shortfall means they are not), and the classes
    whose coverage interval lies below the target."""
    test = record["test"]
    low, high = test["ci"]
    line = (
        f"conformal {record['score']} sets at {test['target']:.0%} (fitted on {record['fitted_on']}): test coverage "
        f"{test['coverage']:.4f} (95% CI {low:.4f}-{high:.4f}), mean set size {test['mean_size']:.2f}"
    )
    if high < test["target"]:
        line += "; below the target, so the test images are unlike the calibration images"
    if test["classes_below_target"]:
        line += "; classes covered less than the target: " + ", ".join(test["classes_below_target"])
    return line
