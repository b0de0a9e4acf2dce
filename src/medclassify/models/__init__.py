"""Models, created by name from a registry."""

from . import bn_cnn, paper_cnn, paper_cnn_bn, torchvision_models  # noqa: F401  (registers the models)
from .ensemble import ENSEMBLE_NAME, SeedEnsemble, cam_layer_names, model_from_spec
from .paper_cnn import PaperCNN, paper_cnn_blocks
from .registry import available_models, count_parameters, create_model, get_model_entry, head_module, register_model

__all__ = [
    "ENSEMBLE_NAME",
    "PaperCNN",
    "SeedEnsemble",
    "cam_layer_names",
    "available_models",
    "count_parameters",
    "create_model",
    "get_model_entry",
    "head_module",
    "model_from_spec",
    "paper_cnn_blocks",
    "register_model",
]
