"""Device choice, seeding and the software/hardware record every run keeps."""

from __future__ import annotations

import os
import platform
import random
import sys
from importlib import metadata

import numpy as np
import torch

from ..errors import ConfigError

RECORDED_PACKAGES = ("medclassify", "torch", "torchvision", "numpy", "scikit-learn", "medmnist", "pillow")


def select_device(requested: str = "auto") -> torch.device:
    """The torch device for ``auto`` (CUDA, then MPS, then CPU) or a named one that is available."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {requested}: CUDA is not available on this machine")
    if requested == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("--device mps: Apple MPS is not available on this machine")
    return torch.device(requested)


def seed_everything(seed: int) -> None:
    """Same seed, same machine, same numbers: seed every RNG and ask for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)


def package_versions() -> dict[str, str | None]:
    """The installed version of each recorded package (None when absent)."""
    versions = {}
    for name in RECORDED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def environment_record(device: torch.device) -> dict:
    """What config.json records of the machine: Python, platform, processor, threads, device, versions."""
    record = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "packages": package_versions(),
    }
    if device.type == "cuda":
        record["gpu"] = torch.cuda.get_device_name(device)
        record["cuda"] = torch.version.cuda
    return record
