"""Test accuracy of the named recipes on a real MedMNIST file, with their wall time.

    python bench/accuracy.py --data-dir ../shared/data                     # bloodmnist, 28 px
    python bench/accuracy.py --data-dir D --recipes paper cnn-bn-cpu --dataset organcmnist

Prints JSON: test ACC, AUC, macro-F1, wall time and epochs run per recipe. Hyper-parameters come
from the recipe files only; nothing here looks at the test split before training ends.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time

import torch

from medclassify import TrainConfig, train
from medclassify.config import available_recipes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--dataset", default="bloodmnist")
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument(
        "--recipes", nargs="+", default=["paper", "paper-bn-aug", "cnn-bn-cpu"], choices=sorted(available_recipes())
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="keep the run folders here (default: a temporary folder)")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.recipes:
            out = f"{args.out or tmp}/{args.dataset}_{args.size}_{name}_seed{args.seed}"
            config = TrainConfig.from_recipe(
                name, dataset=args.dataset, size=args.size, data_dir=args.data_dir, out=out, seed=args.seed, quiet=True
            )
            started = time.perf_counter()
            result = train(config)
            test = result.metrics["test"]
            results.append(
                {
                    "recipe": name,
                    "model": config.model,
                    "test_acc": round(test["acc"], 4),
                    "test_auc": round(test["auc"], 4),
                    "test_f1_macro": round(test["f1_macro"], 4),
                    "wall_s": round(time.perf_counter() - started, 1),
                    "epochs_run": result.metrics["epochs_run"],
                    "best_epoch": result.metrics["best_epoch"],
                }
            )
            print(json.dumps(results[-1]), flush=True)
    print(
        json.dumps(
            {
                "benchmark": "accuracy",
                "dataset": args.dataset,
                "size": args.size,
                "seed": args.seed,
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "machine": platform.machine(),
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
