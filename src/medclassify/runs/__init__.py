"""Run folders: their files and readers (``files``) and what can be done again with a finished run
(``operations``: evaluate, calibrate, test robustness). Attributes load on first use, so that reading a file name
does not import torch."""

import lazy_loader as lazy

__getattr__, __dir__, __all__ = lazy.attach(
    __name__,
    submod_attrs={
        "files": [
            "BEST_FILE",
            "CONFIG_FILE",
            "HISTORY_FILE",
            "LAST_FILE",
            "MODEL_CARD_FILE",
            "METRICS_FILE",
            "ONNX_FILE",
            "PREDICTIONS_FILE",
            "RELIABILITY_FIGURE",
            "ROBUSTNESS_FIGURE",
            "ROBUSTNESS_IMAGES",
            "ROBUSTNESS_TABLE",
            "RUN_FILES",
            "RunDir",
            "load_checkpoint",
            "read_csv",
            "result_files",
            "save_checkpoint",
        ],
        "card": ["model_card", "write_model_card"],
        "ensemble": ["EnsembleResult", "make_ensemble"],
        "operations": [
            "TorchBackend",
            "calibrate_held_run",
            "calibrate_run",
            "check_bundle_fits",
            "check_fits_data",
            "evaluate_run",
            "load_run_data",
            "robustness_held_run",
            "robustness_run",
        ],
    },
)
