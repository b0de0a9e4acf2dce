# The public names, for type checkers and IDEs; lazy_loader.attach_stub reads the same imports to load
# each module on first use.

from .export import (
    ExportResult as ExportResult,
)
from .export import (
    export_model as export_model,
)
from .predictor import (
    Predictions as Predictions,
)
from .predictor import (
    Predictor as Predictor,
)

__all__ = ["ExportResult", "Predictions", "Predictor", "export_model"]
