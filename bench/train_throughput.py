"""Training throughput of the paper's CNN: medclassify's in-memory pipeline vs the usual
``medmnist`` Dataset + ToTensor + DataLoader pipeline, same model, same batch size, same step.

    python bench/train_throughput.py --data-dir ../shared/data

Prints JSON. The 64 px file is made from the 28 px one (bilinear upsampling, official layout) in a
temporary folder when no real ``bloodmnist_64.npz`` is present, since only the timing matters here.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import tempfile
import time
from pathlib import Path

import medmnist
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision import transforms

from medclassify.data import BatchLoader, compute_normalization, load_dataset
from medclassify.models import create_model


def make_64px_file(source: Path, folder: Path) -> None:
    with np.load(source) as archive:
        arrays = dict(archive)
    for split in ("train", "val", "test"):
        images = torch.from_numpy(arrays[f"{split}_images"]).permute(0, 3, 1, 2).float()
        up = F.interpolate(images, size=64, mode="bilinear", align_corners=False)
        arrays[f"{split}_images"] = up.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    np.savez(folder / "bloodmnist_64.npz", **arrays)


def images_per_second(batches, size: int, n_images: int, warmup: int = 5) -> float:
    """Train the paper's CNN on ``batches`` (an iterator of (x, y)) and time ``n_images`` of it."""
    torch.manual_seed(0)
    model = create_model("paper-cnn", 3, 8, size)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    criterion = torch.nn.CrossEntropyLoss()
    model.train()

    def step(images, labels):
        optimizer.zero_grad(set_to_none=True)
        criterion(model(images), labels).backward()
        optimizer.step()

    for images, labels in itertools.islice(batches, warmup):
        step(images, labels.view(-1).long())
    seen, started = 0, time.perf_counter()
    for images, labels in batches:
        step(images, labels.view(-1).long())
        seen += len(labels)
        if seen >= n_images:
            break
    return seen / (time.perf_counter() - started)


def endless(make_iterable):
    while True:
        yield from make_iterable()


def measure(data_dir: Path, size: int, batch_size: int, n_images: int) -> dict:
    data = load_dataset("bloodmnist", size, data_dir, verify=(size == 28), download=False)
    train = data.splits["train"]
    norm = compute_normalization(train.images, "half")  # the same Normalize(0.5, 0.5) as the baseline
    generator = torch.Generator().manual_seed(0)
    ours = BatchLoader(train, batch_size, norm, torch.device("cpu"), shuffle=True, generator=generator)

    fixed = next(iter(ours))
    result = {
        "size": size,
        "medclassify_in_memory": images_per_second(endless(lambda: iter(ours)), size, n_images),
        "model_only_fixed_batch": images_per_second(itertools.repeat(fixed), size, n_images),
    }
    to_tensor = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean=[0.5], std=[0.5])])
    dataset = medmnist.BloodMNIST(split="train", transform=to_tensor, root=str(data_dir), size=size)
    for workers in (0, 2):
        loader = DataLoader(
            dataset, batch_size=batch_size, shuffle=True, num_workers=workers, persistent_workers=workers > 0
        )
        result[f"medmnist_dataloader_workers{workers}"] = images_per_second(
            endless(lambda loader=loader: iter(loader)), size, n_images
        )
    baseline = max(result["medmnist_dataloader_workers0"], result["medmnist_dataloader_workers2"])
    result["speedup_vs_best_baseline"] = result["medclassify_in_memory"] / baseline
    result["pipeline_overhead_vs_model_only"] = 1 - result["medclassify_in_memory"] / result["model_only_fixed_batch"]
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="../shared/data", help="folder holding bloodmnist.npz")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--images", type=int, default=6400, help="images timed per pipeline (after 5 warm-up batches)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: PyTorch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data_dir = Path(args.data_dir)
    if not (data_dir / "bloodmnist.npz").is_file():
        raise SystemExit(f"bench: {data_dir / 'bloodmnist.npz'} not found; pass --data-dir")
    results = [measure(data_dir, 28, args.batch_size, args.images)]
    with tempfile.TemporaryDirectory() as tmp:
        folder = data_dir if (data_dir / "bloodmnist_64.npz").is_file() else Path(tmp)
        if folder != data_dir:
            make_64px_file(data_dir / "bloodmnist.npz", folder)
        results.append(measure(folder, 64, args.batch_size, args.images))
    print(
        json.dumps(
            {
                "benchmark": "train_throughput",
                "model": "paper-cnn",
                "batch_size": args.batch_size,
                "unit": "training images/s",
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
