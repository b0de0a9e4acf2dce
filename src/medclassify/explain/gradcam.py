"""Grad-CAM heatmaps (the ``grad-cam`` package) for single images and for a run's test split.

The target layer is the model family's last convolutional block, as registered with the model
(``cam_layer``: ``features`` for the small CNNs, VGG and MobileNet, ``layer4`` for ResNets); any
other module can be named with its dotted path (e.g. ``features.3``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import torch
from matplotlib.axes import Axes
from PIL import Image
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from ..data.images import model_input
from ..defaults import GRID_PER_CLASS
from ..errors import ConfigError
from ..evaluation.figures import save_figure, subplots
from ..inference.predictor import Predictor
from ..models import cam_layer_names
from ..text import shorten

HEATMAP_ALPHA = 0.45


@dataclass
class Explanation:
    """A Grad-CAM heatmap of one image, with the class it explains and that class's probability."""

    source: str
    pixels: np.ndarray  # uint8 H x W x 3, the image as given
    heatmap: np.ndarray  # float32 H x W in [0, 1], at the image's own size
    class_name: str  # the class the heatmap explains
    probability: float  # the model's probability for that class
    predicted: str  # the model's decision


def feature_map_layers(model: torch.nn.Module, channels: int, size: int) -> list[str]:
    """Names of the modules whose output is a feature map (N x C x H x W): Grad-CAM can target
    those, not a flattening or linear layer."""
    shapes: dict[str, int] = {}
    hooks = [
        module.register_forward_hook(
            lambda m, i, output, name=name: shapes.__setitem__(name, getattr(output, "ndim", 0))
        )
        for name, module in model.named_modules()
        if name
    ]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, channels, size, size, device=next(model.parameters()).device))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return [name for name, ndim in shapes.items() if ndim == 4]


def target_layer(
    model: torch.nn.Module, model_name: str, name: str, channels: int = 3, size: int = 28
) -> torch.nn.Module:
    """The module called ``name`` (a dotted path) that Grad-CAM reads; one whose output is not a
    feature map is a :class:`ConfigError` listing the usable ones."""
    usable = feature_map_layers(model, channels, size)
    if name not in usable:
        top = [n for n in usable if n.count(".") <= 1]
        why = (
            "has no such module"
            if name not in dict(model.named_modules())
            else "has that module, but its output is not a feature map"
        )
        raise ConfigError(
            f"--layer {name}: model '{model_name}' {why}; layers Grad-CAM can use include: {', '.join(top)}"
        )
    return model.get_submodule(name)


def class_index(predictor: Predictor, target: str | int) -> int:
    """A class given by name or by index."""
    names = predictor.class_names
    if isinstance(target, str) and target in names:
        return names.index(target)
    if str(target).isdigit() and int(target) < len(names):
        return int(target)
    raise ConfigError(
        f"--target {target}: not a class of this model; classes: {', '.join(names)} (or their index 0-{len(names) - 1})"
    )


def cam_maps(predictor: Predictor, batch: np.ndarray, targets: list[int], layer: str | None = None) -> np.ndarray:
    """Grad-CAM maps (N x size x size, each scaled to [0, 1]) for normalised input ``batch``."""
    model = predictor.model
    device = next(model.parameters()).device
    spec = predictor.metadata["model"]
    layers = [
        target_layer(model, spec["name"], name, predictor.channels, predictor.size)
        for name in ([layer] if layer else cam_layer_names(spec))
    ]  # an ensemble: every member's last block, their maps averaged by grad-cam
    with GradCAM(model=model, target_layers=layers) as cam:
        maps = cam(
            input_tensor=torch.from_numpy(batch).to(device), targets=[ClassifierOutputTarget(k) for k in targets]
        )
    return maps.astype(np.float32)


def resize_map(heatmap: np.ndarray, height: int, width: int) -> np.ndarray:
    """A [0, 1] heatmap resized bilinearly to ``height`` x ``width``."""
    resized = np.asarray(Image.fromarray(heatmap, mode="F").resize((width, height), Image.Resampling.BILINEAR))
    return np.clip(resized, 0.0, 1.0)


def explain_images(
    predictor: Predictor, images: object, target: str | int | None = None, layer: str | None = None
) -> tuple[list[Explanation], list[tuple[str, str]]]:
    """Heatmaps for the predicted class (or ``target``) of each readable image, at its own size."""
    sources, skipped = predictor.read(images)
    if not sources:
        return [], skipped
    pixels = model_input(sources, predictor.size, predictor.channels)
    probabilities = predictor.predict_pixels(pixels)
    chosen = (
        [class_index(predictor, target)] * len(sources) if target is not None else list(probabilities.argmax(axis=1))
    )
    maps = cam_maps(predictor, predictor.normalise(pixels), chosen, layer)
    explanations = []
    for source, heatmap, k, probs in zip(sources, maps, chosen, probabilities):
        height, width = source.pixels.shape[:2]
        explanations.append(
            Explanation(
                source.name,
                source.pixels,
                resize_map(heatmap, height, width),
                predictor.class_names[k],
                float(probs[k]),
                predictor.class_names[int(probs.argmax())],
            )
        )
    return explanations, skipped


def overlay_pixels(pixels: np.ndarray, heatmap: np.ndarray, min_side: int = 224) -> np.ndarray:
    """uint8 H x W x 3: the image blended with the heatmap in the 'jet' colours of the figures,
    enlarged (nearest neighbour) to at least ``min_side`` pixels so that small inputs stay visible."""
    colours = matplotlib.colormaps["jet"](heatmap)[..., :3] * 255.0
    blended = np.rint((1 - HEATMAP_ALPHA) * pixels + HEATMAP_ALPHA * colours).astype(np.uint8)
    scale = max(1, -(-min_side // min(blended.shape[:2])))
    return blended.repeat(scale, axis=0).repeat(scale, axis=1) if scale > 1 else blended


def _show(ax: Axes, pixels: np.ndarray, heatmap: np.ndarray | None = None) -> None:
    ax.imshow(pixels, interpolation="nearest")
    if heatmap is not None:
        ax.imshow(heatmap, cmap="jet", alpha=HEATMAP_ALPHA, vmin=0.0, vmax=1.0, interpolation="bilinear")
    ax.set_xticks([])
    ax.set_yticks([])


def save_overlay(explanation: Explanation, out: Path) -> Path:
    """The image and its heatmap overlay side by side, class and probability in the title (PNG)."""
    figure, (left, right) = subplots(1, 2, figsize=(8, 4.4))
    _show(left, explanation.pixels)
    left.set_title("image")
    _show(right, explanation.pixels, explanation.heatmap)
    right.set_title(f"Grad-CAM: {shorten(explanation.class_name, 40)}")
    decided = (
        "" if explanation.predicted == explanation.class_name else f"; predicted {shorten(explanation.predicted, 40)}"
    )
    figure.suptitle(
        f"{shorten(Path(explanation.source).name, 60)} - {shorten(explanation.class_name, 40)} "
        f"p={explanation.probability:.3f}{decided}"
    )
    return save_figure(figure, out, formats=("png",))[0]


def overlay_name(source: str, taken: set[str]) -> str:
    """``NAME_gradcam`` (frames: ``NAME_3_gradcam``), numbered when two images share a name."""
    file, _, frame = Path(source).name.partition("[")
    base = Path(file).stem + (f"_{frame.rstrip(']')}" if frame else "")
    name, n = f"{base}_gradcam", 2
    while name in taken:
        name, n = f"{base}_gradcam_{n}", n + 1
    taken.add(name)
    return name


def write_overlays(explanations: list[Explanation], out_dir: str | Path) -> list[Path]:
    """One ``NAME_gradcam.png`` per explanation in ``out_dir``; returns their paths."""
    taken: set[str] = set()
    return [save_overlay(e, Path(out_dir) / overlay_name(e.source, taken)) for e in explanations]


def split_examples(y_true: np.ndarray, probabilities: np.ndarray, per_class: int) -> dict[int, dict[str, list[int]]]:
    """Per true class, the most confident correct and the most confident wrong predictions."""
    predicted = probabilities.argmax(axis=1)
    confidence = probabilities.max(axis=1)
    chosen = {}
    for k in range(probabilities.shape[1]):
        rows = {}
        for kind, mask in (("correct", (y_true == k) & (predicted == k)), ("wrong", (y_true == k) & (predicted != k))):
            index = np.flatnonzero(mask)
            rows[kind] = list(index[np.argsort(-confidence[index], kind="stable")][:per_class])
        chosen[k] = rows
    return chosen


def split_grid(
    predictor: Predictor,
    pixels: np.ndarray,
    y_true: np.ndarray,
    out: Path,
    per_class: int = GRID_PER_CLASS,
    layer: str | None = None,
    title: str = "Grad-CAM: correct and wrong predictions per class",
) -> Path:
    """A grid figure: one row per class, ``per_class`` correct then ``per_class`` wrong test images,
    each with the heatmap of its predicted class. Single-label tasks only."""
    if predictor.multi_label:
        raise ConfigError(
            "a per-class grid of right and wrong predictions needs a single-label task; "
            "explain individual images of a multi-label model instead"
        )
    probabilities = predictor.predict_pixels(pixels)
    examples = split_examples(y_true, probabilities, per_class)
    names = predictor.class_names
    columns = 2 * per_class
    figure, axes = subplots(len(names), columns, figsize=(2.1 * columns + 1.2, 2.2 * len(names)), squeeze=False)
    for k, row in examples.items():
        picked = (
            row["correct"]
            + [None] * (per_class - len(row["correct"]))
            + row["wrong"]
            + [None] * (per_class - len(row["wrong"]))
        )
        indices = [i for i in picked if i is not None]
        maps: np.ndarray | list[np.ndarray] = (
            cam_maps(
                predictor, predictor.normalise(pixels[indices]), list(probabilities[indices].argmax(axis=1)), layer
            )
            if indices
            else []
        )
        found = dict(zip(indices, maps))
        for column, i in enumerate(picked):
            ax = axes[k, column]
            if i is None:
                ax.axis("off")
                ax.text(0.5, 0.5, "none", ha="center", va="center", transform=ax.transAxes, color="grey")
                continue
            rgb = np.repeat(pixels[i], 3, axis=0) if pixels.shape[1] == 1 else pixels[i]
            _show(ax, rgb.transpose(1, 2, 0), found[i])
            guess = int(probabilities[i].argmax())
            ax.set_title(
                f"{'✓' if guess == k else '✗'} {shorten(names[guess], 18)} {probabilities[i, guess]:.2f}",
                fontsize=8,
                color="black" if guess == k else "firebrick",
            )
        axes[k, 0].set_ylabel(shorten(names[k], 22), fontsize=9)
    figure.suptitle(title, fontsize=10)
    return save_figure(figure, out, formats=("png",))[0]


def explain_split(
    run_dir: str | Path,
    out: Path,
    split: str = "test",
    per_class: int = GRID_PER_CLASS,
    layer: str | None = None,
    data_dir: str | None = None,
    device: str = "auto",
) -> Path:
    """:func:`split_grid` for a run folder's test (or val) split, read as the run was trained."""
    from ..runs import RunDir, load_run_data

    run_dir = Path(run_dir)
    config = RunDir(run_dir).config(data_dir)
    predictor = Predictor.from_run(run_dir, device=device, backend="torch")
    data = load_run_data(config)
    images = data.splits[split]
    title = (
        f"Grad-CAM, {data.name} {split} split: per class, the {per_class} most confident correct and "
        f"wrong predictions (title: predicted class, probability)"
    )
    return split_grid(
        predictor, images.images.numpy(), images.labels.numpy(), out / f"gradcam_{split}_grid", per_class, layer, title
    )
