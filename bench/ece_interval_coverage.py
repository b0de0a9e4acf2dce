"""How often the report's 95% ECE interval holds a model's true calibration error, by simulation.

    python bench/ece_interval_coverage.py                      # 200 test splits per case and size
    python bench/ece_interval_coverage.py --replicates 60 --resamples 100 --sizes 150

A simulated model's top-label confidence c is drawn on (1/3, 1] and it is right with probability
f(c): f(c) = c (calibrated) or c - shift * sin(pi c) (over-confident in the middle). The true error
is the ECE of f over the same 15 bins on 2 million images. For each test split drawn, the report's
figure (debiased ECE, basic bootstrap interval, :func:`medclassify.evaluation.stats.bootstrap_calibration`)
stands beside the plug-in ECE with its percentile interval (what reports printed before), both from
the same resamples. Prints JSON: per case and split size, the true error, each method's coverage,
the share of splits whose interval holds its own estimate, and the mean estimate.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from medclassify.evaluation.metrics import calibration_error
from medclassify.evaluation.stats import Side, bootstrap_calibration, percentile_bootstrap
from medclassify.runtime.environment import cpu_model

CLASSES = 3
CASES = {"calibrated": 0.0, "slightly over-confident": 0.03, "over-confident": 0.1}


def right_probability(confidence: np.ndarray, shift: float) -> np.ndarray:
    return np.clip(confidence - shift * np.sin(np.pi * confidence), 0.0, 1.0)


def confidences(rng: np.random.Generator, n: int) -> np.ndarray:
    return 1.0 - rng.beta(1.0, 3.0, n) * (1.0 - 1.0 / CLASSES - 1e-3)


def test_split(rng: np.random.Generator, n: int, shift: float) -> Side:
    """Labels and probabilities of ``n`` images: the decided class gets c, the others share 1 - c."""
    confidence = confidences(rng, n)
    decided = rng.integers(0, CLASSES, n)
    right = rng.random(n) < right_probability(confidence, shift)
    labels = np.where(right, decided, (decided + rng.integers(1, CLASSES, n)) % CLASSES)
    scores = np.repeat(((1.0 - confidence) / (CLASSES - 1))[:, None], CLASSES, axis=1)
    scores[np.arange(n), decided] = confidence
    return Side(labels, [scores], "multi-class")


def true_error(shift: float) -> float:
    confidence = confidences(np.random.default_rng(12345), 2_000_000)
    return calibration_error(confidence, right_probability(confidence, shift))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicates", type=int, default=200, help="test splits drawn per case and size")
    parser.add_argument("--resamples", type=int, default=200, help="bootstrap resamples per split")
    parser.add_argument("--sizes", type=int, nargs="+", default=[150, 600])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    args = parser.parse_args()
    results = []
    for case in args.cases:
        shift = CASES[case]
        truth = true_error(shift)
        for n in args.sizes:
            rng = np.random.default_rng(n)
            tally = {
                m: {"covered": 0, "holds_estimate": 0, "estimate": 0.0}
                for m in ("debiased_basic", "plug_in_percentile")
            }
            for replicate in range(args.replicates):
                side = test_split(rng, n, shift)
                estimate = side.resampled_calibration(np.arange(n))
                for method, (value, (low, high)) in {
                    "debiased_basic": (
                        estimate["ece_debiased"],
                        bootstrap_calibration(side, args.resamples, seed=replicate)["ece_debiased"],
                    ),
                    "plug_in_percentile": (
                        estimate["ece"],
                        percentile_bootstrap(side, side.resampled_calibration, args.resamples, seed=replicate)["ece"],
                    ),
                }.items():
                    tally[method]["covered"] += low <= truth <= high
                    tally[method]["holds_estimate"] += low <= value <= high
                    tally[method]["estimate"] += value
            results.append(
                {
                    "case": case,
                    "n_test": n,
                    "true_ece": round(truth, 4),
                    **{
                        method: {
                            "coverage": t["covered"] / args.replicates,
                            "holds_estimate": t["holds_estimate"] / args.replicates,
                            "mean_estimate": round(t["estimate"] / args.replicates, 4),
                        }
                        for method, t in tally.items()
                    },
                }
            )
    print(
        json.dumps(
            {
                "machine": cpu_model(),
                "replicates": args.replicates,
                "resamples": args.resamples,
                "bins": 15,
                "results": results,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
