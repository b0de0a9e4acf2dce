"""Run folders: their files and readers (``files``) and what can be done again with a finished run
(``operations``: evaluate, calibrate). Attributes load on first use, so that reading a file name
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
            "METRICS_FILE",
            "ONNX_FILE",
            "PREDICTIONS_FILE",
            "RELIABILITY_FIGURE",
            "RUN_FILES",
            "RunDir",
            "load_checkpoint",
            "read_csv",
            "result_files",
            "save_checkpoint",
        ],
        "ensemble": ["EnsembleResult", "make_ensemble"],
        "operations": [
            "TorchBackend",
            "calibrate_held_run",
            "calibrate_run",
            "check_bundle_fits",
            "evaluate_run",
            "load_run_data",
        ],
    },
)
