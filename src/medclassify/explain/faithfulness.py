"""How far an explanation can be trusted, measured: faithfulness and the model-randomisation check.

For each attribution method, on a class-stratified sample of the run's test images, each image's
map of its predicted class is put through:

* **deletion and insertion** (Petsiuk et al., BMVC 2018): the pixels are replaced by a blurred copy
  of the image in the map's order, most relevant first (deletion), or revealed on the blurred copy
  in that order (insertion); the model's probability of the class after each step is a curve whose
  area summarises it. A faithful map has a small deletion area and a large insertion area; a random
  map's areas are the floor to beat.
* **ROAD** (Rong et al., ICML 2022, ``grad-cam``'s implementation): the change in that probability
  when a share of the pixels, most relevant first (MoRF) or least relevant first (LeRF), is removed
  by noisy linear imputation, which leaves fewer clues of the removal than blurring does.
* **the sanity check** (Adebayo et al., NeurIPS 2018): the model's weighted layers re-initialised
  one by one from the top (classifier) down, each image's map recomputed, and the Spearman rank
  correlation between the trained model's map and the randomised one's. A method whose maps stay
  alike once every layer is random shows the image, not the model: it fails.
* for Integrated Gradients, **completeness**: its attributions should sum to the output's difference
  from the baseline; the relative error says how well its integral was approximated.

Each figure comes with a 95 % bootstrap interval over the images and each method's cost per image.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator
from scipy.integrate import trapezoid
from scipy.stats import spearmanr
from torchvision.transforms.functional import gaussian_blur

from ..defaults import EVALUATION_IMAGES
from ..errors import ConfigError
from ..evaluation.figures import LEGEND_POINTS, save_figure, subplots
from ..evaluation.robustness import bootstrap_means
from ..inference.predictor import Predictor
from ..inference.quantize import stratified_sample
from ..io import write_json
from .methods import (
    CAM_METHODS,
    METHODS,
    AttributionMethod,
    attribution_maps,
    black_image,
    default_layers,
    input_attributions,
    layer_description,
)

DEFAULT_EVALUATION_IMAGES = EVALUATION_IMAGES
CURVE_STEPS = 20  # deletion/insertion: a twentieth of the pixels per step
ROAD_REMOVED_PERCENT = (10, 30, 50, 70, 90)
SANITY_IMAGES = 50  # the cascade recomputes every map once per layer: on a sub-sample
SANITY_PASS_BELOW = 0.5  # mean rank correlation with the fully randomised model's maps
CHUNK = 16

MapFunction = Callable[[np.ndarray, list[int], torch.nn.Module], np.ndarray]


@dataclass
class Estimate:
    """A mean over images with its 95 % bootstrap interval."""

    mean: float
    low: float
    high: float

    @classmethod
    def of(cls, values: np.ndarray, seed: int) -> Estimate:
        mean, (low, high) = bootstrap_means([np.asarray(values, dtype=float)], seed=seed)
        return cls(mean, low, high)


@dataclass
class SanityCheck:
    """The cascading randomisation: per layer re-initialised (top first), the mean rank correlation
    of the maps with the trained model's; the verdict from the last (every layer random)."""

    layers: list[str]
    correlation: list[float]
    final: Estimate
    passed: bool


@dataclass
class MethodEvaluation:
    method: str
    layer: str | None  # the layer a CAM read, with its feature map's size
    deletion_area: Estimate
    insertion_area: Estimate
    deletion_curve: list[float]
    insertion_curve: list[float]
    road_morf: dict[int, Estimate]  # percent removed -> probability change, most relevant first
    road_lerf: dict[int, Estimate]
    road_combined: float  # mean over percentages of (LeRF - MoRF) / 2: higher is more faithful
    sanity: SanityCheck
    seconds_per_image: float  # computing the maps
    evaluation_seconds: float  # every measure of this method, the sanity check's recomputed maps included
    completeness_error: Estimate | None = None  # Integrated Gradients: |sum - difference| / |difference|


@dataclass
class ExplanationEvaluation:
    """Everything ``explain --evaluate`` measured, as written to ``explain/evaluation.json``."""

    run: str
    images: int
    seed: int
    fractions: list[float]
    random_deletion_area: Estimate
    random_insertion_area: Estimate
    random_deletion_curve: list[float]
    random_insertion_curve: list[float]
    methods: list[MethodEvaluation] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    def ranking(self) -> list[str]:
        """Methods by their mean rank over deletion (low), insertion (high) and ROAD (high)."""
        scores = {
            "deletion": [m.deletion_area.mean for m in self.methods],
            "insertion": [-m.insertion_area.mean for m in self.methods],
            "road": [-m.road_combined for m in self.methods],
        }
        ranks = np.mean([np.argsort(np.argsort(values, kind="stable")) for values in scores.values()], axis=0)
        return [self.methods[i].method for i in np.argsort(ranks, kind="stable")]

    def lines(self) -> list[str]:
        """A table a terminal can show, one method per line."""
        head = (
            f"{'method':22} {'deletion':>9} {'insertion':>9} {'ROAD':>7} {'sanity r':>8} {'verdict':>7} {'s/image':>8}"
            f" {'all, s':>7}"
        )
        rows = [
            f"{'random map':22} {self.random_deletion_area.mean:9.3f} {self.random_insertion_area.mean:9.3f}"
            f" {'':>7} {'':>8} {'':>7} {'':>8} {'':>7}"
        ]
        for m in self.methods:
            rows.append(
                f"{m.method:22} {m.deletion_area.mean:9.3f} {m.insertion_area.mean:9.3f} {m.road_combined:7.3f}"
                f" {m.sanity.final.mean:8.2f} {'pass' if m.sanity.passed else 'FAIL':>7} {m.seconds_per_image:8.4f}"
                f" {m.evaluation_seconds:7.1f}"
            )
        return [head, *rows]


def blurred(inputs: torch.Tensor) -> torch.Tensor:
    """The images blurred until no detail is left (sigma a tenth of their side): what deleted
    pixels become, and what insertion starts from."""
    sigma = inputs.shape[-1] / 10
    kernel = 2 * round(2 * sigma) + 1
    return gaussian_blur(inputs, [kernel, kernel], [sigma, sigma])


def pixel_order(maps: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each map's pixel indices, most relevant first; ties (a coarse CAM's flat blocks) in random order."""
    flat = maps.reshape(len(maps), -1)
    return np.stack([np.lexsort((rng.random(flat.shape[1]), -row)) for row in flat])


def target_probability(model: torch.nn.Module, batch: torch.Tensor, targets: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        probabilities = torch.softmax(model(batch), dim=1)
    rows, classes = torch.arange(len(batch), device=batch.device), torch.from_numpy(targets).to(batch.device)
    return probabilities[rows, classes].cpu().numpy()


def deletion_insertion(
    model: torch.nn.Module, inputs: torch.Tensor, targets: np.ndarray, order: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per image, the class probability after each step of deletion and of insertion (N x steps+1)."""
    n, _, height, width = inputs.shape
    pixels = height * width
    base = blurred(inputs)
    counts = [round(pixels * k / CURVE_STEPS) for k in range(CURVE_STEPS + 1)]
    deletion, insertion = np.empty((n, len(counts))), np.empty((n, len(counts)))
    for i in range(n):
        ranks = torch.empty(pixels, dtype=torch.long, device=inputs.device)
        ranks[torch.from_numpy(order[i]).to(inputs.device)] = torch.arange(pixels, device=inputs.device)
        chosen = torch.stack([ranks < count for count in counts]).view(len(counts), 1, height, width)
        image, blur = inputs[i : i + 1], base[i : i + 1]
        target = np.full(len(counts), targets[i])
        deletion[i] = target_probability(model, torch.where(chosen, blur, image), target)
        insertion[i] = target_probability(model, torch.where(chosen, image, blur), target)
    return deletion, insertion


def curve_area(curves: np.ndarray) -> np.ndarray:
    """Each curve's area over the share of pixels, 0 to 1 (trapezoids)."""
    return trapezoid(curves, dx=1 / CURVE_STEPS, axis=1)  # scipy's: numpy < 2 has no np.trapezoid


def road_changes(
    model: torch.nn.Module, inputs: torch.Tensor, maps: np.ndarray, targets: np.ndarray, seed: int
) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """Per removed percentage, each image's change of class probability under ROAD, MoRF and LeRF."""
    from pytorch_grad_cam.metrics.road import ROADLeastRelevantFirst, ROADMostRelevantFirst
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    chosen = [ClassifierOutputSoftmaxTarget(int(k)) for k in targets]
    torch.manual_seed(seed)  # the imputer's noise
    most = {p: ROADMostRelevantFirst(100 - p)(inputs, maps, chosen, model).ravel() for p in ROAD_REMOVED_PERCENT}
    least = {p: ROADLeastRelevantFirst(p)(inputs, maps, chosen, model).ravel() for p in ROAD_REMOVED_PERCENT}
    return most, least


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's correlation of two maps; two constant maps count as alike (1), one as unlike (0)."""
    flat_a, flat_b = a.ravel(), b.ravel()
    constant_a, constant_b = np.ptp(flat_a) == 0, np.ptp(flat_b) == 0
    if constant_a or constant_b:
        return 1.0 if constant_a and constant_b and flat_a[0] == flat_b[0] else 0.0
    return float(spearmanr(flat_a, flat_b).statistic)


def weighted_layers(model: torch.nn.Module) -> list[str]:
    """The convolutional and linear layers, top (output) first: the order of the cascade."""
    kinds = (torch.nn.Conv2d, torch.nn.Linear)
    return [name for name, module in model.named_modules() if isinstance(module, kinds)][::-1]


def sanity_check(
    model: torch.nn.Module, batch: np.ndarray, targets: list[int], maps_of: MapFunction, trained: np.ndarray, seed: int
) -> SanityCheck:
    """The cascade: re-initialise the weighted layers from the top, recomputing the maps each time."""
    randomised = copy.deepcopy(model).eval()
    torch.manual_seed(seed)
    layers = weighted_layers(randomised)
    per_layer: list[np.ndarray] = []
    for name in layers:
        module = randomised.get_submodule(name)
        module.reset_parameters()  # type: ignore[operator]
        maps = maps_of(batch, targets, randomised)
        per_layer.append(np.array([rank_correlation(a, b) for a, b in zip(trained, maps)]))
    final = Estimate.of(per_layer[-1], seed)
    return SanityCheck(layers, [float(c.mean()) for c in per_layer], final, final.mean < SANITY_PASS_BELOW)


def check_images(images: int) -> int:
    if isinstance(images, bool) or not isinstance(images, int) or images < 1:
        raise ConfigError(f"images must be a whole number >= 1, got {images}")
    return images


def evaluate_method(
    predictor: Predictor,
    batch: np.ndarray,
    targets: list[int],
    method: AttributionMethod,
    layer: str | None,
    seed: int,
    maps_of: MapFunction | None = None,
) -> MethodEvaluation:
    """Every measure of one method on a normalised ``batch`` explained for ``targets``. ``maps_of``
    replaces the method (a test passes a deliberately unfaithful one)."""
    evaluation_started = time.perf_counter()
    model = predictor.model.eval()
    compute = maps_of or (lambda images, classes, network: _chunked(predictor, images, classes, method, layer, network))
    started = time.perf_counter()
    maps = compute(batch, targets, model)
    seconds = (time.perf_counter() - started) / len(batch)
    inputs, chosen = torch.from_numpy(batch).to(next(model.parameters()).device), np.asarray(targets)
    rng = np.random.default_rng(seed)
    deletion, insertion = deletion_insertion(model, inputs, chosen, pixel_order(maps, rng))
    most, least = road_changes(model, inputs, maps, chosen, seed)
    sample = slice(0, min(len(batch), SANITY_IMAGES))
    sanity = sanity_check(model, batch[sample], targets[sample], compute, maps[sample], seed)
    completeness = None
    if method == "integrated-gradients" and maps_of is None:
        completeness = Estimate.of(_completeness_errors(predictor, model, inputs, targets), seed)
    return MethodEvaluation(
        method=method,
        layer=(
            layer_description(predictor, [layer] if layer else default_layers(predictor))
            if method in CAM_METHODS and maps_of is None
            else None
        ),
        deletion_area=Estimate.of(curve_area(deletion), seed),
        insertion_area=Estimate.of(curve_area(insertion), seed),
        deletion_curve=[float(v) for v in deletion.mean(axis=0)],
        insertion_curve=[float(v) for v in insertion.mean(axis=0)],
        road_morf={p: Estimate.of(v, seed) for p, v in most.items()},
        road_lerf={p: Estimate.of(v, seed) for p, v in least.items()},
        road_combined=float(np.mean([(least[p] - most[p]).mean() / 2 for p in ROAD_REMOVED_PERCENT])),
        sanity=sanity,
        seconds_per_image=seconds,
        evaluation_seconds=time.perf_counter() - evaluation_started,
        completeness_error=completeness,
    )


def _chunked(
    predictor: Predictor,
    batch: np.ndarray,
    targets: list[int],
    method: AttributionMethod,
    layer: str | None,
    model: torch.nn.Module,
) -> np.ndarray:
    return np.concatenate(
        [
            attribution_maps(predictor, batch[i : i + CHUNK], targets[i : i + CHUNK], method, layer, model)
            for i in range(0, len(batch), CHUNK)
        ]
    )


def _completeness_errors(
    predictor: Predictor, model: torch.nn.Module, inputs: torch.Tensor, targets: list[int]
) -> np.ndarray:
    """Integrated Gradients' relative completeness error per image: |sum of attributions - (F(x) -
    F(baseline))| / |F(x) - F(baseline)|, F the explained class's output."""
    errors = []
    for i in range(0, len(inputs), CHUNK):
        chunk, classes = inputs[i : i + CHUNK], targets[i : i + CHUNK]
        baseline = black_image(predictor, chunk)
        _, delta = input_attributions(model, chunk, baseline, classes, "integrated-gradients")
        assert delta is not None  # Integrated Gradients always returns it
        with torch.no_grad():
            rows = torch.arange(len(chunk), device=chunk.device)
            difference = (model(chunk)[rows, classes] - model(baseline)[rows, classes]).cpu().numpy()
        errors.append(np.abs(delta) / np.maximum(np.abs(difference), 1e-12))
    return np.concatenate(errors)


def evaluate_explanations(
    run_dir: str | Path,
    images: int = DEFAULT_EVALUATION_IMAGES,
    methods: list[str] | None = None,
    seed: int = 0,
    layer: str | None = None,
    data_dir: str | None = None,
    out: str | Path | None = None,
    device: str = "auto",
) -> ExplanationEvaluation:
    """Measure each method (default: all) on ``images`` class-stratified test images of a run and
    write ``evaluation.json`` and ``evaluation.png`` into ``out`` (default ``RUN/explain``, and then
    the run's model card gains the section "Which explanations can be trusted")."""
    from ..runs import RunDir, load_run_data, write_model_card
    from ..runs.files import EXPLAIN_EVALUATION_FILE
    from .methods import check_method

    check_images(images)
    chosen_methods = [check_method(m) for m in (methods or METHODS)]
    run_dir = Path(run_dir)
    predictor = Predictor.from_run(run_dir, device=device, backend="torch")
    if predictor.multi_label:
        raise ConfigError(
            "explanations are measured for single-label runs; this run is multi-label", parameters=("run_dir",)
        )
    test = load_run_data(RunDir(run_dir).config(data_dir)).splits["test"]
    labels = test.labels.numpy().ravel()
    picked = stratified_sample(labels, images, seed)
    batch = predictor.normalise(test.images.numpy()[picked])
    targets = [int(k) for k in predictor.predict_pixels(test.images.numpy()[picked]).argmax(axis=1)]
    model = predictor.model.eval()
    inputs = torch.from_numpy(batch).to(next(model.parameters()).device)
    random_maps = np.random.default_rng(seed).random((len(batch), predictor.size, predictor.size), dtype=np.float32)
    deletion, insertion = deletion_insertion(
        model, inputs, np.asarray(targets), pixel_order(random_maps, np.random.default_rng(seed))
    )
    evaluation = ExplanationEvaluation(
        run=str(run_dir),
        images=len(batch),
        seed=seed,
        fractions=[k / CURVE_STEPS for k in range(CURVE_STEPS + 1)],
        random_deletion_area=Estimate.of(curve_area(deletion), seed),
        random_insertion_area=Estimate.of(curve_area(insertion), seed),
        random_deletion_curve=[float(v) for v in deletion.mean(axis=0)],
        random_insertion_curve=[float(v) for v in insertion.mean(axis=0)],
        methods=[evaluate_method(predictor, batch, targets, m, layer, seed) for m in chosen_methods],
    )
    own = run_dir / EXPLAIN_EVALUATION_FILE
    record = Path(out) / own.name if out is not None else own
    record.parent.mkdir(parents=True, exist_ok=True)
    figure = evaluation_figure(evaluation, record.with_suffix(""))
    evaluation.files = [str(record), str(figure)]
    write_json(record, {**asdict(evaluation), "ranking": evaluation.ranking()})
    if record.resolve() == own.resolve():  # the run's own record: its model card says what it measured
        evaluation.files.append(str(write_model_card(run_dir)))
    return evaluation


def evaluation_figure(evaluation: ExplanationEvaluation, path: Path) -> Path:
    """Deletion and insertion curves of every method beside the random map's and the sanity cascade,
    in a 2 x 2 grid whose fourth cell is the legend they share (the figure is read at a page's width)."""
    figure, axes = subplots(2, 2, figsize=(9, 7.6))
    (deletion, insertion), (sanity, legend) = axes
    fractions = evaluation.fractions
    colours = {m.method: f"C{k}" for k, m in enumerate(evaluation.methods)}
    for axis, kind in ((deletion, "deletion"), (insertion, "insertion")):
        for m in evaluation.methods:
            axis.plot(fractions, getattr(m, f"{kind}_curve"), color=colours[m.method])
        axis.plot(fractions, getattr(evaluation, f"random_{kind}_curve"), "k--")
        axis.set_xlabel("share of pixels " + ("removed (blurred)" if kind == "deletion" else "revealed"))
        axis.set_ylabel("probability of the explained class")
        axis.set_title(
            f"{kind.capitalize()} ({'lower' if kind == 'deletion' else 'higher'} area: more faithful)", fontsize=10
        )
    for m in evaluation.methods:
        sanity.plot(range(1, len(m.sanity.correlation) + 1), m.sanity.correlation, marker="o", color=colours[m.method])
    sanity.axhline(SANITY_PASS_BELOW, color="grey", linestyle=":")
    sanity.xaxis.set_major_locator(MaxNLocator(integer=True))  # a count of layers
    sanity.set_xlabel("weighted layers re-initialised, from the top")
    sanity.set_ylabel("rank correlation with the trained maps")
    sanity.set_title(f"Sanity check (passes below {SANITY_PASS_BELOW})", fontsize=10)
    handles = [
        Line2D(
            [],
            [],
            color=colours[m.method],
            label=f"{m.method}: {m.deletion_area.mean:.3f} / {m.insertion_area.mean:.3f}; "
            f"r {m.sanity.final.mean:.2f} {'pass' if m.sanity.passed else 'FAIL'}",
        )
        for m in evaluation.methods
    ]
    handles.append(
        Line2D(
            [],
            [],
            color="k",
            linestyle="--",
            label=f"random map: {evaluation.random_deletion_area.mean:.3f} / {evaluation.random_insertion_area.mean:.3f}",
        )
    )
    legend.axis("off")
    legend.legend(
        handles=handles, loc="center", fontsize=LEGEND_POINTS, title="deletion / insertion area; sanity", frameon=False
    )
    figure.suptitle(
        f"Explanations of {Path(evaluation.run).name}: {evaluation.images} test images, seed {evaluation.seed}",
        fontsize=11,
    )
    return save_figure(figure, path, formats=("png",))[0]
