"""Models for a small device: every format medclassify writes, side by side in one run.

    python bench/edge.py                                       # paper-cnn, bn-cnn-wide, resnet18 at 28, 64, 224 px
    python bench/edge.py --models paper-cnn --sizes 28 --runs runs/blood-cpu runs/organ-cpu

For each model and size (seeded random weights: the weights do not change the time; int8 is
calibrated on random images for the same reason): the file size, the latency of one image on one
thread (p50/p95, as on a small board), the throughput at batch 64 on all cores and the peak memory
of the predicting process, for PyTorch eager, ONNX float32, ONNX int8, ExecuTorch float32 and
ExecuTorch int8. Each format is measured in a process of its own (python bench/edge.py --measure ...),
so that its peak memory is its own: the runtime, the model and the batch.

With --runs: each run's test accuracy through every format (exported as 'medclassify export' does,
behind its gate, where the run has no current export), with the gate's interval from exports.json.
Prints JSON.
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
from pathlib import Path

import numpy as np

from timing import benchmark_metadata, timed

FORMATS = ("pytorch", "onnx-float32", "onnx-int8", "executorch-float32", "executorch-int8")
THROUGHPUT_BATCH = 64


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: unlike getrusage's ru_maxrss, which a process
    started by another inherits, it starts again at exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise OSError("/proc/self/status has no VmHWM line (not Linux)")


def runner(fmt: str, path: Path, threads: int):
    """A function from a float32 batch to logits, for one format, on ``threads`` threads."""
    if fmt.startswith("onnx"):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return lambda batch: session.run(None, {"images": batch})[0]
    import torch

    torch.set_num_threads(threads)
    if fmt == "pytorch":
        from medclassify.models import create_model

        state = torch.load(path, map_location="cpu", weights_only=True)
        model = create_model(state["name"], state["channels"], state["classes"], state["size"]).eval()
        model.load_state_dict(state["weights"])

        def run_torch(batch: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return model(torch.from_numpy(batch)).numpy()

        return run_torch
    from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

    from medclassify.inference.predictor import ExecuTorchBackend

    _unsafe_reset_threadpool(threads)  # XNNPACK's thread pool
    backend = ExecuTorchBackend(path)

    def run_pte(batch: np.ndarray) -> np.ndarray:  # the batch-64 program takes the whole batch at once
        return backend.forward.execute([torch.from_numpy(batch)])[0].numpy()

    return run_pte


def measure(fmt: str, single: Path, batched: Path, shape: list[int], repeats: int) -> dict:
    """One format's latency and throughput in this process, and this process's peak memory."""
    rng = np.random.default_rng(0)
    one = rng.standard_normal((1, *shape), dtype=np.float32)
    many = rng.standard_normal((THROUGHPUT_BATCH, *shape), dtype=np.float32)
    latency = timed(runner(fmt, single, 1), one, repeats, warm_up=5)
    throughput = timed(runner(fmt, batched, os.cpu_count() or 1), many, max(repeats // 10, 3), warm_up=2)
    return {
        "batch1_1thread_p50_ms": round(float(np.percentile(latency, 50)) * 1000, 3),
        "batch1_1thread_p95_ms": round(float(np.percentile(latency, 95)) * 1000, 3),
        f"batch{THROUGHPUT_BATCH}_all_cores_images_per_s": round(THROUGHPUT_BATCH / statistics.median(throughput), 1),
        "peak_rss_mb": peak_rss_mb(),
    }


def write_formats(name: str, size: int, channels: int, classes: int, folder: Path) -> dict[str, tuple[Path, Path]]:
    """Every format of one randomly initialised model: (the file for batch 1, the file for batch 64)."""
    import torch

    from medclassify.inference.export import write_onnx
    from medclassify.inference.pte import pt2e_int8, write_pte
    from medclassify.inference.quantize import quantize_onnx
    from medclassify.models import create_model

    torch.manual_seed(0)
    model = create_model(name, channels, classes, size).eval()
    metadata = benchmark_metadata(name, size, channels, classes)
    stem = folder / f"{name}-{size}"
    weights = stem.with_suffix(".pt")
    torch.save(
        {"name": name, "channels": channels, "classes": classes, "size": size, "weights": model.state_dict()}, weights
    )
    onnx_float, onnx_int8 = stem.with_suffix(".onnx"), stem.with_suffix(".int8.onnx")
    write_onnx(model, metadata, onnx_float, channels, size)
    calibration = np.random.default_rng(1).standard_normal((64, channels, size, size), dtype=np.float32)
    quantize_onnx(onnx_float, onnx_int8, calibration, "percentile")
    files = {"pytorch": (weights, weights), "onnx-float32": (onnx_float,) * 2, "onnx-int8": (onnx_int8,) * 2}
    quantized = pt2e_int8(model, calibration)
    for fmt, program in (("executorch-float32", model), ("executorch-int8", quantized)):
        single, batched = stem.with_suffix(f".{fmt}.pte"), stem.with_suffix(f".{fmt}.b{THROUGHPUT_BATCH}.pte")
        write_pte(program, metadata, single, channels, size)
        write_pte(program, metadata, batched, channels, size, batch=THROUGHPUT_BATCH)
        files[fmt] = (single, batched)
    return files


def bench_model(name: str, size: int, channels: int, classes: int, repeats: int, folder: Path) -> dict:
    files = write_formats(name, size, channels, classes, folder)
    row: dict = {"model": name, "size": size}
    for fmt in FORMATS:
        single, batched = files[fmt]
        command = [sys.executable, __file__, "--measure", fmt, str(single), str(batched)]
        command += ["--shape", str(channels), str(size), str(size), "--repeats", str(repeats)]
        measured = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
        row[fmt] = {"file_mb": round(single.stat().st_size / 1e6, 3), **measured}
    onnx_float, onnx_int8 = row["onnx-float32"], row["onnx-int8"]
    key = f"batch{THROUGHPUT_BATCH}_all_cores_images_per_s"
    row["onnx_int8_size_ratio"] = round(onnx_int8["file_mb"] / onnx_float["file_mb"], 3)
    row["onnx_int8_throughput_ratio"] = round(onnx_int8[key] / onnx_float[key], 2)
    row["executorch_int8_throughput_ratio"] = round(row["executorch-int8"][key] / row["executorch-float32"][key], 2)
    return row


def run_accuracy(run_dir: Path) -> dict:
    """A run's test accuracy through each format, exporting what the run does not hold yet."""
    from medclassify.errors import CheckpointError
    from medclassify.inference import Predictor, export_executorch, export_model, quantize_run
    from medclassify.inference.bundle import current_export, exports_record
    from medclassify.runs import load_run_data
    from medclassify.runs.files import RunDir

    exporters = {
        "model.onnx": lambda: export_model(run_dir),
        "model.int8.onnx": lambda: quantize_run(run_dir),
        "model.pte": lambda: export_executorch(run_dir),
        "model.int8.pte": lambda: export_executorch(run_dir, quantize="int8"),
    }
    for filename, export in exporters.items():
        try:
            current_export(run_dir, run_dir / "best.pt", filename)
        except CheckpointError:
            export()
    test = load_run_data(RunDir(run_dir).config()).splits["test"]
    pixels, labels = test.images.numpy(), test.labels.numpy()
    record = exports_record(run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    row: dict = {
        "run": str(run_dir),
        "test_images": len(labels),
        "pytorch_with_tta": metrics["test"]["acc"] if metrics.get("tta") else None,
        "pytorch": float(
            np.mean(Predictor.from_run(run_dir, backend="torch").predict_pixels(pixels).argmax(1) == labels)
        ),
    }
    for filename in exporters:
        accuracy = float(np.mean(Predictor.from_run(run_dir / filename).predict_pixels(pixels).argmax(1) == labels))
        entry = record[filename]
        gate = entry.get("gate")
        row[filename] = {
            "acc": accuracy,
            "file_mb": round((run_dir / filename).stat().st_size / 1e6, 3),
            **({"gate_difference": gate["difference"]["acc"], "mcnemar_p": gate["mcnemar"]["p_value"]} if gate else {}),
        }
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["paper-cnn", "bn-cnn-wide", "resnet18"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[28, 64, 224])
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=100, help="batch-1 calls timed per format")
    parser.add_argument("--runs", nargs="*", type=Path, default=[], help="run folders whose test accuracy to measure")
    parser.add_argument("--measure", nargs=3, metavar=("FORMAT", "FILE", "BATCHED_FILE"), help=argparse.SUPPRESS)
    parser.add_argument("--shape", nargs=3, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        fmt, single, batched = args.measure
        print(json.dumps(measure(fmt, Path(single), Path(batched), args.shape, args.repeats)))
        return
    from importlib.metadata import version

    import onnxruntime
    import torch

    from medclassify import __version__
    from medclassify.runtime.environment import cpu_model

    with tempfile.TemporaryDirectory() as tmp:
        rows = [
            bench_model(name, size, args.channels, args.classes, max(args.repeats * 28 // size, 10), Path(tmp))
            for name in args.models
            for size in args.sizes
        ]
    print(
        json.dumps(
            {
                "benchmark": "edge",
                "machine": {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "platform": platform.platform()},
                "versions": {
                    "medclassify": __version__,
                    "torch": torch.__version__,
                    "onnxruntime": onnxruntime.__version__,
                    "executorch": version("executorch"),
                },
                "models": rows,
                "runs": [run_accuracy(run) for run in args.runs],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
