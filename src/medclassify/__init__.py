"""medclassify: train, evaluate, compare, explain and serve CNNs for medical image classification.

Attributes load on first use: ``medclassify predict`` with an ONNX model starts without importing torch.
"""

import lazy_loader as lazy

__version__ = "0.1.0"

__getattr__, __dir__, __all__ = lazy.attach(
    __name__,
    submod_attrs={
        "data": ["dataset_catalog", "load_dataset"],
        "errors": ["MedclassifyError"],
        "evaluation": ["classification_metrics"],
        "inference": ["Predictor", "export_model"],
        "models": ["available_models", "create_model"],
        "config": ["RunConfig", "RuntimeConfig", "TrainConfig"],
        "runs": ["RunDir", "evaluate_run"],
        "training": ["RunResult", "train"],
    },
)
