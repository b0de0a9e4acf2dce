"""Defaults that library functions and the command line share. This module imports nothing, so the
CLI can show them in ``--help`` without loading torch, and each value is written once."""

# Largest image read by default (all frames of a DICOM file, all images of an array file together):
# the check comes from the file's header, before any pixel is decoded.
MAX_PIXELS = 50_000_000
PREDICT_BATCH_SIZE = 64  # images per forward pass when predicting on files
EXPORT_FORMATS = {"onnx": ".onnx", "torchscript": ".ts"}  # format -> file suffix; the first is the default
PARITY_TOLERANCE = 1e-4  # largest logit difference an export may have to PyTorch
GRID_PER_CLASS = 2  # correct and wrong examples per class in the Grad-CAM grid
BOOTSTRAP_RESAMPLES = 1000  # resamples behind every confidence interval of a study
CONFORMAL_SCORES = ("lac", "aps")  # conformal prediction-set scores; the first is the default
CORRUPTION_SETS = ("auto", "medmnistc", "generic")  # which corruptions test a model; the first is the default
SEVERITIES = (1, 2, 3, 4, 5)  # corruption severities, as MedMNIST-C's
TRACKERS = ("tensorboard", "mlflow")  # experiment trackers a run can report to
CARD_RESAMPLES = 200  # bootstrap resamples behind a model card's intervals (written after every run)
