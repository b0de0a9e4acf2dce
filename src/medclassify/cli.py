"""The ``medclassify`` command: a thin layer that fills the library's config objects and calls it."""

from __future__ import annotations

import argparse
import sys
import warnings
from dataclasses import fields
from pathlib import Path

from . import __version__
from .data import MEDMNIST_SIZES, dataset_catalog, default_data_dir
from .errors import MedclassifyError
from .training.config import TrainConfig, flag

TRAIN_EXAMPLES = """examples:
  medclassify train --dataset bloodmnist --size 28
  medclassify train --dataset organcmnist --size 64 --epochs 20 --data-dir ~/medmnist
  medclassify train --data-dir chest_xray --size 64 --channels 1     # train/NORMAL, train/PNEUMONIA ...
  medclassify train --config run.yaml --seed 3                        # YAML keys = TrainConfig fields
  medclassify train --out runs/blood28 --resume                       # continue an interrupted run
"""

MAIN_EXAMPLES = """examples:
  medclassify demo                                    # offline, on the bundled synthetic sample
  medclassify datasets
  medclassify train --dataset bloodmnist --size 28
  medclassify evaluate runs/bloodmnist_28_paper-cnn_seed0

'medclassify COMMAND --help' shows each command's options.
"""

DEMO_OUT = "runs/demo"


class Parser(argparse.ArgumentParser):
    """Argument errors as one line and exit code 2, without the usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _formatter(prog):
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def _add_train_options(parser: argparse.ArgumentParser) -> None:
    """One option per TrainConfig field; unset options are absent so YAML values show through."""
    parser.add_argument("--config", metavar="YAML", help="read TrainConfig fields from a YAML file; options given here override it")
    for f in fields(TrainConfig):
        kwargs = {"help": f"{f.metadata['help']} (default: {f.default})", "default": argparse.SUPPRESS, "dest": f.name}
        if f.type == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = int if "int" in f.type else float if "float" in f.type else str
            kwargs["metavar"] = f.name.upper()
            if f.type.startswith("list"):
                kwargs["nargs"] = "+"
            if f.metadata["choices"]:
                kwargs["choices"] = f.metadata["choices"]
        parser.add_argument(flag(f.name), **kwargs)


def build_parser() -> Parser:
    parser = Parser(prog="medclassify", description="Train, evaluate and compare CNNs for medical image classification.",
                    formatter_class=_formatter, epilog=MAIN_EXAMPLES)
    parser.add_argument("--version", action="version", version=f"medclassify {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser, metavar="COMMAND")

    train = commands.add_parser("train", help="train a model and evaluate it on the test split", epilog=TRAIN_EXAMPLES, formatter_class=_formatter)
    _add_train_options(train)

    evaluate = commands.add_parser(
        "evaluate", help="re-evaluate a saved run", formatter_class=_formatter,
        epilog="examples:\n  medclassify evaluate runs/bloodmnist_28_paper-cnn_seed0\n  medclassify evaluate runs/demo --checkpoint last\n")
    evaluate.add_argument("run_dir", metavar="RUN_DIR", help="run folder written by 'medclassify train'")
    evaluate.add_argument("--checkpoint", choices=("best", "last"), default="best", help="which checkpoint to evaluate (default: best)")
    evaluate.add_argument("--data-dir", help="where the data are now, if they moved since training")
    evaluate.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")

    datasets = commands.add_parser("datasets", help="list the available datasets and which files are on disk", formatter_class=_formatter,
                                   epilog="example:\n  medclassify datasets --data-dir ~/medmnist\n")
    datasets.add_argument("--data-dir", help=f"where to look for files (default: {default_data_dir()})")

    models = commands.add_parser("models", help="list the registered models and their parameter counts", formatter_class=_formatter,
                                 epilog="example:\n  medclassify models --size 64 --channels 1 --classes 11\n")
    models.add_argument("--size", type=int, default=28, help="input size for the parameter count (default: 28)")
    models.add_argument("--channels", type=int, choices=(1, 3), default=3, help="input channels (default: 3)")
    models.add_argument("--classes", type=int, default=8, help="number of classes (default: 8)")

    commands.add_parser("recipes", help="list the named training recipes (--recipe NAME)", formatter_class=_formatter,
                        epilog="example:\n  medclassify train --dataset bloodmnist --recipe paper-bn-aug\n")

    run = commands.add_parser(
        "run", help="run a study (datasets x sizes x models x seeds): results table, figures and report", formatter_class=_formatter,
        epilog="examples:\n  medclassify run study.yaml\n  medclassify run study.yaml --seeds 3 --workers 2 --out runs/my-study\n\n"
               "Running the same command again skips complete experiments and resumes an interrupted one.\n")
    run.add_argument("study", metavar="STUDY_YAML", help="the study file (name, datasets, sizes, models, seeds, train)")
    _add_study_options(run)

    reproduce = commands.add_parser(
        "reproduce", help="run the paper's four experiments (studies/paper.yaml) and write its results section", formatter_class=_formatter,
        epilog="examples:\n  medclassify reproduce --data-dir ~/medmnist\n  medclassify reproduce --seeds 3 --lang zh\n\n"
               "BloodMNIST and OrganCMNIST at 28 and 64 px, the paper's CNN and recipe. Missing files are downloaded\n"
               "first; when that is impossible it stops before training and lists every missing file.\n")
    _add_study_options(reproduce)

    demo = commands.add_parser(
        "demo", help="train and evaluate the paper's CNN on the bundled synthetic sample (offline, ~1 min)", formatter_class=_formatter,
        epilog="The sample ('synthcells') is synthetic: generated cell-like images, not medical data.\n\nexample:\n  medclassify demo --out runs/demo\n")
    demo.add_argument("--out", default=DEMO_OUT, help=f"run folder (default: {DEMO_OUT})")
    demo.add_argument("--data-dir", help="where to write the generated sample (default: the OS cache)")
    demo.add_argument("--epochs", type=int, default=10, help="epochs (default: 10, the paper's)")
    demo.add_argument("--quiet", action="store_true", help="no progress bars or epoch lines")
    return parser


def _add_study_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", help="study folder (default: runs/STUDY_NAME)")
    parser.add_argument("--data-dir", help="folder with the data files, for every experiment")
    parser.add_argument("--seeds", type=int, help="repeat each experiment with seeds 0..N-1 (overrides the file)")
    parser.add_argument("--workers", type=int, default=1, help="experiments trained at once, in separate processes sharing the cores (default: 1)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the confidence intervals (default: 1000)")
    parser.add_argument("--lang", choices=("en", "zh"), default="en", help="language of report.md/.html (default: en)")
    parser.add_argument("--no-verify", action="store_true", help="accept data files whose MD5 differs from the official one")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def _print_results(result) -> None:
    from .evaluation import summary_line

    print(summary_line("val ", result.metrics["val"]))
    print(summary_line("test", result.metrics["test"]))
    print(f"best epoch {result.metrics['best_epoch']}; results in {result.run_dir}/ "
          "(config.json, history.csv, metrics.json, predictions.csv, best.pt, last.pt)")


def _run_train(args: argparse.Namespace) -> int:
    from .training import train

    values = vars(args).copy()
    yaml_path = values.pop("config", None)
    values.pop("command")
    base = TrainConfig.from_yaml(yaml_path).to_dict() if yaml_path else {}
    config = TrainConfig.from_dict({**base, **values})
    try:
        result = train(config)
    except KeyboardInterrupt:
        print(f"\ninterrupted; the last finished epoch is saved in {config.run_dir()}/last.pt - run the same command "
              "with --resume to continue", file=sys.stderr)
        return 130
    _print_results(result)
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    from .training import train

    if args.epochs < 1:
        raise MedclassifyError(f"--epochs must be >= 1, got {args.epochs}")
    out = Path(args.out)
    config = TrainConfig(dataset="synthcells", size=28, model="paper-cnn", out=str(out), data_dir=args.data_dir,
                         epochs=args.epochs, quiet=args.quiet, resume=(out / "last.pt").is_file())
    print("medclassify demo: the paper's CNN on 'synthcells', a SYNTHETIC sample of generated cell-like images "
          "(not medical data)", file=sys.stderr)
    _print_results(train(config))
    return 0


def _run_study(args: argparse.Namespace) -> int:
    from importlib.resources import files

    from .experiments import Study, run_study
    from .reporting.report import write_study_outputs

    path = getattr(args, "study", None) or files("medclassify") / "studies" / "paper.yaml"
    study = Study.from_yaml(path)
    for option in ("seeds", "workers", "bootstrap"):
        value = getattr(args, option)
        if value is not None and value < 1:
            raise MedclassifyError(f"--{option} must be >= 1, got {value}")
    if args.seeds is not None:
        study.seeds = list(range(args.seeds))
    if args.no_verify:
        study.train["verify"] = False
    study_dir = Path(args.out) if args.out else Path("runs") / study.name
    try:
        run_study(study, study_dir, data_dir=args.data_dir, quiet=args.quiet, workers=args.workers)
    except KeyboardInterrupt:
        print("\ninterrupted; run the same command again to finish the study", file=sys.stderr)
        return 130
    if not args.quiet:
        print("writing the results table, figures and report ...", file=sys.stderr)
    outputs = write_study_outputs(study, study_dir, n_boot=args.bootstrap, lang=args.lang)
    print(outputs["results"].read_text(), end="")
    print(f"report: {outputs['report']} and {outputs['report_html']}; figures in {study_dir / 'figures'}/")
    return 0


def _run_evaluate(args: argparse.Namespace) -> int:
    from .evaluation import summary_line
    from .evaluation.run import evaluate_run

    metrics = evaluate_run(args.run_dir, checkpoint=args.checkpoint, data_dir=args.data_dir, device=args.device)
    print(summary_line("val ", metrics["val"]))
    print(summary_line("test", metrics["test"]))
    print(f"wrote {Path(args.run_dir) / 'metrics.json'} and predictions.csv")
    return 0


def _run_datasets(args: argparse.Namespace) -> int:
    root = Path(args.data_dir).expanduser() if args.data_dir else default_data_dir()
    print(f"{'dataset':<16}{'task':<28}{'ch':>3}{'classes':>8}  {'train/val/test':<20}{'sizes':<16}on disk in {root}")
    for name, info in dataset_catalog().items():
        on_disk = [str(s) for s in MEDMNIST_SIZES if (root / info.filename(s)).is_file()]
        counts = "/".join(str(info.n_samples[s]) for s in ("train", "val", "test"))
        task = info.task + (" (synthetic)" if info.synthetic else "")
        print(f"{name:<16}{task:<28}{info.n_channels:>3}{len(info.class_names):>8}  {counts:<20}"
              f"{','.join(map(str, info.sizes)):<16}{','.join(on_disk) or '-'}")
    print("\nfolder: your own images in DIR/train/<class>/ (optional val/, test/): medclassify train --data-dir DIR")
    return 0


def _run_models(args: argparse.Namespace) -> int:
    from .models import available_models, count_parameters, create_model

    print(f"{'model':<20}{'parameters':>12}  description   ({args.channels} channel(s), {args.classes} classes, {args.size} px)")
    for name, entry in available_models().items():
        params = count_parameters(create_model(name, args.channels, args.classes, args.size))
        print(f"{name:<20}{params:>12,}  {entry.description}" + ("  [ImageNet weights]" if entry.pretrained else ""))
    return 0


def _run_recipes(args: argparse.Namespace) -> int:
    from .training.config import available_recipes, load_recipe

    for name, path in available_recipes().items():
        comment = " ".join(line.lstrip("# ").strip() for line in path.read_text().splitlines() if line.startswith("#"))
        settings = ", ".join(f"{k}={v}" for k, v in load_recipe(name).items())
        print(f"{name}\n  {comment}\n  {settings}\n")
    return 0


COMMANDS = {"recipes": _run_recipes, "run": _run_study, "reproduce": _run_study, "train": _run_train, "evaluate": _run_evaluate, "datasets": _run_datasets, "models": _run_models, "demo": _run_demo}


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    print(f"medclassify: warning: {message}", file=file or sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.showwarning = _one_line_warning
    try:
        return COMMANDS[args.command](args)
    except MedclassifyError as exc:
        print(f"medclassify {args.command}: error: {exc}", file=sys.stderr)
        return 2
