"""Training: the run configuration, the recipe, checkpoints and reproducibility."""

from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig
from .trainer import RunResult, train

__all__ = ["RunResult", "TrainConfig", "load_checkpoint", "save_checkpoint", "train"]
