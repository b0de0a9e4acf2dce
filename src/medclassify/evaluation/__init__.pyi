# The public names, for type checkers and IDEs; lazy_loader.attach_stub reads the same imports to load
# each module on first use.

from .metrics import (
    accuracy as accuracy,
)
from .metrics import (
    auc_score as auc_score,
)
from .metrics import (
    classification_metrics as classification_metrics,
)
from .metrics import (
    macro_f1 as macro_f1,
)
from .metrics import (
    predicted_labels as predicted_labels,
)
from .predict import (
    loss_function as loss_function,
)
from .predict import (
    predict_split as predict_split,
)
from .predict import (
    predict_split_sharded as predict_split_sharded,
)
from .predict import (
    probabilities as probabilities,
)
from .results import (
    evaluate_model as evaluate_model,
)
from .results import (
    summary_line as summary_line,
)
from .results import (
    write_predictions as write_predictions,
)
from .results import (
    write_results as write_results,
)

__all__ = [
    "accuracy",
    "auc_score",
    "classification_metrics",
    "evaluate_model",
    "loss_function",
    "macro_f1",
    "predict_split",
    "predict_split_sharded",
    "predicted_labels",
    "probabilities",
    "summary_line",
    "write_predictions",
    "write_results",
]
