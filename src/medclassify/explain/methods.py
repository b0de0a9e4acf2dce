"""Attribution methods: five class-activation maps (``grad-cam``) and two input attributions (``captum``).

Every method answers the same question, "which pixels made the model choose class k?", as a map
of the model's input size scaled to [0, 1]. The CAM methods read a layer's feature map, so they
can resolve no finer than it: the default layer is the deepest whose feature map is at least
:data:`MIN_CAM_SIDE` pixels wide (a 28 px input leaves the small CNNs' last block 5 x 5, too coarse
to tell a quadrant's corner from its centre). Integrated Gradients and Occlusion work on the pixels
themselves.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import numpy as np
import torch
import tqdm
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, LayerCAM, ScoreCAM, score_cam
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from ..defaults import DEFAULT_EXPLAIN_METHOD, EXPLAIN_METHODS, AttributionMethod
from ..errors import ConfigError
from ..inference.predictor import Predictor
from ..models import ENSEMBLE_NAME, cam_layer_names

# Score-CAM draws a progress bar per image on stderr (hundreds in one evaluation, between the
# command's own lines), with no option to turn it off: its module sees a tqdm that draws nothing.
score_cam.tqdm = SimpleNamespace(tqdm=functools.partial(tqdm.tqdm, disable=True))

METHODS = EXPLAIN_METHODS
CAM_METHODS = {
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "scorecam": ScoreCAM,
    "eigencam": EigenCAM,
    "layercam": LayerCAM,
}
DEFAULT_METHOD = DEFAULT_EXPLAIN_METHOD
MIN_CAM_SIDE = 7  # pixels of a feature map a CAM is read from, at the least (ResNet-18 at 224 px: 7)
INTEGRATED_GRADIENTS_STEPS = 64
OCCLUSION_WINDOWS = 7  # an occluding square of size // 7 pixels (4 at 28 px, 32 at 224 px), moved by half of it


def check_method(method: str) -> AttributionMethod:
    if method not in METHODS:
        raise ConfigError(
            f"method {method}: not a method; choose from {', '.join(METHODS)} or all", parameters=("method",)
        )
    return method


def feature_map_sides(model: torch.nn.Module, channels: int, size: int) -> dict[str, int]:
    """The modules whose output is a feature map (N x C x H x W), in the order the forward pass
    finishes them, each with its map's smaller side."""
    sides: dict[str, int] = {}

    def record(name: str, output: object) -> None:
        if isinstance(output, torch.Tensor) and output.ndim == 4:
            sides[name] = min(output.shape[-2:])

    hooks = [
        module.register_forward_hook(lambda m, i, output, name=name: record(name, output))
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
    return sides


def target_layer(
    model: torch.nn.Module, model_name: str, name: str, channels: int = 3, size: int = 28
) -> torch.nn.Module:
    """The module called ``name`` (a dotted path) that Grad-CAM reads; one whose output is not a
    feature map is a :class:`ConfigError` listing the usable ones."""
    usable = list(feature_map_sides(model, channels, size))
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


def default_layers(predictor: Predictor) -> list[str]:
    """Where a CAM looks by default: the deepest layer whose feature map is at least
    :data:`MIN_CAM_SIDE` pixels wide (the model's first feature map when none is), or, for an
    ensemble, every member's last block."""
    spec = predictor.metadata["model"]
    if spec["name"] == ENSEMBLE_NAME:
        return cam_layer_names(spec)
    return [default_layer(predictor.model, predictor.channels, predictor.size)]


def default_layer(model: torch.nn.Module, channels: int, size: int) -> str:
    """The deepest layer whose feature map is at least :data:`MIN_CAM_SIDE` pixels wide (the
    first feature map when none is)."""
    sides = feature_map_sides(model, channels, size)
    wide = [name for name, side in sides.items() if side >= MIN_CAM_SIDE]
    return wide[-1] if wide else next(iter(sides))


def layer_description(predictor: Predictor, layers: list[str]) -> str:
    """``features.4 (11 x 11)``: the layers a CAM read, with their feature map's size."""
    sides = feature_map_sides(predictor.model, predictor.channels, predictor.size)
    return ", ".join(f"{name} ({sides[name]} x {sides[name]})" for name in layers)


def _scaled(maps: np.ndarray) -> np.ndarray:
    """Each map shifted and scaled to [0, 1] (a constant map becomes zeros)."""
    flat = maps.reshape(len(maps), -1)
    low, span = flat.min(axis=1), np.ptp(flat, axis=1)
    scaled = (flat - low[:, None]) / np.where(span > 0, span, 1.0)[:, None]
    return scaled.reshape(maps.shape).astype(np.float32)


def attribution_maps(
    predictor: Predictor,
    batch: np.ndarray,
    targets: list[int],
    method: AttributionMethod = DEFAULT_METHOD,
    layer: str | None = None,
    model: torch.nn.Module | None = None,
) -> np.ndarray:
    """Maps (N x size x size in [0, 1]) of ``method`` for the normalised input ``batch`` and the
    classes ``targets``. ``model`` replaces the predictor's network (the sanity check passes a
    randomised copy)."""
    network = model if model is not None else predictor.model
    device = next(network.parameters()).device
    inputs = torch.from_numpy(batch).to(device)
    if method in CAM_METHODS:
        spec = predictor.metadata["model"]
        layers = [
            target_layer(network, spec["name"], name, predictor.channels, predictor.size)
            for name in ([layer] if layer else default_layers(predictor))
        ]
        with CAM_METHODS[method](model=network, target_layers=layers) as cam:
            maps = cam(input_tensor=inputs, targets=[ClassifierOutputTarget(k) for k in targets])
        return maps.astype(np.float32)
    attributions = input_attributions(network, inputs, black_image(predictor, inputs), targets, method)[0]
    return _scaled(np.abs(attributions).sum(axis=1))


def black_image(predictor: Predictor, inputs: torch.Tensor) -> torch.Tensor:
    """A black image of the shape of ``inputs``, normalised as the model's input is."""
    black = predictor.normalise(np.zeros((1, predictor.channels, predictor.size, predictor.size), dtype=np.uint8))
    return torch.from_numpy(black).to(inputs.device).expand_as(inputs).contiguous()


def input_attributions(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    baseline: torch.Tensor,
    targets: list[int],
    method: AttributionMethod,
) -> tuple[np.ndarray, np.ndarray | None]:
    """captum's attributions (N x C x H x W) for ``inputs`` against ``baseline``, and, for
    Integrated Gradients, each image's completeness error: the attributions' sum minus the output
    difference from the baseline."""
    from captum.attr import IntegratedGradients, Occlusion

    model = model.eval()
    target = torch.tensor(targets, device=inputs.device)
    if method == "integrated-gradients":
        attributions, delta = IntegratedGradients(model).attribute(
            inputs,
            baselines=baseline,
            target=target,
            n_steps=INTEGRATED_GRADIENTS_STEPS,
            return_convergence_delta=True,
        )
        return attributions.detach().cpu().numpy(), delta.detach().cpu().numpy()
    if method == "occlusion":
        side = max(inputs.shape[-1] // OCCLUSION_WINDOWS, 2)
        channels = inputs.shape[1]
        attributions = Occlusion(model).attribute(
            inputs,
            sliding_window_shapes=(channels, side, side),
            strides=(channels, side // 2, side // 2),
            baselines=baseline,
            target=target,
            perturbations_per_eval=64,
        )
        return attributions.detach().cpu().numpy(), None
    raise ConfigError(f"method {method}: not an input attribution method", parameters=("method",))
