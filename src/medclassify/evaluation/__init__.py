"""Evaluation: metric functions over arrays, model predictions, and the files a run reports.

Attributes load on first use, so that applying stored conformal thresholds (``evaluation.conformal``)
imports neither torch nor scikit-learn.
"""

import lazy_loader as lazy

__getattr__, __dir__, __all__ = lazy.attach(
    __name__,
    submod_attrs={
        "metrics": ["accuracy", "auc_score", "classification_metrics", "macro_f1", "predicted_labels"],
        "predict": ["loss_function", "predict_split", "predict_split_sharded", "probabilities"],
        "results": ["evaluate_model", "summary_line", "write_predictions", "write_results"],
    },
)
