"""``medclassify run`` and ``medclassify reproduce``: a study of experiments and its report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..defaults import BOOTSTRAP_RESAMPLES
from ..errors import MedclassifyError
from .common import Command, add_config_options, add_parallel_options, add_switch, check_parallel_options

PACKAGED_STUDIES = Path(__file__).resolve().parent.parent / "studies"


def add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "study",
        metavar="STUDY_YAML",
        help="the study file (name, datasets, sizes, models, seeds, train), or a packaged study: "
        + ", ".join(sorted(p.stem for p in PACKAGED_STUDIES.glob("*.yaml"))),
    )
    add_options(parser)


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", help="the study folder (default: runs/NAME, NAME from the study file)")
    parser.add_argument("--data-dir", help="folder with the data files, for every experiment (default: as in the file)")
    parser.add_argument(
        "--seeds",
        type=int,
        help="repeat each experiment with seeds 0..N-1, over the file's seeds (default: the file's)",
    )
    add_parallel_options(parser, "experiments")
    parser.add_argument(
        "--bootstrap",
        type=int,
        default=BOOTSTRAP_RESAMPLES,
        help="bootstrap resamples for the confidence intervals (default: %(default)s)",
    )
    parser.add_argument("--lang", choices=("en", "zh"), default="en", help="language of report.md/.html (default: en)")
    add_config_options(parser, ["verify"])
    add_switch(parser, "quiet", "no progress lines")


def run(args: argparse.Namespace) -> int:
    from ..config import parse_overrides
    from ..experiments import Study, run_study
    from ..reporting.report import write_study_outputs

    path = Path(getattr(args, "study", None) or PACKAGED_STUDIES / "paper.yaml")
    if not path.exists() and (PACKAGED_STUDIES / f"{path}.yaml").is_file():  # a packaged study by name
        path = PACKAGED_STUDIES / f"{path}.yaml"
    check_parallel_options(args)
    for option in ("seeds", "bootstrap"):
        value = getattr(args, option)
        if value is not None and value < 1:
            raise MedclassifyError(f"--{option} must be >= 1, got {value}")
    study = Study.from_yaml(path, parse_overrides(args.set))
    if args.seeds is not None:
        from ..experiments.study import MAX_SEEDS

        if args.seeds > MAX_SEEDS:
            raise MedclassifyError(f"--seeds must be from 1 to {MAX_SEEDS}, got {args.seeds}")
        study.seeds = list(range(args.seeds))
    if hasattr(args, "verify"):  # given: for every experiment, over the study file's train settings
        study.train["verify"] = args.verify
    study_dir = Path(args.out) if args.out else Path("runs") / study.name
    try:
        run_study(
            study,
            study_dir,
            data_dir=args.data_dir,
            quiet=args.quiet,
            workers=args.workers,
            backend=args.backend,
            address=args.address,
        )
    except KeyboardInterrupt:
        print("\ninterrupted; run the same command again to finish the study", file=sys.stderr)
        return 130
    if not args.quiet:
        print("writing the results table, figures and report ...", file=sys.stderr)
    outputs = write_study_outputs(study, study_dir, n_boot=args.bootstrap, lang=args.lang)
    print(outputs["results"].read_text(), end="")
    print(f"report: {outputs['report']} and {outputs['report_html']}; figures in {study_dir / 'figures'}/")
    return 0


RUN = Command(
    "run a study (datasets x sizes x models x seeds): results table, figures and report",
    "examples:\n  medclassify run study.yaml\n  medclassify run study.yaml --seeds 3 --workers 2 --out runs/my-study\n"
    "  medclassify run study.yaml --backend ray --address auto --workers 8   # on a Ray cluster\n\n"
    "Running the same command again skips complete experiments and resumes an interrupted one.\n",
    add_run_options,
    run,
)


REPRODUCE = Command(
    "run the paper's four experiments (studies/paper.yaml) and write its results section",
    "examples:\n  medclassify reproduce --data-dir ~/medmnist\n  medclassify reproduce --seeds 3 --lang zh\n\n"
    "BloodMNIST and OrganCMNIST at 28 and 64 px, the paper's CNN and recipe. Missing files are downloaded\n"
    "first; when that is impossible it stops before training and lists every missing file.\n",
    add_options,
    run,
)
