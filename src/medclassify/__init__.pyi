# The public names, for type checkers and IDEs; lazy_loader.attach_stub reads the same imports to load
# each module on first use.

__version__: str

from .config import (
    PostTrainingConfig as PostTrainingConfig,
)
from .config import (
    RunConfig as RunConfig,
)
from .config import (
    RuntimeConfig as RuntimeConfig,
)
from .config import (
    TrainConfig as TrainConfig,
)
from .data import (
    dataset_catalog as dataset_catalog,
)
from .data import (
    load_dataset as load_dataset,
)
from .errors import (
    CheckpointError as CheckpointError,
)
from .errors import (
    ConfigError as ConfigError,
)
from .errors import (
    DataError as DataError,
)
from .errors import (
    MedclassifyError as MedclassifyError,
)
from .errors import (
    OutputError as OutputError,
)
from .evaluation import (
    classification_metrics as classification_metrics,
)
from .inference import (
    ExportResult as ExportResult,
)
from .inference import (
    Predictions as Predictions,
)
from .inference import (
    Predictor as Predictor,
)
from .inference import (
    export_model as export_model,
)
from .models import (
    available_models as available_models,
)
from .models import (
    create_model as create_model,
)
from .runs import (
    CalibrationResult as CalibrationResult,
)
from .runs import (
    EvaluationResult as EvaluationResult,
)
from .runs import (
    RobustnessReport as RobustnessReport,
)
from .runs import (
    RunDir as RunDir,
)
from .runs import (
    calibrate_run as calibrate_run,
)
from .runs import (
    evaluate_run as evaluate_run,
)
from .runs import (
    robustness_run as robustness_run,
)
from .training import (
    RunResult as RunResult,
)
from .training import (
    train as train,
)

__all__ = [
    "CalibrationResult",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "EvaluationResult",
    "ExportResult",
    "MedclassifyError",
    "OutputError",
    "PostTrainingConfig",
    "Predictions",
    "Predictor",
    "RobustnessReport",
    "RunConfig",
    "RunDir",
    "RunResult",
    "RuntimeConfig",
    "TrainConfig",
    "available_models",
    "calibrate_run",
    "classification_metrics",
    "create_model",
    "dataset_catalog",
    "evaluate_run",
    "export_model",
    "load_dataset",
    "robustness_run",
    "train",
]
