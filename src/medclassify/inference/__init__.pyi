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
from .pte import (
    export_executorch as export_executorch,
)
from .quantize import (
    GatedExport as GatedExport,
)
from .quantize import (
    quantize_run as quantize_run,
)

__all__ = [
    "ExportResult",
    "GatedExport",
    "Predictions",
    "Predictor",
    "export_executorch",
    "export_model",
    "quantize_run",
]
