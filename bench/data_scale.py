"""Data at scale: the split cache against loading every split into memory, on generated 224 px RGB
files of growing size.

    python bench/data_scale.py --folder /big/disk/scale                       # 1, 2, 4 GB and > half the RAM
    python bench/data_scale.py --folder /tmp/scale --sizes-gb 1 --steps 20    # a quick look

For each file (official ``.npz`` layout, ``pathmnist_224.npz``: smooth images with noise, Deflate
level 1, so that decompression costs as for real files) it measures, each in a fresh process:

* ``in_memory_load``: what medclassify did before the cache (and what a hand-written ``np.load``
  does): every split decompressed into memory and transposed to N x C x H x W. Its seconds and peak
  RSS. Skipped where that would need more than 80 % of this machine's memory (twice the pixels).
* ``cache_build``: the first use, which writes the split cache (seconds, peak RSS); ``cache_open``:
  a later use (seconds to open it memory-mapped, median of 3).
* ``train_1`` and ``train_2``: one process, and two processes under torchrun (DDP over Gloo), of
  medclassify's own training session (``TrainingSession.prepare``: the cache, the normalisation from
  its recorded sums, the batch loader, paper-cnn) taking ``--steps`` training steps of batch 32,
  then reading the rest of the epoch's batches without the model (so every page of the training
  split is touched). Memory is sampled every 0.1 s from ``/proc/PID/smaps_rollup``: RSS (what
  ``ru_maxrss`` reports: the process's own memory plus the file pages it has mapped), its anonymous
  part (the process's own memory, what cannot be dropped), and PSS (shared pages divided among the
  processes that map them: the sum over processes is their total). Peaks are given for the steps
  and for the whole epoch; training images/s for the steps.

Prints JSON. The generated files and caches are deleted at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import numpy as np

SIZE = 224
IMAGE_BYTES = SIZE * SIZE * 3
DATASET = "pathmnist"  # a 224 px RGB MedMNIST dataset (9 classes); the MD5 check is switched off
SPLIT_SHARES = {"train": 0.8, "val": 0.1, "test": 0.1}


def mem_total() -> int:
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemTotal:"))


def write_file(path: Path, gigabytes: float, seed: int = 0) -> dict:
    """An official-layout file with ``gigabytes`` of 224 px RGB pixels, written a block at a time."""
    n = int(gigabytes * 1e9 // IMAGE_BYTES)
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 256, size=(64, 14, 14, 3), dtype=np.uint8)
    base = np.repeat(np.repeat(low, 16, axis=1), 16, axis=2).astype(np.int16)  # smooth 224 px patterns
    noise = rng.integers(-3, 4, size=(256, SIZE, SIZE, 3), dtype=np.int16)  # cycled: cheap to make, hard to compress
    path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    counts = {split: int(n * share) for split, share in SPLIT_SHARES.items()}
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1, allowZip64=True) as archive:
        for split, count in counts.items():
            labels = rng.integers(0, 9, size=(count, 1), dtype=np.uint8)
            with archive.open(f"{split}_images.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array_header_1_0(
                    member, {"descr": "|u1", "fortran_order": False, "shape": (count, SIZE, SIZE, 3)}
                )
                for start in range(0, count, 256):
                    k = min(256, count - start)
                    block = base[(labels[start : start + k, 0].astype(np.int64) * 7 + start) % 64] + noise[:k]
                    member.write(np.clip(block, 0, 255).astype(np.uint8).data)
            with archive.open(f"{split}_labels.npy", "w") as member:
                np.save(member, labels)
    return {
        "images": counts,
        "pixel_gb": round(sum(counts.values()) * IMAGE_BYTES / 1e9, 2),
        "file_gb": round(path.stat().st_size / 1e9, 2),
        "write_s": round(time.perf_counter() - started, 1),
    }


class MemorySampler:
    """Peak RSS, anonymous RSS and PSS (MB) over time of the processes ``select`` picks, summed."""

    def __init__(self, select):
        self.select = select
        self.peak = {"rss_mb": 0.0, "anon_mb": 0.0, "pss_mb": 0.0, "per_process_rss_mb": 0.0}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stop.is_set():
            totals = {"rss_mb": 0.0, "anon_mb": 0.0, "pss_mb": 0.0}
            biggest = 0.0
            for pid in self.select():
                fields = _smaps_rollup(pid)
                if fields:
                    totals["rss_mb"] += fields["Rss"]
                    totals["anon_mb"] += fields["Anonymous"]
                    totals["pss_mb"] += fields["Pss"]
                    biggest = max(biggest, fields["Rss"])
            for key, value in totals.items():
                self.peak[key] = max(self.peak[key], value)
            self.peak["per_process_rss_mb"] = max(self.peak["per_process_rss_mb"], biggest)
            time.sleep(0.1)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.peak = {key: round(value, 1) for key, value in self.peak.items()}


def _smaps_rollup(pid: int) -> dict | None:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            lines = f.read().splitlines()[1:]
    except OSError:
        return None
    return {line.split(":")[0]: int(line.split()[1]) / 1024 for line in lines}


def _descendants(root: int, marker: str) -> list[int]:
    """The processes under ``root`` (itself included) whose command line holds ``marker`` and that are
    not torchrun's launcher."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        stack += children.get(pid, [])
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in command and "torch.distributed.run" not in command:
            found.append(pid)
    return found


def measured(command: list[str], env: dict) -> tuple[dict, dict]:
    """Run ``command`` (it prints one JSON line last) while sampling the memory of its workers."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    with MemorySampler(lambda: _descendants(process.pid, "--worker")) as sampler:
        out, err = process.communicate()
    if process.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{err[-3000:]}")
    results = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return results, sampler.peak


# ---- the measured work, each in its own process -----------------------------------------------------------
def worker(args) -> None:
    import torch

    from medclassify.config import TrainConfig
    from medclassify.data import load_dataset

    started = time.perf_counter()
    if args.worker == "in-memory-load":
        with np.load(Path(args.data) / f"{DATASET}_{SIZE}.npz") as archive:
            splits = {s: np.ascontiguousarray(archive[f"{s}_images"].transpose(0, 3, 1, 2)) for s in SPLIT_SHARES}
        print(json.dumps({"seconds": time.perf_counter() - started, "images": sum(len(v) for v in splits.values())}))
        return
    if args.worker == "open":
        data = load_dataset(
            DATASET, SIZE, args.data, verify=False, download=False, storage="mmap", cache_dir=args.cache
        )
        print(json.dumps({"seconds": time.perf_counter() - started, "storage": data.source["storage"]}))
        return
    from medclassify.runtime.distributed import init_distributed, shutdown
    from medclassify.training.trainer import TrainingSession, train_step

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("WORLD_SIZE", "1"))))
    config = TrainConfig(
        dataset=DATASET, size=SIZE, data_dir=args.data, cache_dir=args.cache, verify=False, download=False,
        quiet=True, batch_size=32, data_storage=args.storage, out=str(Path(args.data) / "run"),
    )  # fmt: skip
    context, device = init_distributed("cpu")
    session = TrainingSession.prepare(config, context, device)
    prepared = time.perf_counter() - started
    model = session.model
    if context.enabled:
        model = torch.nn.parallel.DistributedDataParallel(model)
    model.train()
    steps, images, step_started, step_s = 0, 0, None, None
    for batch, targets in session.loader:
        if steps < args.steps:
            if steps == 2:  # after two warm-up steps
                step_started, images = time.perf_counter(), 0
            train_step(model, batch, targets, session.optimizer, session.criterion, session.scaler, None)
            images += len(targets)
            steps += 1
            if steps == args.steps:
                step_s = time.perf_counter() - step_started
                print(json.dumps({"phase": "steps_done", "rank": context.rank}), flush=True)
    shutdown(context)
    print(
        json.dumps(
            {
                "rank": context.rank,
                "prepare_s": round(prepared, 2),
                "train_images_per_s_per_process": round(images / step_s, 1),
                "epoch_s": round(time.perf_counter() - started, 1),
                "storage": session.data.source["storage"],
            }
        )
    )


def train_run(args, data: Path, cache: Path, nproc: int, storage: str = "auto") -> dict:
    """Steps then the rest of the epoch; memory peaks for the steps and the whole run."""
    script = [str(Path(__file__).resolve()), "--worker", "train", "--data", str(data), "--cache", str(cache)]
    script += ["--steps", str(args.steps), "--storage", storage]
    if nproc == 1:
        command = [sys.executable, *script]
    else:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            str(nproc),
            *script,
        ]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // nproc))}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    whole = MemorySampler(lambda: _descendants(process.pid, "--worker"))
    steps = MemorySampler(lambda: _descendants(process.pid, "--worker"))
    lines: list[str] = []
    with whole, steps:
        done = 0
        for line in process.stdout:
            lines.append(line)
            if '"steps_done"' in line:
                done += 1
                if done == nproc:
                    steps.stop.set()
        err = process.stderr.read()
        process.wait()
    if process.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{err[-3000:]}")
    results = [json.loads(line) for line in lines if line.startswith("{") and '"steps_done"' not in line]
    return {
        "processes": nproc,
        "storage": results[0]["storage"],
        "train_images_per_s": round(sum(r["train_images_per_s_per_process"] for r in results), 1),
        "prepare_s": max(r["prepare_s"] for r in results),
        "epoch_s": max(r["epoch_s"] for r in results),
        "peak_during_steps": steps.peak,
        "peak_whole_epoch": whole.peak,
    }


def measure_file(args, folder: Path, gigabytes: float) -> dict:
    data, cache = folder / f"{gigabytes:g}gb", folder / f"{gigabytes:g}gb-cache"
    shutil.rmtree(cache, ignore_errors=True)
    entry = {"requested_gb": gigabytes, **write_file(data / f"{DATASET}_{SIZE}.npz", gigabytes)}
    script = [sys.executable, str(Path(__file__).resolve()), "--data", str(data), "--cache", str(cache)]
    env = dict(os.environ)
    if 2.1 * entry["pixel_gb"] * 1e9 < 0.8 * mem_total():
        (result,), peak = measured([*script, "--worker", "in-memory-load"], env)
        entry["in_memory_load"] = {"seconds": round(result["seconds"], 2), "peak_rss_mb": peak["rss_mb"]}
    else:
        entry["in_memory_load"] = {
            "skipped": "needs about twice the pixels in memory, more than 80 % of this machine's"
        }
    (result,), peak = measured([*script, "--worker", "open"], env)  # the first use builds the cache
    entry["cache_build"] = {"seconds": round(result["seconds"], 2), "peak_rss_mb": peak["rss_mb"]}
    opens = [measured([*script, "--worker", "open"], env)[0][0]["seconds"] for _ in range(3)]
    entry["cache_open_s"] = round(statistics.median(opens), 4)
    entry["cache_gb"] = round(sum(f.stat().st_size for f in (cache / f"{DATASET}_{SIZE}").iterdir()) / 1e9, 2)
    entry["train_1"] = train_run(args, data, cache, 1)
    entry["train_2"] = train_run(args, data, cache, 2)
    if gigabytes == min(args.sizes_gb):  # the same file held in memory, for the speed of the two storages
        entry["train_1_memory"] = train_run(args, data, cache, 1, storage="memory")
    if not args.keep:
        shutil.rmtree(data)
        shutil.rmtree(cache)
    return entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--folder", help="where to write the files (default: a temporary folder); needs 2.5x their size"
    )
    parser.add_argument(
        "--sizes-gb", type=float, nargs="+", help="pixel gigabytes per file (default: 1 2 4 and 55 %% of the memory)"
    )
    parser.add_argument("--steps", type=int, default=10, help="training steps of batch 32 before the loader-only rest")
    parser.add_argument("--keep", action="store_true", help="keep the generated files and caches")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    parser.add_argument("--storage", default="auto", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    args.sizes_gb = args.sizes_gb or [1, 2, 4, round(0.55 * mem_total() / 1e9)]
    folder = Path(args.folder or tempfile.mkdtemp(prefix="medclassify-scale-"))
    import torch

    entries = [measure_file(args, folder, gb) for gb in args.sizes_gb]
    print(
        json.dumps(
            {
                "benchmark": "data_scale",
                "image_size": SIZE,
                "memory_gb": round(mem_total() / 1e9, 1),
                "cpus": os.cpu_count(),
                "torch": torch.__version__,
                "machine": platform.machine(),
                "steps": args.steps,
                "files": entries,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
