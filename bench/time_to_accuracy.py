"""Time to accuracy, the DAWNBench way: the training seconds until a recipe's validation accuracy
first reaches a target, the model validated every half epoch (the weights validated are the ones the
recipe keeps: the EMA's when it has one).

    python bench/time_to_accuracy.py --data-dir ../shared/data --dataset bloodmnist --target 0.95
    python bench/time_to_accuracy.py --data-dir ../shared/data --dataset organamnist --target 0.93

Prints JSON: the seconds of training (validation passes excluded) and of wall time (data loading
included) until the target,
and every validation point. The recipe's own schedule runs over its own epochs; the run stops at the
target. Only the validation split is looked at.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time

import torch

from medclassify import TrainConfig
from medclassify.evaluation import classification_metrics, predict_split_sharded
from medclassify.runtime.distributed import Distributed
from medclassify.runtime.environment import select_device
from medclassify.training.trainer import TrainingSession, train_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--dataset", default="bloodmnist")
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--recipe", default="cnn-bn-cpu")
    parser.add_argument("--target", type=float, default=0.95, help="validation accuracy to reach")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        config = TrainConfig.from_recipe(
            args.recipe, dataset=args.dataset, size=args.size, data_dir=args.data_dir, out=tmp, seed=args.seed
        ).validate()
        session = TrainingSession.prepare(config, Distributed(), select_device(config.device), started)
        data, model, loader = session.data, session.model, session.loader
        half = max(1, len(loader) // 2)
        points, training_s, reached = [], 0.0, None
        for epoch in range(1, config.epochs + 1):
            model.train()
            since = time.perf_counter()
            for step, (images, targets) in enumerate(loader, 1):
                train_step(
                    model, images, targets, session.optimizer, session.criterion, session.scaler, session.train_autocast,
                    session.scheduler, config.grad_clip, session.ema, session.mixer, config.channels_last,
                )  # fmt: skip
                if step not in (half, len(loader)):
                    continue
                training_s += time.perf_counter() - since
                y_true, y_prob, _ = predict_split_sharded(
                    session.evaluated,
                    data.splits["val"],
                    config.eval_batch_size,
                    session.normalization,
                    session.device,
                    data.multi_label,
                    session.amp,
                )
                accuracy = classification_metrics(y_true, y_prob, data.task)["acc"]
                points.append(
                    {
                        "epoch": round(epoch - 1 + step / len(loader), 2),
                        "train_s": round(training_s, 1),
                        "wall_s": round(time.perf_counter() - started, 1),
                        "val_acc": round(accuracy, 4),
                    }
                )
                print(json.dumps(points[-1]), flush=True)
                model.train()
                since = time.perf_counter()
                if accuracy >= args.target:
                    reached = points[-1]
                    break
            if reached:
                break
    print(
        json.dumps(
            {
                "benchmark": "time_to_accuracy",
                "dataset": args.dataset,
                "size": args.size,
                "recipe": args.recipe,
                "seed": args.seed,
                "target_val_acc": args.target,
                "reached": reached is not None,
                "train_seconds_to_target": reached["train_s"] if reached else None,
                "wall_seconds_to_target": reached["wall_s"] if reached else None,
                "epochs_to_target": reached["epoch"] if reached else None,
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "machine": platform.machine(),
                "points": points,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
