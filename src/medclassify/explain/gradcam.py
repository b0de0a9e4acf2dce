"""Heatmaps (LayerCAM by default; every method of :mod:`.methods`) for single images and for a
run's test split, drawn over the image.

A CAM's target layer is by default the deepest whose feature map is at least 7 pixels wide
(:func:`.methods.default_layers`); any other module can be named with its dotted path (e.g.
``features.3``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from PIL import Image

from ..data.images import model_input
from ..defaults import GRID_PER_CLASS
from ..errors import ConfigError
from ..evaluation.figures import save_figure, subplots
from ..inference.predictor import Predictor
from ..text import shorten
from .methods import (
    CAM_METHODS,
    DEFAULT_METHOD,
    METHODS,
    AttributionMethod,
    attribution_maps,
    check_method,
    default_layers,
    layer_description,
)

HEATMAP_ALPHA = 0.45


METHOD_TITLES = {
    "gradcam": "Grad-CAM",
    "gradcam++": "Grad-CAM++",
    "scorecam": "Score-CAM",
    "eigencam": "Eigen-CAM",
    "layercam": "LayerCAM",
    "integrated-gradients": "Integrated Gradients",
    "occlusion": "Occlusion",
}


@dataclass
class Explanation:
    """Heatmaps of one image, one per method, with the class they explain and its probability."""

    source: str
    pixels: np.ndarray  # uint8 H x W x 3, the image as given
    heatmaps: dict[str, np.ndarray]  # method -> float32 H x W in [0, 1], at the image's own size
    class_name: str  # the class the heatmaps explain
    probability: float  # the model's probability for that class
    predicted: str  # the model's decision
    cam_layer: str | None = None  # the layer a CAM method read, with its feature map's size

    @property
    def heatmap(self) -> np.ndarray:
        """The first method's heatmap (the only one unless several were asked for)."""
        return next(iter(self.heatmaps.values()))


def chosen_methods(method: str) -> list[AttributionMethod]:
    """``all`` or one method's name, as the list of methods to draw."""
    return list(METHODS) if method == "all" else [check_method(method)]


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


def cam_maps(
    predictor: Predictor,
    batch: np.ndarray,
    targets: list[int],
    layer: str | None = None,
    method: AttributionMethod = DEFAULT_METHOD,
) -> np.ndarray:
    """Maps of ``method`` (N x size x size, each scaled to [0, 1]) for normalised input ``batch``."""
    return attribution_maps(predictor, batch, targets, method, layer)


def resize_map(heatmap: np.ndarray, height: int, width: int) -> np.ndarray:
    """A [0, 1] heatmap resized bilinearly to ``height`` x ``width``."""
    resized = np.asarray(Image.fromarray(heatmap, mode="F").resize((width, height), Image.Resampling.BILINEAR))
    return np.clip(resized, 0.0, 1.0)


def explain_images(
    predictor: Predictor,
    images: object,
    target: str | int | None = None,
    layer: str | None = None,
    method: str = DEFAULT_METHOD,
) -> tuple[list[Explanation], list[tuple[str, str]]]:
    """Heatmaps of ``method`` (or ``all``) for the predicted class (or ``target``) of each readable
    image, at its own size."""
    methods = chosen_methods(method)
    sources, skipped = predictor.read(images)
    if not sources:
        return [], skipped
    pixels = model_input(sources, predictor.size, predictor.channels)
    probabilities = predictor.predict_pixels(pixels)
    chosen = (
        [class_index(predictor, target)] * len(sources) if target is not None else list(probabilities.argmax(axis=1))
    )
    batch = predictor.normalise(pixels)
    maps = {m: cam_maps(predictor, batch, chosen, layer, m) for m in methods}
    cam_layer = cam_layer_of(predictor, methods, layer)
    explanations = []
    for i, (source, k, probs) in enumerate(zip(sources, chosen, probabilities)):
        height, width = source.pixels.shape[:2]
        explanations.append(
            Explanation(
                source.name,
                source.pixels,
                {m: resize_map(maps[m][i], height, width) for m in methods},
                predictor.class_names[k],
                float(probs[k]),
                predictor.class_names[int(probs.argmax())],
                cam_layer,
            )
        )
    return explanations, skipped


def cam_layer_of(predictor: Predictor, methods: list[AttributionMethod], layer: str | None) -> str | None:
    """``features (7 x 7)``: the layer the CAM methods among ``methods`` read, or None."""
    if not any(m in CAM_METHODS for m in methods):
        return None
    return layer_description(predictor, [layer] if layer else default_layers(predictor))


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
    """The image and one overlay per method side by side, class and probability in the title (PNG)."""
    panels = len(explanation.heatmaps) + 1
    figure, axes = subplots(1, panels, figsize=(4 * panels, 4.4), squeeze=False)
    _show(axes[0, 0], explanation.pixels)
    axes[0, 0].set_title("image")
    for axis, (method, heatmap) in zip(axes[0, 1:], explanation.heatmaps.items()):
        _show(axis, explanation.pixels, heatmap)
        axis.set_title(f"{METHOD_TITLES[method]}: {shorten(explanation.class_name, 40)}")
    decided = (
        "" if explanation.predicted == explanation.class_name else f"; predicted {shorten(explanation.predicted, 40)}"
    )
    read = f"\nCAM layer: {explanation.cam_layer}" if explanation.cam_layer else ""
    figure.suptitle(
        f"{shorten(Path(explanation.source).name, 60)} - {shorten(explanation.class_name, 40)} "
        f"p={explanation.probability:.3f}{decided}{read}"
    )
    return save_figure(figure, out, formats=("png",))[0]


def overlay_name(source: str, taken: set[str], kind: str = DEFAULT_METHOD) -> str:
    """``NAME_METHOD`` (frames: ``NAME_3_METHOD``; several methods: ``NAME_explained``), numbered
    when two images share a name."""
    file, _, frame = Path(source).name.partition("[")
    base = Path(file).stem + (f"_{frame.rstrip(']')}" if frame else "")
    name, n = f"{base}_{kind}", 2
    while name in taken:
        name, n = f"{base}_{kind}_{n}", n + 1
    taken.add(name)
    return name


def write_overlays(explanations: list[Explanation], out_dir: str | Path) -> list[Path]:
    """One ``NAME_METHOD.png`` per explanation in ``out_dir`` (``NAME_explained.png`` for several
    methods); returns their paths."""
    taken: set[str] = set()
    return [
        save_overlay(
            e,
            Path(out_dir)
            / overlay_name(e.source, taken, next(iter(e.heatmaps)) if len(e.heatmaps) == 1 else "explained"),
        )
        for e in explanations
    ]


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
    title: str = "Correct and wrong predictions per class",
    method: AttributionMethod = DEFAULT_METHOD,
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
                predictor,
                predictor.normalise(pixels[indices]),
                list(probabilities[indices].argmax(axis=1)),
                layer,
                method,
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
    method: AttributionMethod = DEFAULT_METHOD,
) -> Path:
    """:func:`split_grid` for a run folder's test (or val) split, read as the run was trained."""
    method = check_method(method)
    from ..runs import RunDir, load_run_data

    run_dir = Path(run_dir)
    config = RunDir(run_dir).config(data_dir)
    predictor = Predictor.from_run(run_dir, device=device, backend="torch")
    data = load_run_data(config)
    images = data.splits[split]
    cam_layer = cam_layer_of(predictor, [method], layer)
    title = (
        f"{METHOD_TITLES[method]}, {data.name} {split} split: per class, the {per_class} most confident correct "
        f"and wrong predictions (title: predicted class, probability)"
        + (f"; CAM layer {cam_layer}" if cam_layer else "")
    )
    return split_grid(
        predictor,
        images.images.numpy(),
        images.labels.numpy(),
        out / f"{method}_{split}_grid",
        per_class,
        layer,
        title,
        method,
    )
