"""medclassify: train, evaluate, compare, explain and serve CNNs for medical image classification."""

__version__ = "0.1.0"

from .data import dataset_catalog, load_dataset  # noqa: E402
from .errors import MedclassifyError  # noqa: E402
from .evaluation import classification_metrics  # noqa: E402
from .evaluation.run import evaluate_run  # noqa: E402
from .models import available_models, create_model  # noqa: E402
from .training import RunResult, TrainConfig, train  # noqa: E402

__all__ = [
    "MedclassifyError",
    "RunResult",
    "TrainConfig",
    "__version__",
    "available_models",
    "classification_metrics",
    "create_model",
    "dataset_catalog",
    "evaluate_run",
    "load_dataset",
    "train",
]
