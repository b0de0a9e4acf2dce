"""The ``medclassify`` command: a thin layer that fills the library's config objects and calls it."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
import types
import typing
import warnings
from dataclasses import fields
from pathlib import Path

from . import __version__
from .defaults import (
    BOOTSTRAP_RESAMPLES,
    CONFORMAL_SCORES,
    CORRUPTION_SETS,
    EXPORT_FORMATS,
    GRID_PER_CLASS,
    PARITY_TOLERANCE,
    PREDICT_BATCH_SIZE,
    SEVERITIES,
    TRACKERS,
)
from .errors import MedclassifyError

TRAIN_EXAMPLES = """examples:
  medclassify train --dataset bloodmnist --size 28
  medclassify train --dataset organcmnist --size 64 --epochs 20 --data-dir ~/medmnist
  medclassify train --data-dir chest_xray --size 64 --channels 1     # train/NORMAL, train/PNEUMONIA ...
  medclassify train --config run.yaml --seed 3                        # YAML keys = TrainConfig fields
  medclassify train --out runs/blood28 --resume                       # continue an interrupted run
  medclassify train --dataset bloodmnist --nproc 2                    # DistributedDataParallel, 2 processes
  torchrun --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d --rdzv-endpoint HOST:29500 -m medclassify train ...
"""

MAIN_EXAMPLES = """examples:
  medclassify demo                                    # offline, on the bundled synthetic sample
  medclassify datasets
  medclassify train --dataset bloodmnist --size 28
  medclassify evaluate runs/bloodmnist_28_paper-cnn_seed0
  medclassify predict runs/demo image.png
  medclassify explain runs/demo image.png
  medclassify export runs/demo

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
    from .config import TrainConfig

    parser.add_argument(
        "--config", metavar="YAML", help="read TrainConfig fields from a YAML file; options given here override it"
    )
    parser.add_argument(
        "--nproc",
        type=int,
        default=1,
        help="processes on this machine: launches torchrun for DistributedDataParallel "
        "(one per GPU, or CPU processes with Gloo); --batch-size stays the effective batch (default: 1)",
    )
    _add_config_options(parser, [f.name for f in fields(TrainConfig)])


def _add_config_options(parser: argparse.ArgumentParser, names: list[str]) -> None:
    """An option for each of the TrainConfig fields ``names``, with the field's help, type and choices."""
    from .config import TrainConfig, flag

    hints = typing.get_type_hints(TrainConfig)
    for f in fields(TrainConfig):
        if f.name not in names:
            continue
        help_text = f.metadata["help"]
        if "default" not in help_text and f.default is not None:  # some helps say in words what None means
            help_text += f" (default: {f.default})"
        kwargs = {"help": help_text, "default": argparse.SUPPRESS, "dest": f.name}
        value_type, many = _option_type(hints[f.name])
        if value_type is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = value_type
            if f.metadata["choices"]:
                kwargs["choices"] = f.metadata["choices"]  # argparse shows them as {a,b,c}
            else:
                kwargs["metavar"] = f.name.upper()
            if many:
                kwargs["nargs"] = "+"
        parser.add_argument(flag(f.name), **kwargs)


def _option_type(hint) -> tuple[type, bool]:
    """The type one command-line value converts to, and whether the option takes several:
    ``int | None`` -> (int, False), ``list[int] | None`` -> (int, True)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if typing.get_origin(hint) is list:
        return typing.get_args(hint)[0], True
    return hint, False


def _add_evaluate_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="run folder written by 'medclassify train'")
    parser.add_argument(
        "--checkpoint", choices=("best", "last"), default="best", help="which checkpoint to evaluate (default: best)"
    )
    parser.add_argument("--data-dir", help="where the data are now, if they moved since training")
    _add_device_option(parser)


def _add_device_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")


def _add_datasets_options(parser: argparse.ArgumentParser) -> None:
    from .data import default_data_dir

    parser.add_argument("--data-dir", help=f"where to look for files (default: {default_data_dir()})")
    from .data import cache_root

    parser.add_argument("--cache-dir", help=f"where the split caches are (default: {_home(cache_root())})")


def _home(path: Path) -> str:
    """A path under the home folder as ``~/...``, as the help texts show it."""
    home = Path.home()
    return f"~/{path.relative_to(home)}" if path.is_relative_to(home) else str(path)


def _add_cache_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "dataset", nargs="?", help="MedMNIST dataset or synthcells (leave out for the image folder given as --data-dir)"
    )
    _add_config_options(parser, CACHE_OPTIONS)  # as train takes them, so both find the same cache


# The TrainConfig fields that decide which data a run reads, and so which split cache.
CACHE_OPTIONS = [
    "size", "channels", "data_dir", "cache_dir", "val_fraction", "test_fraction", "seed", "download", "verify",
    "verify_cache",
]  # fmt: skip


MODEL_SIZES = (8, 1024)  # what image folders accept; MedMNIST sizes lie inside
MAX_CLASSES = 10_000


def _add_models_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--size",
        type=int,
        default=28,
        help=f"input size for the parameter count, {MODEL_SIZES[0]} to {MODEL_SIZES[1]} (default: 28)",
    )
    parser.add_argument("--channels", type=int, choices=(1, 3), default=3, help="input channels (default: 3)")
    parser.add_argument("--classes", type=int, default=8, help="number of classes, at least 2 (default: 8)")


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "study",
        metavar="STUDY_YAML",
        help="the study file (name, datasets, sizes, models, seeds, train), or a packaged study: "
        + ", ".join(sorted(p.stem for p in (Path(__file__).parent / "studies").glob("*.yaml"))),
    )
    _add_study_options(parser)


def _add_demo_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=DEMO_OUT, help=f"run folder (default: {DEMO_OUT})")
    parser.add_argument("--data-dir", help="where to write the generated sample (default: the OS cache)")
    parser.add_argument("--epochs", type=int, default=10, help="epochs (default: 10, the paper's)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or epoch lines")


def _add_predict_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model", metavar="RUN_OR_MODEL", help="run folder, .pt bundle (e.g. best.pt) or exported .onnx model"
    )
    parser.add_argument(
        "images",
        metavar="IMAGE",
        nargs="+",
        help="image files or folders: PNG, JPEG, BMP, TIFF, DICOM (.dcm), .npy/.npz arrays",
    )
    parser.add_argument("--out", metavar="FILE", help="also write the predictions to FILE.csv or FILE.json")
    parser.add_argument("--top", type=int, default=3, help="classes listed per image (default: 3)")
    parser.add_argument(
        "--batch-size", type=int, default=PREDICT_BATCH_SIZE, help="images per forward pass (default: %(default)s)"
    )
    parser.add_argument(
        "--backend",
        choices=("auto", "torch", "onnx"),
        default="auto",
        help="auto: the run's model.onnx when it was exported from its best.pt, else PyTorch (default: auto)",
    )
    _add_device_option(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_explain_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model", metavar="RUN_OR_BUNDLE", help="run folder or .pt bundle (Grad-CAM needs the PyTorch model)"
    )
    parser.add_argument(
        "images", metavar="IMAGE", nargs="*", help="image files or folders; none: a grid over the run's --split"
    )
    parser.add_argument("--out", metavar="DIR", help="folder for the PNG files (default: RUN/explain)")
    parser.add_argument(
        "--target", metavar="CLASS", help="explain this class (name or index) instead of the predicted one"
    )
    parser.add_argument(
        "--layer",
        metavar="NAME",
        help="target layer, a dotted module name (default: the model's last convolutional block)",
    )
    parser.add_argument(
        "--split", choices=("test", "val"), default="test", help="split for the grid figure (default: test)"
    )
    parser.add_argument(
        "--per-class",
        type=int,
        default=GRID_PER_CLASS,
        help="correct and wrong examples per class in the grid (default: %(default)s)",
    )
    parser.add_argument("--data-dir", help="where the run's data are now, if they moved since training")
    _add_device_option(parser)


def _add_export_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="RUN_OR_BUNDLE", help="run folder (its best.pt) or .pt bundle")
    parser.add_argument(
        "--format",
        choices=(*EXPORT_FORMATS, "hub"),
        default=next(iter(EXPORT_FORMATS)),
        help="file format, or hub: a Hugging Face Hub model folder (config.json, model.safetensors, "
        "preprocessor_config.json, the model card as README.md) (default: %(default)s)",
    )
    parser.add_argument(
        "--out", metavar="FILE", help="output file or folder (default: RUN/model.onnx, RUN/model.ts or RUN/hub)"
    )
    parser.add_argument("--data-dir", help="where the run's data are now, for the parity check on the test split")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=PARITY_TOLERANCE,
        help="largest allowed logit difference to PyTorch (default: %(default)g)",
    )


def _add_calibrate_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a finished run folder")
    parser.add_argument(
        "--method",
        choices=("temperature", "none"),
        default="temperature",
        help="temperature: fit T on validation; none: keep the bundle's (e.g. to set only a threshold) (default: temperature)",
    )
    parser.add_argument(
        "--threshold",
        metavar="RULE",
        help="choose the decision threshold on validation: youden, sensitivity=0.95, specificity=0.9 or a probability",
    )
    parser.add_argument(
        "--positive-class",
        metavar="CLASS",
        help="with --threshold: the class decided against the rest (binary: the second class)",
    )
    parser.add_argument(
        "--conformal",
        type=float,
        metavar="LEVEL",
        help="calibrate conformal prediction sets on validation at this miscoverage (0.1: sets that hold the true "
        "class of 9 in 10 new images)",
    )
    parser.add_argument(
        "--conformal-score",
        choices=CONFORMAL_SCORES,
        help="with --conformal: lac, the smallest sets, empty when no class is likely enough; aps: never empty, "
        f"covers more than asked (default: {CONFORMAL_SCORES[0]})",
    )
    parser.add_argument(
        "--mondrian", action="store_true", help="with --conformal: one threshold per class (coverage for every class)"
    )
    parser.add_argument("--data-dir", help="where the run's data are now, if they moved since training")
    _add_device_option(parser)


def _run_calibrate(args: argparse.Namespace) -> int:
    from .evaluation.metrics import CALIBRATION_METRICS
    from .runs import calibrate_run

    record = calibrate_run(
        args.run_dir,
        args.method,
        args.data_dir,
        args.device,
        args.threshold,
        args.positive_class,
        args.conformal,
        args.conformal_score,
        args.mondrian,
    )
    if "temperature" in record:
        print(
            f"temperature {record['temperature']:.4g}, fitted on the validation split (NLL {record['val_nll_before']:.4f} -> "
            f"{record['val_nll_after']:.4f})"
        )
        print(
            "test split, before -> after: "
            + ", ".join(
                f"{name} {record['before'][name]:.4f} -> {record['after'][name]:.4f}" for name in CALIBRATION_METRICS
            )
        )
    if "operating_point" in record:
        point = record["operating_point"]
        print(
            f"threshold {point['threshold']:.4g} for '{point['positive_class']}' ({point['rule']}, chosen on the validation split)"
        )
        for split in ("val", "test"):
            figures = point[split]
            print(
                f"{split}: "
                + ", ".join(
                    f"{name} {figures[name]:.4f} ({figures[name + '_ci'][0]:.4f}-{figures[name + '_ci'][1]:.4f})"
                    for name in ("sensitivity", "specificity", "ppv", "npv")
                )
            )
    if "conformal" in record:
        from .evaluation.conformal import conformal_summary

        print(conformal_summary(record["conformal"]))
    print(
        f"stored in {Path(args.run_dir) / 'best.pt'} (predict, serve, explain and export apply it) and "
        f"{Path(args.run_dir) / 'metrics.json'}"
    )
    return 0


CALIBRATE_EPILOG = """examples:
  medclassify calibrate runs/blood28
  medclassify train --dataset bloodmnist --calibrate temperature       # the same, right after training
  medclassify calibrate runs/pneumonia28 --threshold sensitivity=0.95  # and a screening operating point
  medclassify calibrate runs/blood28 --method none --threshold youden --positive-class lymphocyte
  medclassify calibrate runs/blood28 --conformal 0.1                   # 90% prediction sets

A temperature T is fitted on the validation split (minimum negative log-likelihood) and the logits are
divided by it from then on: the class decisions stay, the probabilities say how often the model is right.
With --conformal, each image also gets a set of classes that holds its true class with the chosen
probability, for images like the validation ones (split conformal prediction, calibrated on validation).
Export again afterwards: the exported graph holds T and its metadata the conformal thresholds.
"""


def _add_robustness_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a finished run folder")
    parser.add_argument(
        "--corruptions",
        choices=CORRUPTION_SETS,
        default=CORRUPTION_SETS[0],
        help="medmnistc: MedMNIST-C's corruptions for the dataset; generic: the set for any images; auto: "
        "medmnistc where MedMNIST-C has the dataset (default: %(default)s)",
    )
    parser.add_argument(
        "--severities",
        type=int,
        nargs="+",
        default=list(SEVERITIES),
        metavar="S",
        help="severities to test, from 1 to 5 (default: all)",
    )
    parser.add_argument("--seed", type=int, help="seed of the random corruptions (default: the run's)")
    parser.add_argument("--data-dir", help="where the run's data are now, if they moved since training")
    _add_device_option(parser)


def _run_robustness(args: argparse.Namespace) -> int:
    from .evaluation.robustness import robustness_line
    from .runs import ROBUSTNESS_FIGURE, ROBUSTNESS_TABLE, robustness_run

    record = robustness_run(
        args.run_dir, args.corruptions, args.data_dir, args.device, tuple(args.severities), args.seed
    )
    print(f"{record['corruptions']} corruptions on the test split of {record['dataset']}: {robustness_line(record)}")
    family = ", ".join(f"{name} {ce:.4f}" for name, ce in record["family_ce"].items())
    print(f"corruption error by family: {family}")
    if record["clean_coverage"] is not None:
        print(
            f"conformal coverage (target {record['conformal_target']:.2f}): clean {record['clean_coverage']:.4f}, "
            f"corrupted {record['corrupted_coverage']:.4f}"
        )
    run = Path(args.run_dir)
    print(
        f"written: {run / ROBUSTNESS_TABLE}, {run / (ROBUSTNESS_FIGURE + '.png')} and the 'robustness' record "
        f"of {run / 'metrics.json'}"
    )
    return 0


ROBUSTNESS_EPILOG = """examples:
  medclassify robustness runs/blood28
  medclassify robustness runs/my-xrays --corruptions generic --severities 1 3 5
  medclassify train --dataset bloodmnist --robustness auto            # the same, right after training

Each test image is classified clean and under each corruption at each severity (MedMNIST-C's
families: digital, noise, blur, colour, gamma; its parameters for the dataset, blur widths scaled
from 224 px to the image). The table has ACC, AUC, macro-F1, ECE and, for a model calibrated with
--conformal, the coverage and size of its prediction sets. mCE is the error averaged over severities
and corruptions; relative mCE subtracts the clean error. The clean figures here come from the bundle
as predict applies it (no test-time flips), so they can differ slightly from metrics.json's test.
"""


def _add_track_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", metavar="STUDY_OR_RUN", help="a study folder (its runs/) or one run folder")
    parser.add_argument("--to", nargs="+", choices=TRACKERS, required=True, help="the trackers to send the records to")


def _run_track(args: argparse.Namespace) -> int:
    from .training.tracking import replay_study

    sent = replay_study(Path(args.folder), args.to)
    print(f"sent {len(sent)} run(s) to {' and '.join(args.to)}: {', '.join(p.name for p in sent)}")
    return 0


def _add_tune_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("search", metavar="SEARCH_YAML", help="the search: base config, space, metric, budget")
    parser.add_argument("--out", help="the search folder (default: runs/tune-NAME)")
    parser.add_argument("--data-dir", help="folder with the dataset files (default: as in the search's base)")
    parser.add_argument("--workers", type=int, default=1, help="trials at once, in processes (default: 1)")
    parser.add_argument(
        "--backend",
        choices=("local", "ray"),
        default="local",
        help="local processes, or ray: Ray Tune (its median-stopping or ASHA scheduler; the trials proposed by the "
        "search's Optuna study) on the cluster at --address, --workers trials at a time (default: %(default)s)",
    )
    parser.add_argument(
        "--address", help="with --backend ray: the cluster (auto, ray://HEAD:10001; default: start one)"
    )
    parser.add_argument(
        "--no-retrain", dest="retrain", action="store_false", help="skip retraining and testing the best recipe"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def _run_tune(args: argparse.Namespace) -> int:
    from .experiments.tune import Search, run_search, summary

    if args.address is not None and args.backend != "ray":
        raise MedclassifyError("--address needs --backend ray (the Ray cluster to run on)")
    search = Search.from_yaml(args.search)
    out = Path(args.out or Path("runs") / f"tune-{search.name}")
    try:
        result = run_search(
            search, out, args.data_dir, args.workers, args.retrain, args.quiet, args.backend, args.address
        )
    except KeyboardInterrupt:
        print(f"\ninterrupted; the trials so far are kept in {out} - run the same command to continue", file=sys.stderr)
        return 130
    print(summary(result, search.metric))
    print(f"written into {out}: " + ", ".join(p.name for p in result.files))
    return 0


def _add_card_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a finished run folder")


def _run_card(args: argparse.Namespace) -> int:
    from .runs import write_model_card

    print(f"wrote {write_model_card(args.run_dir)}")
    return 0


def _add_push_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a finished run folder")
    parser.add_argument(
        "--repo", required=True, metavar="OWNER/NAME", help="the Hub model repository (created if needed)"
    )
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--token", help="a Hub access token (default: HF_TOKEN or 'hf auth login')")


def _run_push(args: argparse.Namespace) -> int:
    from .inference.hub import push_to_hub

    url = push_to_hub(args.run_dir, args.repo, args.private, args.token)
    print(f"uploaded {Path(args.run_dir) / 'hub'} to {args.repo}: {url}")
    return 0


def _add_published_options(parser: argparse.ArgumentParser) -> None:
    from .data import MEDMNIST_SIZES

    parser.add_argument("dataset", help="a MedMNIST 2D dataset, e.g. bloodmnist")
    parser.add_argument(
        "--size", type=int, choices=MEDMNIST_SIZES, help="only results on the images of this size (default: all)"
    )
    parser.add_argument(
        "--source",
        nargs="+",
        choices=("v2", "plus"),
        default=["v2", "plus"],
        help="v2: MedMNIST v2's Table 3; plus: the MedMNIST+ benchmark (default: both)",
    )


def _run_published(args: argparse.Namespace) -> int:
    from .data import dataset_catalog
    from .reporting.published import CITATIONS, published_results

    catalog = dataset_catalog()
    name = args.dataset.lower()
    if name not in catalog or catalog[name].synthetic:
        known = ", ".join(n for n, info in catalog.items() if not info.synthetic)
        raise MedclassifyError(f"{args.dataset}: not a MedMNIST 2D dataset; choose one of {known}")
    rows = published_results(name, args.size, tuple(args.source))
    if not rows:
        raise MedclassifyError(f"no published result for {name} at {args.size} px in {', '.join(args.source)}")
    rows.sort(key=lambda r: (r.source, r.size, -r.acc))
    print(f"{rows[0].title}: published test results, not measured here (fractions)")
    print(f"{'source':<7}{'images':>7}{'network':>9}  {'model':<26}{'training':<17}{'ACC':>7}{'AUC':>7}")
    for r in rows:
        auc = "-" if r.auc is None else f"{r.auc:.4f}"
        training = r.training if r.source == "plus" else "-"
        print(f"{r.source:<7}{r.size:>7}{r.trained_size:>9}  {r.model:<26}{training:<17}{r.acc:>7.4f}{auc:>7}")
    print("\nimages: the MedMNIST files' size; network: the size the network saw (v2: 28 px enlarged to 224;")
    print("MedMNIST+: 28 px zero-padded to 224). Sources:")
    for source in dict.fromkeys(r.source for r in rows):
        print(f"  {source}: {CITATIONS[source]}")
    return 0


def _add_ensemble_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "models", metavar="RUN_OR_BUNDLE", nargs="+", help="run folders (their best.pt) or .pt bundles, at least two"
    )
    parser.add_argument("--out", metavar="FILE.pt", required=True, help="the ensemble bundle to write")


def _run_ensemble(args: argparse.Namespace) -> int:
    from .runs import make_ensemble

    result = make_ensemble(args.models, args.out)
    print(
        f"ensemble of {len(result.members)} models ({result.parameters:,} parameters) written to {result.path}; "
        "predict, serve, explain and export use it like any bundle"
    )
    return 0


ENSEMBLE_EPILOG = """examples:
  medclassify ensemble runs/blood_seed0 runs/blood_seed1 runs/blood_seed2 --out blood_ensemble.pt
  medclassify predict blood_ensemble.pt cell.png
  medclassify export blood_ensemble.pt                 # one ONNX graph holding every member

The ensemble's probabilities are the mean of its members' (each after its own temperature when the
run was calibrated). Members must share the input (size, channels, normalisation) and the data.
"""


def _add_serve_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "models",
        metavar="RUN_OR_MODEL",
        nargs="+",
        help="run folders, .pt bundles or .onnx files; NAME=PATH names a model (default: the folder's or file's name)",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)"
    )
    parser.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    from .serve.settings import ServeSettings

    for f in fields(ServeSettings):
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            type=float if f.type == "float" else int,
            default=f.default,
            help=f"{f.metadata['help']} (default: {f.default:,})"
            if f.type == "int"
            else f"{f.metadata['help']} (default: {f.default:g})",
        )
    parser.add_argument(
        "--max-connections", type=int, default=100, help="most open connections; more are answered 503 (default: 100)"
    )
    _add_device_option(parser)


EVALUATE_EPILOG = "examples:\n  medclassify evaluate runs/bloodmnist_28_paper-cnn_seed0\n  medclassify evaluate runs/demo --checkpoint last\n"
PREDICT_EPILOG = """examples:
  medclassify predict runs/demo cell.png
  medclassify predict runs/blood28 new_images/ --out predictions.csv
  medclassify predict runs/blood28/model.onnx scan.dcm stack.npz --out predictions.json

Each image is converted as the training images were: 8-bit RGB (DICOM: rescale slope/intercept, then
the file's window; MONOCHROME1 inverted), bicubic resize to the model's size, grey by luma for
one-channel models, the run's normalisation. Unreadable files are reported and skipped.
"""
EXPLAIN_EPILOG = """examples:
  medclassify explain runs/demo cell.png --out cams/            # overlay PNG per image
  medclassify explain runs/demo cell.png --target 3 --layer features.3
  medclassify explain runs/demo                                  # grid of right and wrong test images
"""
EXPORT_EPILOG = """examples:
  medclassify export runs/demo                     # runs/demo/model.onnx; predict then uses it
  medclassify export runs/demo --format torchscript --out demo.ts

The logits of the exported model are compared with PyTorch's on the run's test split (random images
when the data are not at hand); the file is written only when they agree within --tolerance.
"""


def _add_study_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", help="study folder (default: runs/STUDY_NAME)")
    parser.add_argument("--data-dir", help="folder with the data files, for every experiment")
    parser.add_argument("--seeds", type=int, help="repeat each experiment with seeds 0..N-1 (overrides the file)")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="experiments trained at once, in separate processes sharing the cores (default: 1)",
    )
    parser.add_argument(
        "--backend",
        choices=("local", "ray"),
        default="local",
        help="local: a process pool on this machine; ray: Ray tasks (pip install 'medclassify[ray]') (default: local)",
    )
    parser.add_argument(
        "--address",
        help="with --backend ray: the cluster to join, e.g. auto or ray://HEAD:10001 (default: start Ray here)",
    )
    parser.add_argument(
        "--bootstrap",
        type=int,
        default=BOOTSTRAP_RESAMPLES,
        help="bootstrap resamples for the confidence intervals (default: %(default)s)",
    )
    parser.add_argument("--lang", choices=("en", "zh"), default="en", help="language of report.md/.html (default: en)")
    parser.add_argument(
        "--no-verify", action="store_true", help="accept data files whose MD5 differs from the official one"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def _print_results(result) -> None:
    from .evaluation import summary_line

    print(summary_line("val ", result.metrics["val"]))
    print(summary_line("test", result.metrics["test"]))
    print(
        f"best epoch {result.metrics['best_epoch']}; results in {result.run_dir}/ "
        "(config.json, history.csv, metrics.json, predictions.csv, best.pt, last.pt, MODEL_CARD.md)"
    )


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


def _run_train(args: argparse.Namespace) -> int:
    from .config import TrainConfig
    from .training import train

    if args.nproc < 1:
        raise MedclassifyError(f"--nproc must be >= 1, got {args.nproc}")
    values = vars(args).copy()
    yaml_path = values.pop("config", None)
    for launcher_only in ("command", "nproc", "argv", "verbose", "debug"):
        values.pop(launcher_only)
    base = TrainConfig.from_yaml(yaml_path).to_dict() if yaml_path else {}
    if values.get("resume") and "out" in values and not yaml_path:  # --out RUN --resume: the run's own settings
        from .runs import RunDir

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
        from .experiments.runner import missing_data_files
        from .runtime.distributed import launch
        from .training.trainer import check_run_folder

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
        _print_results(result)
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    from .config import TrainConfig
    from .runs import RunDir
    from .training import train

    if args.epochs < 1:
        raise MedclassifyError(f"--epochs must be >= 1, got {args.epochs}")
    out = Path(args.out)
    config = TrainConfig(
        dataset="synthcells",
        size=28,
        model="paper-cnn",
        out=str(out),
        data_dir=args.data_dir,
        epochs=args.epochs,
        quiet=args.quiet,
        resume=RunDir(out).last_path.is_file(),
    )
    print(
        "medclassify demo: the paper's CNN on 'synthcells', a SYNTHETIC sample of generated cell-like images "
        "(not medical data)",
        file=sys.stderr,
    )
    result = train(config)
    if result.already_complete:
        print(
            f"{result.run_dir} is already complete; nothing was trained or written (remove it to train again)",
            file=sys.stderr,
        )
    _print_results(result)
    return 0


def _run_study(args: argparse.Namespace) -> int:
    from importlib.resources import files

    from .experiments import Study, run_study
    from .reporting.report import write_study_outputs

    packaged = files("medclassify") / "studies"
    path = getattr(args, "study", None) or packaged / "paper.yaml"
    if not Path(path).exists() and (packaged / f"{path}.yaml").is_file():  # a packaged study by name
        path = packaged / f"{path}.yaml"
    study = Study.from_yaml(path)
    for option in ("seeds", "workers", "bootstrap"):
        value = getattr(args, option)
        if value is not None and value < 1:
            raise MedclassifyError(f"--{option} must be >= 1, got {value}")
    if args.seeds is not None:
        from .experiments.study import MAX_SEEDS

        if args.seeds > MAX_SEEDS:
            raise MedclassifyError(f"--seeds must be from 1 to {MAX_SEEDS}, got {args.seeds}")
        study.seeds = list(range(args.seeds))
    if args.address is not None and args.backend != "ray":
        raise MedclassifyError("--address needs --backend ray (the Ray cluster to run on)")
    if args.no_verify:
        study.train["verify"] = False
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


def _run_evaluate(args: argparse.Namespace) -> int:
    from .evaluation import summary_line
    from .runs import evaluate_run, result_files

    metrics = evaluate_run(args.run_dir, checkpoint=args.checkpoint, data_dir=args.data_dir, device=args.device)
    print(summary_line("val ", metrics["val"]))
    print(summary_line("test", metrics["test"]))
    metrics_file, predictions_file = result_files(args.checkpoint)
    print(f"wrote {Path(args.run_dir) / metrics_file} and {predictions_file}")
    return 0


def _run_datasets(args: argparse.Namespace) -> int:
    from .data import MEDMNIST_SIZES, cache_root, dataset_catalog, default_data_dir, list_caches

    root = Path(args.data_dir).expanduser() if args.data_dir else default_data_dir()
    caches_root = cache_root(args.cache_dir)
    caches = list_caches(caches_root)
    cached_sizes: dict[str, list[str]] = {}
    for cache in caches:  # the cached column: caches of this folder's files
        source = Path(cache.record["source"].get("file", ""))
        if cache.record.get("kind") == "npz" and source.parent == root.resolve():
            cached_sizes.setdefault(cache.record["name"], []).append(_cache_label(cache.record))
    print(f"files in {root}; split caches in {caches_root}\n")
    print(
        f"{'dataset':<16}{'task':<28}{'ch':>3}{'classes':>8}  {'train/val/test':<20}{'sizes':<16}{'on disk':<12}cached"
    )
    for name, info in dataset_catalog().items():
        on_disk = [str(s) for s in MEDMNIST_SIZES if (root / info.filename(s)).is_file()]
        counts = "/".join(str(info.n_samples[s]) for s in ("train", "val", "test"))
        task = info.task + (" (synthetic)" if info.synthetic else "")
        print(
            f"{name:<16}{task:<28}{info.n_channels:>3}{len(info.class_names):>8}  {counts:<20}"
            f"{','.join(map(str, info.sizes)):<16}{','.join(on_disk) or '-':<12}{','.join(cached_sizes.get(name, [])) or '-'}"
        )
    if caches:
        print()
    for cache in caches:
        record = cache.record
        print(
            f"{cache.folder}: {_bytes(cache.nbytes)}, {record['name']} at {record['size']} px, {record['channels']} "
            f"channel(s), from {record['source'].get('file') or record['source'].get('root')}"
        )
    if caches:
        print("(a split cache can be deleted at any time; the next run that needs it builds it again)")
    print("\nfolder: your own images in DIR/train/<class>/ (optional val/, test/): medclassify train --data-dir DIR")
    return 0


def _cache_label(record: dict) -> str:
    """A cache's size, with its channels when they are a conversion (e.g. ``64/3ch``)."""
    converted = record.get("kind") == "npz" and record["channels"] != _native_channels(record["name"])
    return f"{record['size']}" + (f"/{record['channels']}ch" if converted else "")


def _native_channels(name: str) -> int | None:
    from .data import dataset_catalog

    info = dataset_catalog().get(name)
    return info.n_channels if info else None


def _bytes(count: int) -> str:
    return f"{count / 1e9:.2f} GB" if count >= 1e8 else f"{count / 1e6:.1f} MB"


def _run_cache(args: argparse.Namespace) -> int:
    import time

    from .config import TrainConfig
    from .data.cache import read_cache
    from .runs import load_run_data

    data_dir = getattr(args, "data_dir", None)
    if args.dataset is None and not (data_dir and (Path(data_dir).expanduser() / "train").is_dir()):
        raise MedclassifyError("give a dataset name, or --data-dir pointing at an image folder with train/<class>/")
    started = time.perf_counter()
    given = {name: value for name, value in vars(args).items() if name in CACHE_OPTIONS}
    config = TrainConfig(dataset=args.dataset, data_storage="mmap", **given)
    with warnings.catch_warnings():
        # where no cache can be written, a run falls back to memory; this command stops at once instead
        warnings.filterwarnings("error", message=".*without a split cache", category=UserWarning)
        try:
            data = load_run_data(config.validate())  # the data a train command with these options reads
        except UserWarning as exc:
            reason = str(exc).split("; reading ", 1)[0]
            raise MedclassifyError(
                f"{reason}: no split cache was written (--cache-dir DIR puts it elsewhere)"
            ) from None
    seconds = time.perf_counter() - started
    folder = data.source["cache"]
    cache = read_cache(Path(folder))
    shapes = (
        ", ".join(f"{name} {len(split)}" for name, split in data.splits.items())
        + f" images of {data.channels} x {data.size} x {data.size}"
    )
    print(
        f"split cache {folder}: {_bytes(cache.nbytes)} ({shapes}); built {cache.record['created']}; this command took {seconds:.1f} s"
    )
    return 0


def _run_models(args: argparse.Namespace) -> int:
    from .models import available_models, count_parameters, create_model

    if not MODEL_SIZES[0] <= args.size <= MODEL_SIZES[1]:
        raise MedclassifyError(f"--size must be from {MODEL_SIZES[0]} to {MODEL_SIZES[1]} pixels, got {args.size}")
    if not 2 <= args.classes <= MAX_CLASSES:
        raise MedclassifyError(f"--classes must be from 2 to {MAX_CLASSES:,}, got {args.classes}")
    print(
        f"{'model':<20}{'parameters':>12}  description   ({args.channels} channel(s), {args.classes} classes, {args.size} px)"
    )
    for name, entry in available_models().items():
        params = count_parameters(create_model(name, args.channels, args.classes, args.size))
        print(
            f"{name:<20}{params:>12,}  {entry.description}"
            + ("  [--pretrained: ImageNet weights available]" if entry.pretrained else "")
        )
    return 0


def _run_recipes(args: argparse.Namespace) -> int:
    from .config import available_recipes, load_recipe

    for name, path in available_recipes().items():
        comment = " ".join(line.lstrip("# ").strip() for line in path.read_text().splitlines() if line.startswith("#"))
        settings = ", ".join(f"{k}={v}" for k, v in load_recipe(name).items())
        print(f"{name}\n  {comment}\n  {settings}\n")
    return 0


def _write_predictions(path: Path, predictions, top: int, describe: str) -> None:
    from .io import PROBABILITY_FORMAT, probability_columns, write_csv, write_json

    if path.suffix.lower() == ".json":
        write_json(
            path,
            {
                "model": describe,
                "predictions": predictions.records(top),
                "skipped": [{"file": f, "error": e} for f, e in predictions.skipped],
            },
        )
        return
    decided = predictions.operating_point is not None
    with_sets = predictions.conformal is not None
    header = [
        "file",
        "prediction",
        "probability",
        "top",
        *(["decision"] if decided else []),
        *(["prediction_set"] if with_sets else []),
    ] + probability_columns(predictions.class_names)
    rows = (
        [
            r["file"],
            r["prediction"],
            format(r["probability"], PROBABILITY_FORMAT),
            "; ".join(f"{t['class']} {t['probability']:.4f}" for t in r["top"]),
            *([r["decision"]] if decided else []),
            *(["; ".join(r["prediction_set"]["classes"])] if with_sets else []),
            *(format(p, PROBABILITY_FORMAT) for p in r["probabilities"].values()),
        ]
        for r in predictions.records(top)
    )
    write_csv(path, header, rows)


def _report_skipped(command: str, skipped: list[tuple[str, str]], n_read: int) -> None:
    """One line per unreadable file; an error when no file could be read."""
    for _, reason in skipped:
        print(f"medclassify {command}: skipped {reason}", file=sys.stderr)
    if not n_read:
        raise MedclassifyError(f"none of the {len(skipped)} file(s) given is a readable image")


def _run_predict(args: argparse.Namespace) -> int:
    from .inference.predictor import Predictor

    if args.top < 1 or args.batch_size < 1:
        raise MedclassifyError("--top and --batch-size must be >= 1")
    out = Path(args.out) if args.out else None
    if out is not None and out.suffix.lower() not in (".csv", ".json"):
        raise MedclassifyError(f"--out {out}: expected a .csv or .json file name")
    predictor = Predictor.from_run(args.model, device=args.device, backend=args.backend)
    predictions = predictor.predict(args.images, batch_size=args.batch_size, progress=not args.quiet)
    _report_skipped("predict", predictions.skipped, len(predictions))
    from .reporting.texts import shorten

    width = min(max(len(name) for name in predictions.sources), 60)
    labels = [shorten(predictions.predicted(i), 40) for i in range(len(predictions))]
    label_width = max(len("prediction"), *map(len, labels))
    point = predictions.operating_point
    if point is not None:
        print(
            f"decision: '{point['positive_class']}' when its probability is at least {point['threshold']:.4g} "
            f"({point['rule']}, chosen on the validation split)",
            file=sys.stderr,
        )
    if predictions.conformal is not None:
        record = predictions.conformal
        print(
            f"set: the classes that hold the true class with {1 - record['alpha']:.0%} confidence, for images like the "
            f"validation images ({record['score']} conformal sets calibrated on them); empty: no class is likely enough",
            file=sys.stderr,
        )
    decisions = [shorten(predictions.decision(i), 40) for i in range(len(predictions))] if point is not None else []
    decision_width = max([len("decision"), *map(len, decisions)]) if decisions else 0
    decision_head = f"{'decision':<{decision_width}}  " if decisions else ""
    print(f"{'file':<{width}}  {'prediction':<{label_width}} {'prob':>6}  {decision_head}top {args.top}")
    for i, name in enumerate(predictions.sources):
        shown = name if len(name) <= width else "…" + name[-width + 1 :]
        top = ", ".join(f"{shorten(c, 40)} {p:.3f}" for c, p in predictions.top(i, args.top))
        decision = f"{decisions[i]:<{decision_width}}  " if decisions else ""
        members = predictions.prediction_set(i)
        in_set = "" if members is None else f"  set {{{', '.join(shorten(c, 40) for c in members)}}}"
        print(
            f"{shown:<{width}}  {labels[i]:<{label_width}} {predictions.probabilities[i].max():>6.3f}  {decision}{top}{in_set}"
        )
    if out is not None:
        _write_predictions(out, predictions, args.top, predictor.describe())
        print(f"wrote {out}", file=sys.stderr)
    return 0


def _run_explain(args: argparse.Namespace) -> int:
    from .explain import explain_images, explain_split, write_overlays
    from .inference.predictor import Predictor

    source = Path(args.model)
    out = Path(args.out) if args.out else (source if source.is_dir() else source.parent) / "explain"
    if not args.images:
        if args.per_class < 1:
            raise MedclassifyError(f"--per-class must be >= 1, got {args.per_class}")
        if not source.is_dir():
            raise MedclassifyError(
                f"{source}: the grid over a split needs the run folder; or name IMAGE files to explain"
            )
        print(f"wrote {explain_split(source, out, args.split, args.per_class, args.layer, args.data_dir, args.device)}")
        return 0
    predictor = Predictor.from_run(source, device=args.device, backend="torch")
    explanations, skipped = explain_images(predictor, args.images, args.target, args.layer)
    _report_skipped("explain", skipped, len(explanations))
    for explanation, path in zip(explanations, write_overlays(explanations, out)):
        print(f"{explanation.source}: {explanation.class_name} p={explanation.probability:.3f} -> {path}")
    return 0


def _run_export(args: argparse.Namespace) -> int:
    if args.format == "hub":
        from .inference.hub import export_hub

        hub = export_hub(args.model, args.out, args.data_dir, args.tolerance)
        print(
            f"wrote {hub.path}/ ({', '.join(hub.files)}); largest logit difference to best.pt {hub.max_abs_diff:.2e} "
            f"over {hub.parity_images} images of the {hub.parity_data}; Predictor.from_run and predict load it"
        )
        return 0
    from .inference.export import export_model

    result = export_model(args.model, args.out, args.format, args.data_dir, args.tolerance)
    print(
        f"wrote {result.path} ({result.format}, {result.bytes / 1e6:.2f} MB); largest logit difference to PyTorch "
        f"{result.max_abs_diff:.2e} over {result.parity_images} images of the {result.parity_data}"
    )
    return 0


def _run_serve(args: argparse.Namespace) -> int:
    import logging
    from dataclasses import fields as settings_fields

    import uvicorn

    from .serve import ServeSettings, create_app, load_served_models
    from .serve.limits import header_timeout_protocol

    if not 1 <= args.port <= 65535:
        raise MedclassifyError(f"--port must be from 1 to 65535, got {args.port}")
    if args.max_connections < 1:
        raise MedclassifyError(f"--max-connections must be >= 1, got {args.max_connections}")
    settings = ServeSettings(**{f.name: getattr(args, f.name) for f in settings_fields(ServeSettings)}).validate()
    models = load_served_models(args.models, device=args.device)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("medclassify.serve")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    for served in models.values():
        print(f"serving '{served.name}': {served.predictor.describe()}", file=sys.stderr)
    print(
        f"web page: http://{args.host}:{args.port}/  API documentation: http://{args.host}:{args.port}/docs",
        file=sys.stderr,
    )
    uvicorn.run(
        create_app(models, settings),
        host=args.host,
        port=args.port,
        access_log=False,
        log_level="warning",
        http=header_timeout_protocol(settings.header_timeout),
        timeout_keep_alive=settings.keep_alive,
        h11_max_incomplete_event_size=16 * 1024,
        limit_concurrency=args.max_connections,
    )
    return 0


SERVE_EPILOG = """examples:
  medclassify serve runs/blood28                          # http://127.0.0.1:8000/
  medclassify serve blood=runs/blood28 organ=runs/organ64/model.onnx --port 9000

API: GET /v1/models, POST /v1/predict (multipart 'files'; ?model=NAME&explain=true&top=3),
GET /health, GET /metrics (Prometheus), GET /docs (OpenAPI). Listens on this machine only unless
--host says otherwise; put it behind an authenticating proxy before exposing it.
"""


# name: (help, epilog, options, run)
COMMANDS = {
    "demo": (
        "train and evaluate the paper's CNN on the bundled synthetic sample (offline, 15-25 s on 2 CPU cores)",
        "The sample ('synthcells') is synthetic: generated cell-like images, not medical data.\n\nexample:\n  medclassify demo --out runs/demo\n",
        _add_demo_options,
        _run_demo,
    ),
    "train": ("train a model and evaluate it on the test split", TRAIN_EXAMPLES, _add_train_options, _run_train),
    "evaluate": ("re-evaluate a saved run", EVALUATE_EPILOG, _add_evaluate_options, _run_evaluate),
    "predict": (
        "classify new images (PNG, JPEG, BMP, TIFF, DICOM, .npy/.npz) with a run or an exported model",
        PREDICT_EPILOG,
        _add_predict_options,
        _run_predict,
    ),
    "explain": (
        "Grad-CAM heatmaps for images, or a grid of right and wrong test predictions",
        EXPLAIN_EPILOG,
        _add_explain_options,
        _run_explain,
    ),
    "export": (
        "export a run's model to ONNX or TorchScript, checked against PyTorch",
        EXPORT_EPILOG,
        _add_export_options,
        _run_export,
    ),
    "calibrate": (
        "fit temperature scaling on a run's validation split and store it in its bundle",
        CALIBRATE_EPILOG,
        _add_calibrate_options,
        _run_calibrate,
    ),
    "robustness": (
        "test a run's model on its test split under realistic corruptions (MedMNIST-C) at five severities",
        ROBUSTNESS_EPILOG,
        _add_robustness_options,
        _run_robustness,
    ),
    "tune": (
        "search hyper-parameters with Optuna (TPE, pruning), each trial a run; resumable",
        "examples:\n  medclassify tune search.yaml --data-dir ../shared/data\n  medclassify tune search.yaml --workers 2\n\n"
        "Running the same command again continues the search (its state: TUNE/optuna.db).\n"
        "The best configuration becomes TUNE/best.yaml, retrained once and tested: --recipe TUNE/best.yaml.\n",
        _add_tune_options,
        _run_tune,
    ),
    "track": (
        "send finished runs (a study's or one) to TensorBoard or MLflow from their run folders",
        "examples:\n  medclassify track runs/my-study --to mlflow\n  medclassify track runs/blood28 --to tensorboard mlflow\n",
        _add_track_options,
        _run_track,
    ),
    "card": (
        "write a run's MODEL_CARD.md again (Hugging Face model-card format) from its records",
        "example:\n  medclassify card runs/blood28\n\nEvery run writes it after training; calibrate and robustness rewrite it.\n",
        _add_card_options,
        _run_card,
    ),
    "push": (
        "upload a run to the Hugging Face Hub as a model repository (export --format hub, then upload)",
        "example:\n  medclassify push runs/blood28 --repo alice/bloodmnist-cnn\n\nNeeds pip install 'medclassify[hub]'.\n",
        _add_push_options,
        _run_push,
    ),
    "ensemble": (
        "average several trained models (e.g. seeds) into one bundle",
        ENSEMBLE_EPILOG,
        _add_ensemble_options,
        _run_ensemble,
    ),
    "published": (
        "print the published MedMNIST v2 and MedMNIST+ test results for a dataset, to compare with yours",
        "examples:\n  medclassify published bloodmnist --size 64\n  medclassify published pneumoniamnist --source v2\n",
        _add_published_options,
        _run_published,
    ),
    "serve": (
        "serve models over HTTP: a JSON API and a web page for drag-and-drop prediction with Grad-CAM",
        SERVE_EPILOG,
        _add_serve_options,
        _run_serve,
    ),
    "datasets": (
        "list the available datasets and which files are on disk",
        "example:\n  medclassify datasets --data-dir ~/medmnist\n",
        _add_datasets_options,
        _run_datasets,
    ),
    "cache": (
        "build a dataset's split cache ahead of time (uncompressed arrays that runs open memory-mapped)",
        "examples:\n  medclassify cache pathmnist --size 224 --data-dir ~/medmnist\n"
        "  medclassify cache --data-dir chest_xray --size 224 --channels 1      # an image folder\n\n"
        "Runs build the cache on first use anyway; this does it ahead, and prints where it is and how big.\n"
        "Delete it at any time; it is rebuilt when the source changes.\n",
        _add_cache_options,
        _run_cache,
    ),
    "models": (
        "list the registered models and their parameter counts",
        "example:\n  medclassify models --size 64 --channels 1 --classes 11\n",
        _add_models_options,
        _run_models,
    ),
    "recipes": (
        "list the named training recipes (--recipe NAME)",
        "example:\n  medclassify train --dataset bloodmnist --recipe paper-bn-aug\n",
        lambda parser: None,
        _run_recipes,
    ),
    "run": (
        "run a study (datasets x sizes x models x seeds): results table, figures and report",
        "examples:\n  medclassify run study.yaml\n  medclassify run study.yaml --seeds 3 --workers 2 --out runs/my-study\n"
        "  medclassify run study.yaml --backend ray --address auto --workers 8   # on a Ray cluster\n\n"
        "Running the same command again skips complete experiments and resumes an interrupted one.\n",
        _add_run_options,
        _run_study,
    ),
    "reproduce": (
        "run the paper's four experiments (studies/paper.yaml) and write its results section",
        "examples:\n  medclassify reproduce --data-dir ~/medmnist\n  medclassify reproduce --seeds 3 --lang zh\n\n"
        "BloodMNIST and OrganCMNIST at 28 and 64 px, the paper's CNN and recipe. Missing files are downloaded\n"
        "first; when that is impossible it stops before training and lists every missing file.\n",
        _add_study_options,
        _run_study,
    ),
}


def build_parser(only: str | None = None) -> Parser:
    """Every command; with ``only``, the options of that command alone, so that a command such as
    ``predict`` starts without importing what the others need (torch for ``train``'s choices)."""
    parser = Parser(
        prog="medclassify",
        description="Train, evaluate, compare, explain and use CNNs for medical image classification.",
        formatter_class=_formatter,
        epilog=MAIN_EXAMPLES,
    )
    parser.add_argument("--version", action="version", version=f"medclassify {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser, metavar="COMMAND")
    for name, (help_text, epilog, add_options, _) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, epilog=epilog, formatter_class=_formatter)
        if only in (None, name):
            add_options(sub)
            sub.add_argument("--verbose", action="store_true", help="log more detail")
            sub.add_argument("--debug", action="store_true", help="show the full traceback behind an error")
    return parser


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record arrives (it may be replaced after main())."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


def _configure_logging(args: argparse.Namespace) -> None:
    """The library logs to ``logging.getLogger("medclassify...")``; the command shows its records on
    stderr: INFO by default, WARNING with --quiet, DEBUG with --verbose."""
    level = logging.DEBUG if args.verbose else logging.WARNING if getattr(args, "quiet", False) else logging.INFO
    logger = logging.getLogger("medclassify")
    for handler in [h for h in logger.handlers if getattr(h, "medclassify_cli", False)]:
        logger.removeHandler(handler)  # main() may run more than once in a process (tests, notebooks)
    handler = _StderrHandler()
    handler.medclassify_cli = True
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level)


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    print(f"medclassify: warning: {message}", file=file or sys.stderr)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    if not argv:  # a bare 'medclassify' shows what it can do
        parser.print_help()
        return 2
    args = parser.parse_args(argv)
    args.argv = argv
    warnings.showwarning = _one_line_warning
    _configure_logging(args)
    try:
        code = COMMANDS[args.command][3](args)
        sys.stdout.flush()  # here, so that a reader who left (a closed pipe) is caught below
        return code
    except MedclassifyError as exc:
        if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, one message, not one per process
            if args.debug:
                traceback.print_exc(file=sys.stderr)
            print(f"medclassify {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. 'medclassify datasets | head': the reader left, which is not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
