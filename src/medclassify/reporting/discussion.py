"""The rules that turn measurements into the report's conclusions. Each conclusion is a plain
dict (what was compared, the numbers, the verdict) that the report then words in a language.

* Two experiments differ significantly when the 95 % bootstrap interval of the accuracy difference
  (over seeds and test images) excludes 0 and, where both classify the same test images,
  McNemar's exact test gives p < 0.05 for every seed pair.
* When the two sides of a comparison differ in more than the factor compared (another optimiser,
  say, set per experiment), the difference is not attributed to that factor alone.
* A dataset is *harder* than another when its test metrics are lower at the same size and model;
  when the metrics disagree, the report says so instead of choosing.
* An experiment shows *over-fitting* when its validation loss (mean over seeds) reached its minimum
  before the last epoch while the training loss kept falling, and at the end the validation loss is
  at least 10 % above that minimum or at least twice the training loss. With fewer than 3 epochs
  there is no curve to judge, and the report says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..defaults import BOOTSTRAP_RESAMPLES
from ..evaluation.stats import METRICS, bootstrap_difference, mcnemar_per_seed
from ..experiments.results import Experiment
from .settings import differing_settings

SIGNIFICANCE = 0.05
OVERFIT_RISE = 0.10
OVERFIT_GAP = 2.0
OVERFIT_MIN_EPOCHS = 3
FACTORS = ("size", "model", "variant", "dataset")


@dataclass
class Comparison:
    """Two experiments that differ in one factor (``fixed``: the values they share), and the measured
    differences of their test metrics."""

    factor: str
    fixed: dict
    a: Experiment  # the baseline level (first in the study)
    b: Experiment
    paired: bool
    difference: dict  # metric -> {"difference", "ci_low", "ci_high"}
    mcnemar: list[dict] | None  # one test per seed pair; None when the sides classify different images
    also_differs: list[str]  # settings other than the factor that differ between the sides

    @property
    def verdict(self) -> str:
        """ "better" (b beats a), "worse", or "same" (no significant difference)."""
        acc = self.difference["acc"]
        p_ok = self.mcnemar is None or all(test["p_value"] < SIGNIFICANCE for test in self.mcnemar)
        if acc["ci_low"] > 0 and p_ok:
            return "better"
        if acc["ci_high"] < 0 and p_ok:
            return "worse"
        return "same"


def compare(experiments, n_boot: int = BOOTSTRAP_RESAMPLES) -> list[Comparison]:
    """For every factor the study varies, compare each level with the first, the others held fixed."""
    comparisons = []
    for factor in FACTORS:
        levels = list(dict.fromkeys(getattr(e, factor) for e in experiments))
        if len(levels) < 2:
            continue
        others = [f for f in FACTORS if f != factor]
        groups: dict[tuple, dict] = {}
        for e in experiments:
            groups.setdefault(tuple(getattr(e, f) for f in others), {})[getattr(e, factor)] = e
        for key, by_level in groups.items():
            present = [level for level in levels if level in by_level]
            for level in present[1:]:
                a, b = by_level[present[0]], by_level[level]
                paired = factor != "dataset" and len(a.side.y_true) == len(b.side.y_true)
                comparisons.append(
                    Comparison(
                        factor,
                        {f: v for f, v in zip(others, key) if v is not None},  # an axis the study does not use
                        a,
                        b,
                        paired,
                        bootstrap_difference(a.side, b.side, paired, n_boot),
                        mcnemar_per_seed(a.side, b.side, a.seeds, b.seeds) if paired else None,
                        [
                            k
                            for k in differing_settings(a, b)
                            if factor != "variant" or k not in {*a.variant_settings, *b.variant_settings}
                        ],
                    )
                )
    return comparisons


def harder_dataset(comparison: Comparison) -> dict:
    """Which side of a dataset comparison scores lower, metric by metric."""
    lower_b = {m: comparison.difference[m]["difference"] < 0 for m in METRICS}
    if all(lower_b.values()):
        hard, easy, agree = comparison.b, comparison.a, True
    elif not any(lower_b.values()):
        hard, easy, agree = comparison.a, comparison.b, True
    else:
        hard, easy, agree = comparison.b, comparison.a, False
    return {"hard": hard, "easy": easy, "agree": agree, "metrics": {m: (hard.mean(m), easy.mean(m)) for m in METRICS}}


def overfitting(experiment) -> dict:
    """The over-fitting rule on the seed-mean loss curves; ``overfits`` is None when the curves are
    too short (fewer than 3 epochs) to judge."""
    length = min(len(h) for h in experiment.histories)
    val = np.mean([[float(r["val_loss"]) for r in h[:length]] for h in experiment.histories], axis=0)
    train = np.mean([[float(r["train_loss"]) for r in h[:length]] for h in experiment.histories], axis=0)
    best = int(np.argmin(val))
    rise = float(val[-1] / val[best] - 1) if val[best] > 0 else 0.0
    gap = float(val[-1] / train[-1]) if train[-1] > 0 else float("inf")
    verdict = best < len(val) - 1 and train[-1] < train[best] and (rise >= OVERFIT_RISE or gap >= OVERFIT_GAP)
    return {
        "overfits": bool(verdict) if length >= OVERFIT_MIN_EPOCHS else None,
        "best_epoch": best + 1,
        "lowest": float(val[best]),
        "last": float(val[-1]),
        "rise": rise,
        "gap": gap,
        "train_last": float(train[-1]),
        "epochs": len(val),
    }
