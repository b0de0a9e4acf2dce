"""One bundle from several trained models of the same data: a seed ensemble
(:class:`~medclassify.models.SeedEnsemble`) that predict, serve, explain and export use like any model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import cast

from .. import __version__
from ..errors import CheckpointError, first_line
from ..io import file_md5
from ..models import ENSEMBLE_NAME, SeedEnsemble, model_from_spec
from ..models.registry import ModelSpec
from ..tasks import Task
from .files import BundleMetadata, RunDir, load_checkpoint, save_checkpoint


@dataclass
class EnsembleResult:
    path: Path
    members: list[Path]  # the bundles, in order
    parameters: int


def member_bundle(source: str | Path) -> Path:
    """A run folder's best.pt, or the .pt bundle itself."""
    source = Path(source).expanduser()
    return RunDir(source).best_path if source.is_dir() else source


def _same(first: dict, other: dict, path: Path, first_path: Path) -> None:
    """Members must take the same input and name the same classes of the same data."""
    checks = {
        "image size": (first["preprocessing"]["size"], other["preprocessing"]["size"]),
        "channels": (first["preprocessing"]["channels"], other["preprocessing"]["channels"]),
        "normalisation": (
            (first["preprocessing"]["mean"], first["preprocessing"]["std"]),
            (other["preprocessing"]["mean"], other["preprocessing"]["std"]),
        ),
        "dataset": (first["dataset"]["name"], other["dataset"]["name"]),
        "data MD5": (first["dataset"]["md5"], other["dataset"]["md5"]),
        "task": (first["dataset"]["task"], other["dataset"]["task"]),
        "class names": (list(first["dataset"]["class_names"]), list(other["dataset"]["class_names"])),
    }
    wrong = [f"{what} {mine!r} vs {theirs!r}" for what, (mine, theirs) in checks.items() if mine != theirs]
    if wrong:
        raise CheckpointError(f"{path}: does not fit the ensemble of {first_path} ({'; '.join(wrong)})")


def ensemble_metadata(members: list[dict], sources: list[Path]) -> BundleMetadata:
    """The bundle description of the ensemble of ``members`` (their loaded checkpoints)."""
    first = members[0]
    model: ModelSpec = {
        "name": ENSEMBLE_NAME,
        "in_channels": first["model"]["in_channels"],
        "num_classes": first["model"]["num_classes"],
        "image_size": first["model"]["image_size"],
        "members": [m["model"] for m in members],
        "temperatures": [float((m.get("calibration") or {}).get("temperature", 1.0)) for m in members],
        "multi_label": first["dataset"]["task"] == Task.MULTI_LABEL,
    }
    return {
        "model": model,
        "preprocessing": first["preprocessing"],
        "dataset": first["dataset"],
        "medclassify_version": __version__,
        "ensemble": [
            {"source": str(path), "md5": file_md5(path), "test_metrics": m.get("test_metrics")}
            for path, m in zip(sources, members, strict=True)
        ],
    }


def _check_ensemble_out(out: Path, members: list[Path]) -> None:
    """The bundle goes to a new ``.pt`` file or replaces an earlier ensemble bundle: never a member's
    bundle, a file of a run folder, or another file."""
    if out.suffix != ".pt":
        raise CheckpointError(f"out {out}: expected a .pt file for the ensemble bundle", parameters=("out",))
    if out.resolve() in members:
        raise CheckpointError(
            f"out {out}: is one of the members' bundles; write the ensemble to a new file", parameters=("out",)
        )
    if RunDir(out.parent).has_run_files():
        raise CheckpointError(
            f"--out {out}: {out.parent} is a run folder, whose files describe its own model; write the ensemble elsewhere"
        )
    if out.exists():
        try:
            existing = load_checkpoint(out)
        except CheckpointError:
            existing = {}
        if existing.get("model", {}).get("name") != ENSEMBLE_NAME:
            raise CheckpointError(
                f"out {out}: exists and is not an ensemble bundle; choose another file", parameters=("out",)
            )


def make_ensemble(sources: list[str | Path], out: str | Path) -> EnsembleResult:
    """Write the ensemble of ``sources`` (run folders or .pt bundles, at least two) to ``out``: its
    probabilities are the mean of the members' (each after its own temperature, when calibrated)."""
    paths = [member_bundle(s) for s in sources]
    if len(paths) < 2:
        raise CheckpointError(f"an ensemble needs at least two models, got {len(paths)}")
    resolved = [p.resolve() for p in paths]
    repeated = next((p for i, p in enumerate(paths) if resolved[i] in resolved[:i]), None)
    if repeated is not None:
        raise CheckpointError(f"{repeated}: given twice; an ensemble's members are different models")
    out = Path(out).expanduser()
    _check_ensemble_out(out, resolved)
    members = [load_checkpoint(p) for p in paths]
    for path, member in zip(paths[1:], members[1:], strict=True):
        _same(members[0], member, path, paths[0])
    metadata = ensemble_metadata(members, paths)
    model = cast(SeedEnsemble, model_from_spec(metadata["model"]))
    for path, member, module in zip(paths, members, model.members, strict=True):
        try:
            module.load_state_dict(member["model_state"])
        except (RuntimeError, KeyError) as exc:
            raise CheckpointError(
                f"{path}: the weights do not fit model '{member['model']['name']}' ({first_line(exc)})"
            ) from None
    save_checkpoint(out, {**metadata, "model_state": model.state_dict()})
    return EnsembleResult(out, paths, sum(p.numel() for p in model.parameters()))
