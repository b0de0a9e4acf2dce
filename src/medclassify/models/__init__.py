"""Models, created by name from a registry."""

from . import bn_cnn, paper_cnn  # noqa: F401  (registers the models)
from .paper_cnn import PaperCNN, paper_cnn_blocks
from .registry import available_models, count_parameters, create_model, register_model

__all__ = ["PaperCNN", "available_models", "count_parameters", "create_model", "paper_cnn_blocks", "register_model"]
