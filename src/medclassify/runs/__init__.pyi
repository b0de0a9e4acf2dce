# The public names, for type checkers and IDEs; lazy_loader.attach_stub reads the same imports to load
# each module on first use.

from .card import (
    model_card as model_card,
)
from .card import (
    write_model_card as write_model_card,
)
from .ensemble import (
    EnsembleResult as EnsembleResult,
)
from .ensemble import (
    make_ensemble as make_ensemble,
)
from .files import (
    BEST_FILE as BEST_FILE,
)
from .files import (
    CONFIG_FILE as CONFIG_FILE,
)
from .files import (
    HISTORY_FILE as HISTORY_FILE,
)
from .files import (
    LAST_FILE as LAST_FILE,
)
from .files import (
    METRICS_FILE as METRICS_FILE,
)
from .files import (
    MODEL_CARD_FILE as MODEL_CARD_FILE,
)
from .files import (
    ONNX_FILE as ONNX_FILE,
)
from .files import (
    PREDICTIONS_FILE as PREDICTIONS_FILE,
)
from .files import (
    RELIABILITY_FIGURE as RELIABILITY_FIGURE,
)
from .files import (
    ROBUSTNESS_FIGURE as ROBUSTNESS_FIGURE,
)
from .files import (
    ROBUSTNESS_IMAGES as ROBUSTNESS_IMAGES,
)
from .files import (
    ROBUSTNESS_TABLE as ROBUSTNESS_TABLE,
)
from .files import (
    RUN_FILES as RUN_FILES,
)
from .files import (
    RunDir as RunDir,
)
from .files import (
    load_checkpoint as load_checkpoint,
)
from .files import (
    read_csv as read_csv,
)
from .files import (
    result_files as result_files,
)
from .files import (
    save_checkpoint as save_checkpoint,
)
from .operations import (
    CalibrationResult as CalibrationResult,
)
from .operations import (
    EvaluationResult as EvaluationResult,
)
from .operations import (
    RobustnessReport as RobustnessReport,
)
from .operations import (
    TorchBackend as TorchBackend,
)
from .operations import (
    calibrate_held_run as calibrate_held_run,
)
from .operations import (
    calibrate_run as calibrate_run,
)
from .operations import (
    check_bundle_fits as check_bundle_fits,
)
from .operations import (
    check_fits_data as check_fits_data,
)
from .operations import (
    evaluate_run as evaluate_run,
)
from .operations import (
    load_run_data as load_run_data,
)
from .operations import (
    robustness_held_run as robustness_held_run,
)
from .operations import (
    robustness_run as robustness_run,
)

__all__ = [
    "BEST_FILE",
    "CONFIG_FILE",
    "CalibrationResult",
    "EnsembleResult",
    "EvaluationResult",
    "HISTORY_FILE",
    "LAST_FILE",
    "METRICS_FILE",
    "MODEL_CARD_FILE",
    "ONNX_FILE",
    "PREDICTIONS_FILE",
    "RELIABILITY_FIGURE",
    "ROBUSTNESS_FIGURE",
    "ROBUSTNESS_IMAGES",
    "ROBUSTNESS_TABLE",
    "RUN_FILES",
    "RobustnessReport",
    "RunDir",
    "TorchBackend",
    "calibrate_held_run",
    "calibrate_run",
    "check_bundle_fits",
    "check_fits_data",
    "evaluate_run",
    "load_checkpoint",
    "load_run_data",
    "make_ensemble",
    "model_card",
    "read_csv",
    "result_files",
    "robustness_held_run",
    "robustness_run",
    "save_checkpoint",
    "write_model_card",
]
