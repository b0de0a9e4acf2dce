"""``medclassify train``: one run from options, a YAML file or a recipe; on several processes through torchrun."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import fields

from ..errors import MedclassifyError
from .common import Command, add_config_options, print_results

TRAIN_EXAMPLES = """examples:
  medclassify train --dataset bloodmnist --size 28
  medclassify train --dataset organcmnist --size 64 --epochs 20 --data-dir ~/medmnist
  medclassify train --data-dir chest_xray --size 64 --channels 1     # train/NORMAL, train/PNEUMONIA ...
  medclassify train --config run.yaml --seed 3                        # YAML keys = TrainConfig fields
  medclassify train --out runs/blood28 --resume                       # continue an interrupted run
  medclassify train --dataset bloodmnist --nproc 2                    # DistributedDataParallel, 2 processes
  torchrun --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d --rdzv-endpoint HOST:29500 -m medclassify train ...
"""


def add_options(parser: argparse.ArgumentParser) -> None:
    """One option per TrainConfig field; unset options are absent so YAML values show through."""
    from ..config import TrainConfig

    parser.add_argument(
        "--config",
        metavar="YAML",
        help="read TrainConfig fields from a YAML file; options given here override it (default: none)",
    )
    parser.add_argument(
        "--nproc",
        type=int,
        default=1,
        help="processes on this machine: launches torchrun for DistributedDataParallel "
        "(one per GPU, or CPU processes with Gloo); --batch-size stays the effective batch (default: 1)",
    )
    add_config_options(parser, [f.name for f in fields(TrainConfig)])


def _without_option(argv: list[str], option: str) -> list[str]:
    """``argv`` less ``option VALUE`` / ``option=VALUE``."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(option + "="):
            kept.append(arg)
    return kept


def run(args: argparse.Namespace) -> int:
    from ..config import TrainConfig
    from ..training import train

    if args.nproc < 1:
        raise MedclassifyError(f"--nproc must be >= 1, got {args.nproc}")
    values = vars(args).copy()
    yaml_path = values.pop("config", None)
    for launcher_only in ("command", "nproc", "argv", "verbose", "debug"):
        values.pop(launcher_only)
    base = TrainConfig.from_yaml(yaml_path).to_dict() if yaml_path else {}
    if values.get("resume") and "out" in values and not yaml_path:  # --out RUN --resume: the run's own settings
        from ..runs import RunDir

        base = RunDir(values["out"]).config().to_dict()
    config = TrainConfig.from_dict({**base, **values})
    if args.nproc > 1:  # the options and the data are checked here once, not by every process torchrun starts
        if "WORLD_SIZE" in os.environ:
            raise MedclassifyError("--nproc: already running under torchrun; give the process count to torchrun only")
        config.validate()
        if config.batch_size % args.nproc:
            raise MedclassifyError(
                f"--batch-size {config.batch_size} is the effective batch and must divide evenly over {args.nproc} processes"
            )
        from ..experiments.runner import missing_data_files
        from ..runtime.distributed import launch
        from ..training.trainer import check_run_folder

        check_run_folder(config)
        missing = missing_data_files([config])  # downloads what it can, once, before the processes start
        if missing:
            raise MedclassifyError(f"data file missing, nothing was trained; download {missing[0]}")
        return launch(args.nproc, _without_option(args.argv, "--nproc"))
    try:
        result = train(config)
    except KeyboardInterrupt:
        print(
            f"\ninterrupted; the last finished epoch is saved in {config.run_dir()}/last.pt - run the same command "
            "with --resume to continue",
            file=sys.stderr,
        )
        return 130
    if int(os.environ.get("RANK", "0")) == 0:
        if result.already_complete:
            print(f"{result.run_dir} is already complete; nothing was trained or written", file=sys.stderr)
        print_results(result)
    return 0


COMMAND = Command(
    "train a model and evaluate it on the test split",
    TRAIN_EXAMPLES,
    add_options,
    run,
)
