"""Training throughput: medclassify's pipeline (default layout; channels-last as ``--channels-last``
trains; with ``--fused-optimizer`` as well; that from the memory-mapped split cache; and under
``--cpu-bf16`` where the CPU computes in bfloat16) against the loop a user writes by hand
(``medmnist`` Dataset + ToTensor + DataLoader, the same model in PyTorch's default settings, same
batch size, same step), for the paper's CNN and the CPU recipe's models. Also the FLOPs of a
training step per image (``torch.utils.flop_counter``), the rate achieved, and its fraction of this
CPU's dense matmul rate in the same precision. Every setting (and the matmul) is measured once per
round, ``--rounds`` times; each figure is the median, so a drift of the machine's speed (a shared
virtual machine) favours no setting. ``--compile`` also times
the fastest float32 setting through ``torch.compile`` (an experiment: training does not offer it,
as it measured slower on this project's CPU).

    python bench/train_throughput.py --data-dir ../shared/data [--compile] [--batch-size 128] [--with-64px]

Prints JSON. The 64 px file is made from the 28 px one (bilinear upsampling, official layout) in a
temporary folder when no real ``bloodmnist_64.npz`` is present, since only the timing matters here.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import medmnist
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode
from torchvision import transforms

from medclassify.data import BatchLoader, compute_normalization, load_dataset
from medclassify.models import create_model
from medclassify.runtime.environment import configure_allocator, cpu_has_bfloat16


def make_64px_file(source: Path, folder: Path) -> None:
    with np.load(source) as archive:
        arrays = dict(archive)
    for split in ("train", "val", "test"):
        images = torch.from_numpy(arrays[f"{split}_images"]).permute(0, 3, 1, 2).float()
        up = F.interpolate(images, size=64, mode="bilinear", align_corners=False)
        arrays[f"{split}_images"] = up.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    np.savez(folder / "bloodmnist_64.npz", **arrays)


def images_per_second(
    batches,
    size: int,
    n_images: int,
    model_name: str = "paper-cnn",
    channels_last: bool = False,
    fused: bool = False,
    compiled: bool = False,
    bf16: bool = False,
    warmup: int = 5,
) -> tuple[float, float]:
    """Train ``model_name`` on ``batches`` (an iterator of (x, y)) and time ``n_images`` of it after
    ``warmup`` batches; returns (images/s, seconds of the warm-up). ``channels_last`` keeps the weights
    and every batch in that layout, as ``--channels-last`` does, ``fused`` runs Adam as one kernel, as
    ``--fused-optimizer`` does, ``bf16`` runs the forward pass under bfloat16 autocast, as
    ``--cpu-bf16`` does, and ``compiled`` trains through ``torch.compile`` (its warm-up is the
    compilation)."""
    torch.manual_seed(0)
    model = create_model(model_name, 3, 8, size)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=fused or None)
    forward = torch.compile(model) if compiled else model
    criterion = torch.nn.CrossEntropyLoss()
    model.train()

    def step(images, labels):
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = criterion(forward(images).float(), labels)
        loss.backward()
        optimizer.step()

    started = time.perf_counter()
    for images, labels in itertools.islice(batches, warmup):
        step(images, labels.view(-1).long())
    warmup_seconds = time.perf_counter() - started
    seen, started = 0, time.perf_counter()
    for images, labels in batches:
        step(images, labels.view(-1).long())
        seen += len(labels)
        if seen >= n_images:
            break
    return seen / (time.perf_counter() - started), warmup_seconds


def training_flops_per_image(model_name: str, size: int, batch_size: int) -> float:
    """Floating-point operations of one training step (forward and backward) per image, counted by
    ``torch.utils.flop_counter`` (a multiply-add counts 2)."""
    model = create_model(model_name, 3, 8, size)
    images, labels = torch.randn(batch_size, 3, size, size), torch.zeros(batch_size, dtype=torch.long)
    with FlopCounterMode(display=False) as counter:
        torch.nn.functional.cross_entropy(model(images), labels).backward()
    return counter.get_total_flops() / batch_size


def matmul_gflops(n: int = 1024, seconds: float = 1.0, dtype: torch.dtype = torch.float32) -> float:
    """This CPU's dense matrix-multiply rate in ``dtype`` (the practical peak a training step in that
    precision is compared with)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        a @ b
        calls += 1
    return 2 * n**3 * calls / (time.perf_counter() - started) / 1e9


# --cpu-bf16 applies where oneDNN computes in bfloat16 (AMX, AVX512-BF16); elsewhere it is not timed
BF16 = cpu_has_bfloat16()


def endless(make_iterable):
    while True:
        yield from make_iterable()


def measure(
    data_dir: Path,
    size: int,
    batch_size: int,
    n_images: int,
    model_name: str,
    rounds: int,
    compiled: bool = False,
) -> dict:
    data = load_dataset("bloodmnist", size, data_dir, verify=(size == 28), download=False, storage="memory")
    train = data.splits["train"]
    norm = compute_normalization(train.images, "half")  # the same Normalize(0.5, 0.5) as the baseline
    generator = torch.Generator().manual_seed(0)
    ours = BatchLoader(train, batch_size, norm, torch.device("cpu"), shuffle=True, generator=generator)
    mapped_split = load_dataset("bloodmnist", size, data_dir, verify=False, download=False, storage="mmap")
    mapped = BatchLoader(mapped_split.splits["train"], batch_size, norm, torch.device("cpu"), shuffle=True)
    fixed = next(iter(ours))
    to_tensor = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean=[0.5], std=[0.5])])
    dataset = medmnist.BloodMNIST(split="train", transform=to_tensor, root=str(data_dir), size=size)
    baselines = {
        workers: DataLoader(
            dataset, batch_size=batch_size, shuffle=True, num_workers=workers, persistent_workers=workers > 0
        )
        for workers in (0, 2)
    }

    def ours_with(loader=ours, **settings):
        return lambda: images_per_second(endless(lambda: iter(loader)), size, n_images, model_name, **settings)[0]

    settings = {
        "medclassify_in_memory": ours_with(),
        "medclassify_channels_last": ours_with(channels_last=True),
        "medclassify_channels_last_fused_optimizer": ours_with(channels_last=True, fused=True),
        "medclassify_channels_last_fused_optimizer_mmap": ours_with(mapped, channels_last=True, fused=True),
    }
    if BF16:
        settings["medclassify_channels_last_fused_optimizer_cpu_bf16"] = ours_with(
            channels_last=True, fused=True, bf16=True
        )
    settings["model_only_fixed_batch"] = lambda: images_per_second(itertools.repeat(fixed), size, n_images, model_name)[
        0
    ]
    for workers, loader in baselines.items():
        settings[f"medmnist_dataloader_workers{workers}"] = lambda loader=loader: images_per_second(
            endless(lambda: iter(loader)), size, n_images, model_name
        )[0]
    # every setting once per round, the median over rounds: a machine whose speed drifts (a shared
    # virtual machine) then biases no setting against another
    dtypes = [torch.float32] + ([torch.bfloat16] if BF16 else [])
    rates: dict[str, list[float]] = {name: [] for name in settings}
    matmul_rates: dict[str, list[float]] = {str(d).removeprefix("torch."): [] for d in dtypes}
    for _ in range(rounds):
        for name, run in settings.items():
            rates[name].append(run())
        for dtype in dtypes:
            matmul_rates[str(dtype).removeprefix("torch.")].append(matmul_gflops(dtype=dtype))
    result = {"model": model_name, "size": size, **{name: statistics.median(r) for name, r in rates.items()}}
    result["spread_of_rounds"] = max(max(r) / min(r) - 1 for r in rates.values())
    matmul = {name: statistics.median(r) for name, r in matmul_rates.items()}
    result["matmul_gflop_per_s"] = {name: round(rate, 1) for name, rate in matmul.items()}
    if compiled:
        rate, compile_seconds = images_per_second(
            endless(lambda: iter(ours)), size, n_images, model_name, channels_last=True, fused=True, compiled=True
        )
        result["torch_compile_channels_last_fused_optimizer"] = rate
        result["compile_seconds"] = compile_seconds
    baseline = max(result["medmnist_dataloader_workers0"], result["medmnist_dataloader_workers2"])
    ours_settings = [k for k in result if k.startswith("medclassify_")]
    float32 = [k for k in ours_settings if not k.endswith("_bf16")]
    best, best_float32 = max(ours_settings, key=result.get), max(float32, key=result.get)
    result["best_medclassify_setting"] = best
    result["speedup_vs_best_baseline"] = result[best] / baseline
    result["float32_speedup_vs_best_baseline"] = result[best_float32] / baseline
    result["pipeline_overhead_vs_model_only"] = 1 - result["medclassify_in_memory"] / result["model_only_fixed_batch"]
    flops = training_flops_per_image(model_name, size, batch_size)
    result["training_mflop_per_image"] = flops / 1e6
    result["float32_gflop_per_s"] = result[best_float32] * flops / 1e9
    result["float32_fraction_of_fp32_matmul"] = result["float32_gflop_per_s"] / matmul["float32"]
    if BF16:
        result["bf16_gflop_per_s"] = result["medclassify_channels_last_fused_optimizer_cpu_bf16"] * flops / 1e9
        result["bf16_fraction_of_bf16_matmul"] = result["bf16_gflop_per_s"] / matmul["bfloat16"]
        result["bf16_fraction_of_fp32_matmul"] = result["bf16_gflop_per_s"] / matmul["float32"]
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="../shared/data", help="folder holding bloodmnist.npz")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--images", type=int, default=3200, help="images timed per pipeline (after 5 warm-up batches)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over every setting; each figure is the median")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: PyTorch's choice)")
    parser.add_argument(
        "--models",
        nargs="+",
        default=["paper-cnn", "bn-cnn-wide"],
        help="models timed at 28 px (bn-cnn-wide: the CPU recipe's)",
    )
    parser.add_argument("--with-64px", action="store_true", help="also time paper-cnn at 64 px")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also time the step through torch.compile (compiles for 20-60 s per model)",
    )
    args = parser.parse_args()
    configure_allocator()  # as training does; the hand-written loop runs in this process too, with the same
    if args.threads:
        torch.set_num_threads(args.threads)
    data_dir = Path(args.data_dir)
    if not (data_dir / "bloodmnist.npz").is_file():
        raise SystemExit(f"bench: {data_dir / 'bloodmnist.npz'} not found; pass --data-dir")
    results = [
        measure(data_dir, 28, args.batch_size, args.images, name, args.rounds, args.compile) for name in args.models
    ]
    if args.with_64px:
        with tempfile.TemporaryDirectory() as tmp:
            folder = data_dir if (data_dir / "bloodmnist_64.npz").is_file() else Path(tmp)
            if folder != data_dir:
                make_64px_file(data_dir / "bloodmnist.npz", folder)
            results.append(measure(folder, 64, args.batch_size, args.images, "paper-cnn", args.rounds))
    print(
        json.dumps(
            {
                "benchmark": "train_throughput",
                "batch_size": args.batch_size,
                "cpu_bf16": BF16,
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
