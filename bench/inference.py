"""Inference on the CPU: PyTorch vs ONNX Runtime, same weights, same inputs, in the same process,
and the wall time of the ``medclassify predict`` command on one image with either backend.

    python bench/inference.py                      # paper-cnn, bn-cnn, resnet18, mobilenet-v3-small at 28 px
    python bench/inference.py --models resnet18 --size 64 --repeats 300

Prints JSON: file sizes (PyTorch bundle, ONNX), largest logit difference, batch-1 latency p50/p95 in
ms, batch-1 and batch-64 images/s for each runtime, and the command-line timings. The models carry
random weights (seeded): the weights do not change the time. The command-line timing trains a
one-epoch demo run in a temporary folder and exports it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from PIL import Image

from medclassify import __version__
from medclassify.inference.export import write_onnx
from medclassify.models import create_model
from medclassify.runs import save_checkpoint
from timing import benchmark_metadata, timed


def percentile_ms(seconds: list[float], q: float) -> float:
    return round(float(np.percentile(seconds, q)) * 1000, 3)


def runtime_figures(run, size: int, channels: int, repeats: int) -> dict:
    rng = np.random.default_rng(0)
    one = rng.standard_normal((1, channels, size, size), dtype=np.float32)
    many = rng.standard_normal((64, channels, size, size), dtype=np.float32)
    single = timed(run, one, repeats, warm_up=10)
    batched = timed(run, many, max(repeats // 10, 10), warm_up=10)
    return {
        "batch1_p50_ms": percentile_ms(single, 50),
        "batch1_p95_ms": percentile_ms(single, 95),
        "batch1_images_per_s": round(1 / statistics.median(single), 1),
        "batch64_images_per_s": round(64 / statistics.median(batched), 1),
    }


def bench_model(name: str, size: int, channels: int, classes: int, repeats: int, folder: Path) -> dict:
    torch.manual_seed(0)
    model = create_model(name, channels, classes, size).eval()
    metadata = benchmark_metadata(name, size, channels, classes)
    bundle, exported = folder / f"{name}.pt", folder / f"{name}.onnx"
    save_checkpoint(bundle, {**metadata, "model_state": model.state_dict()})
    write_onnx(model, metadata, exported, channels, size)
    session = onnxruntime.InferenceSession(str(exported), providers=["CPUExecutionProvider"])

    def run_torch(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(batch)).numpy()

    def run_onnx(batch: np.ndarray) -> np.ndarray:
        return session.run(None, {"images": batch})[0]

    check = np.random.default_rng(1).standard_normal((64, channels, size, size), dtype=np.float32)
    return {
        "model": name,
        "bundle_mb": round(bundle.stat().st_size / 1e6, 3),
        "onnx_mb": round(exported.stat().st_size / 1e6, 3),
        "max_abs_logit_diff": float(np.abs(run_torch(check) - run_onnx(check)).max()),
        "pytorch": runtime_figures(run_torch, size, channels, repeats),
        "onnxruntime": runtime_figures(run_onnx, size, channels, repeats),
    }


def command_timings(folder: Path, runs: int) -> dict:
    """Wall seconds of 'medclassify predict RUN image.png' (start-up included), median of ``runs``."""
    env = {**os.environ, "MEDCLASSIFY_DATA": str(folder / "data")}
    command = [sys.executable, "-m", "medclassify"]
    run_dir = folder / "demo"
    subprocess.run(
        [*command, "demo", "--out", str(run_dir), "--epochs", "1", "--quiet"], check=True, env=env, capture_output=True
    )
    subprocess.run([*command, "export", str(run_dir)], check=True, env=env, capture_output=True)
    with np.load(folder / "data" / "synthcells.npz") as archive:
        Image.fromarray(archive["test_images"][0]).save(folder / "cell.png")
    timings = {}
    for backend in ("onnx", "torch"):
        seconds = []
        for _ in range(runs):
            started = time.perf_counter()
            subprocess.run(
                [*command, "predict", str(run_dir), str(folder / "cell.png"), "--backend", backend],
                check=True,
                env=env,
                capture_output=True,
            )
            seconds.append(time.perf_counter() - started)
        timings[f"predict_one_image_{backend}_s"] = round(statistics.median(seconds), 3)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["paper-cnn", "bn-cnn", "resnet18", "mobilenet-v3-small"])
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=200, help="batch-1 calls timed per runtime")
    parser.add_argument(
        "--command-runs", type=int, default=5, help="timed 'medclassify predict' calls per backend (0: skip)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        results = [
            bench_model(name, args.size, args.channels, args.classes, args.repeats, folder) for name in args.models
        ]
        command = command_timings(folder, args.command_runs) if args.command_runs else {}
    print(
        json.dumps(
            {
                "benchmark": "inference",
                "size": args.size,
                "channels": args.channels,
                "machine": {
                    "cpu_count": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(),
                    "platform": platform.platform(),
                },
                "versions": {
                    "medclassify": __version__,
                    "torch": torch.__version__,
                    "onnxruntime": onnxruntime.__version__,
                },
                "models": results,
                "command_line": command,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
