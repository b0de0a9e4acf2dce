"""Training throughput with 1, 2, ... data-parallel processes (torchrun + DistributedDataParallel),
the same recipe and effective batch in every setting, one after another on this machine.

    python bench/scaling.py                                             # synthcells, 1 and 2 CPU processes
    python bench/scaling.py --dataset bloodmnist --data-dir ../shared/data
    python bench/scaling.py --dataset tissuemnist --size 224 --model resnet18 --nproc 1 2 4 8 --device cuda   # a GPU machine

Prints JSON: training images/s per process count (the last epoch's, after warm-up), the speed-up
over one process, and the test accuracy of each run. On a CPU, N processes split the cores among
themselves (each gets cores/N threads), so the total compute does not grow: with 2 cores, 2
processes can at best match 1 process with 2 threads, and the gradient all-reduce comes on top.
Data parallelism pays off when each process brings its own device (one GPU each) or machine.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from medclassify import __version__


def run(nproc: int, args, folder: Path) -> dict:
    out = folder / f"nproc{nproc}"
    command = [
        sys.executable,
        "-m",
        "medclassify",
        "train",
        "--nproc",
        str(nproc),
        "--dataset",
        args.dataset,
        "--size",
        str(args.size),
        "--model",
        args.model,
        "--epochs",
        str(args.epochs),
        "--batch-size",
        str(args.batch_size),
        "--device",
        args.device,
        "--out",
        str(out),
        "--quiet",
    ]
    if args.data_dir:
        command += ["--data-dir", args.data_dir]
    env = {**os.environ, "MEDCLASSIFY_DATA": os.environ.get("MEDCLASSIFY_DATA", str(folder / "data"))}
    subprocess.run(command, check=True, env=env, capture_output=True, text=True)
    with open(out / "history.csv") as f:
        history = list(csv.DictReader(f))
    metrics = json.loads((out / "metrics.json").read_text())
    return {
        "processes": nproc,
        "images_per_s": float(history[-1]["images_per_s"]),
        "epoch_seconds": float(history[-1]["seconds"]),
        "test_acc": metrics["test"]["acc"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="synthcells")
    parser.add_argument("--data-dir")
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--model", default="paper-cnn")
    parser.add_argument("--epochs", type=int, default=2, help="the last epoch is timed (default: 2)")
    parser.add_argument(
        "--batch-size", type=int, default=64, help="effective batch, split over the processes (default: 64)"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = [run(n, args, Path(tmp)) for n in args.nproc]
    for result in results:
        result["speedup"] = round(result["images_per_s"] / results[0]["images_per_s"], 3)
    print(
        json.dumps(
            {
                "benchmark": "scaling",
                "recipe": {k: getattr(args, k) for k in ("dataset", "size", "model", "epochs", "batch_size", "device")},
                "machine": {
                    "cpu_count": os.cpu_count(),
                    "gpus": torch.cuda.device_count(),
                    "platform": platform.platform(),
                },
                "versions": {"medclassify": __version__, "torch": torch.__version__},
                "results": results,
                "note": f"{os.cpu_count()} CPU cores are shared by the processes (cores/N threads each), so on a CPU the "
                "processes add no compute; the gain comes with one GPU (or machine) per process.",
                "gpu_command": "python bench/scaling.py --dataset tissuemnist --size 224 --model resnet18 --nproc 1 2 4 8 --device cuda",
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
