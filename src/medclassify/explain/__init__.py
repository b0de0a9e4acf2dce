"""Explaining predictions: heatmaps of seven attribution methods for images and for a run's test
split, and a measure of how far each method's maps can be trusted."""

from .faithfulness import DEFAULT_EVALUATION_IMAGES, ExplanationEvaluation, MethodEvaluation, evaluate_explanations
from .gradcam import (
    Explanation,
    cam_maps,
    explain_images,
    explain_split,
    overlay_pixels,
    save_overlay,
    write_overlays,
)
from .methods import METHODS, AttributionMethod, attribution_maps, default_layers, target_layer

__all__ = [
    "DEFAULT_EVALUATION_IMAGES",
    "METHODS",
    "AttributionMethod",
    "Explanation",
    "ExplanationEvaluation",
    "MethodEvaluation",
    "attribution_maps",
    "cam_maps",
    "default_layers",
    "evaluate_explanations",
    "explain_images",
    "explain_split",
    "overlay_pixels",
    "save_overlay",
    "target_layer",
    "write_overlays",
]
