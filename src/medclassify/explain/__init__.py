"""Explaining predictions: Grad-CAM heatmaps for images and for a run's test split."""

from .gradcam import (
    Explanation,
    cam_maps,
    explain_images,
    explain_split,
    overlay_pixels,
    save_overlay,
    target_layer,
    write_overlays,
)

__all__ = [
    "Explanation",
    "cam_maps",
    "explain_images",
    "explain_split",
    "overlay_pixels",
    "save_overlay",
    "target_layer",
    "write_overlays",
]
