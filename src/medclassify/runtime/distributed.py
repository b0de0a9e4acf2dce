"""Data-parallel training with PyTorch's own engine: ``torch.distributed`` process groups and
``DistributedDataParallel``, started by ``torchrun`` (which sets RANK, WORLD_SIZE, LOCAL_RANK and the
rendezvous address). NCCL on GPUs, Gloo on CPUs.

The recipe stays the single-process one: ``--batch-size`` is the effective batch, split evenly over
the processes, and gradients are averaged over them, so one step of N processes is one step of one
process on the combined batch and the learning rate needs no scaling.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from ..errors import ConfigError
from .environment import select_device

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Distributed:
    """This process's place among the training processes (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def record(self, batch_size: int) -> dict:
        """What config.json keeps about the processes and the batch rule."""
        return {
            "world_size": self.world_size,
            "backend": self.backend,
            "batch_per_process": batch_size // self.world_size,
            "effective_batch": batch_size,
            "lr_rule": "--batch-size is the effective batch split over the processes; gradients are averaged, "
            "so the learning rate is the single-process one",
        }


def init_distributed(requested_device: str) -> tuple[Distributed, torch.device]:
    """The process group torchrun describes in the environment (none for a plain process), and this
    process's device (``cuda:LOCAL_RANK`` on GPUs)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = select_device(requested_device)
    if world_size == 1:
        return Distributed(), device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"{local_world_size} processes on this machine but {torch.cuda.device_count()} GPU(s): use one process per GPU"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise ConfigError(
            f"device {requested_device}: distributed training runs on CUDA (NCCL) or the CPU (Gloo), not {device.type}",
            parameters=("device",),
        )
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return Distributed(rank, world_size, local_rank, local_world_size, backend), device


def shutdown(context: Distributed) -> None:
    """Destroy the process group when this run created one."""
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()


def gather(context: Distributed, value) -> list:
    """``value`` of every process, in rank order, on every process."""
    if not context.enabled:
        return [value]
    values = [None] * context.world_size
    dist.all_gather_object(values, value)
    return values


def barrier(context: Distributed) -> None:
    """Wait for every process (a no-op for one process)."""
    if context.enabled:
        dist.barrier()


def shard(context: Distributed, n: int) -> np.ndarray:
    """This process's sample indices for evaluation: every world_size-th one, no padding."""
    return np.arange(context.rank, n, context.world_size)


def merge_shards(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, float]]) -> tuple[np.ndarray, np.ndarray, float]:
    """(indices, y_true, y_prob, loss sum) per process -> y_true, y_prob in the split's order and the
    mean loss, as one process would have computed them."""
    indices = np.concatenate([p[0] for p in parts])
    order = np.argsort(indices, kind="stable")
    y_true = np.concatenate([p[1] for p in parts])[order]
    y_prob = np.concatenate([p[2] for p in parts])[order]
    return y_true, y_prob, sum(p[3] for p in parts) / max(len(indices), 1)


def launch(nproc: int, argv: list[str]) -> int:
    """``torchrun --standalone --nproc-per-node N -m medclassify ARGV`` for one machine, through
    torchrun's own launcher in this process: its logs go to a temporary folder that is removed
    afterwards, and a failed process is reported by the processes' own one-line errors, not by a
    launcher traceback. Returns the first failed process's exit code, or 0."""
    import logging
    import shutil
    import tempfile

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    scratch = tempfile.mkdtemp(prefix="medclassify-torchrun-")
    elastic_logs = logging.getLogger("torch.distributed.elastic")
    level = elastic_logs.level
    try:
        args = parse_args(
            ["--standalone", f"--nproc-per-node={nproc}", f"--log-dir={scratch}", "-m", "medclassify", *argv]
        )
        elastic_logs.setLevel(logging.CRITICAL)  # the failed processes have said what went wrong
        try:
            run(args)
        except ChildFailedError as exc:
            codes = [failure.exitcode for failure in exc.failures.values()]
            logger.error(f"medclassify: {len(codes)} of {nproc} processes failed (exit code {codes[0]})")
            return codes[0] if codes[0] > 0 else 1
        return 0
    finally:
        elastic_logs.setLevel(level)
        shutil.rmtree(scratch, ignore_errors=True)
