"""Device choice, seeding and the software/hardware record every run keeps."""

from __future__ import annotations

import functools
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
        raise ConfigError(f"device {requested}: CUDA is not available on this machine", parameters=("device",))
    if requested == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("device mps: Apple MPS is not available on this machine", parameters=("device",))
    return torch.device(requested)


# glibc's malloc serves blocks above its mmap threshold (128 KiB at first) with fresh mmap calls, so
# every activation and gradient tensor of a CPU training step costs page faults; it raises the
# threshold by itself only after a large block is freed (up to 32 MiB), which made the speed of a run
# depend on what its data loading happened to free (bench/allocator.py measures the difference).
# Training sets glibc's own ceiling from the start: blocks up to 32 MiB come from the heap and are
# reused, and free memory is returned to the system above 64 MiB (glibc's pairing of the two).
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 64 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, <malloc.h>


@functools.cache
def configure_allocator() -> dict | None:
    """Fix glibc's malloc thresholds for this process (Linux with glibc; elsewhere nothing is
    changed and None is returned); what was set, for the run's record."""
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return None
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        applied = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    except (OSError, AttributeError):
        return None
    return {"malloc": "glibc", "mmap_threshold": MMAP_THRESHOLD, "trim_threshold": TRIM_THRESHOLD} if applied else None


@functools.cache
def cpu_has_bfloat16() -> bool:
    """Whether this CPU computes in bfloat16 natively (Intel AMX or AVX512-BF16, from the flags
    Linux reports); elsewhere bfloat16 is emulated and slower than float32, and unknown counts as
    no. (oneDNN's own probe, torch.ops.mkldnn._is_mkldnn_bf16_supported, measurably slowed the
    float32 steps of the process that asked, so it is not used.)"""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


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
    versions: dict[str, str | None] = {}
    for name in RECORDED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def cpu_model() -> str:
    """The processor's marketing name ("AMD EPYC 7B13"), from /proc/cpuinfo on Linux; elsewhere
    what Python's platform module knows (often just the architecture)."""
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        name = ""
    return name or platform.processor() or platform.machine()


def load_average() -> list[float] | None:
    """The system's 1, 5 and 15 minute load averages (None where the system keeps none): how much
    other work shared the machine while a run was timed."""
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def environment_record(device: torch.device) -> dict:
    """What config.json records of the machine: Python, platform, processor, threads, device,
    versions, and the load average as the run starts (metrics.json has it as the run ends)."""
    record = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        "load_average_start": load_average(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_bfloat16": cpu_has_bfloat16(),
        "allocator": configure_allocator(),
        "device": str(device),
        "packages": package_versions(),
    }
    if device.type == "cuda":
        record["gpu"] = torch.cuda.get_device_name(device)
        record["cuda"] = torch.version.cuda
    return record
