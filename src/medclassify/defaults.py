"""Defaults that library functions and the command line share. This module imports only ``typing``, so the
CLI can show them in ``--help`` without loading torch, and each value is written once."""

from typing import Literal, get_args

# Largest image read by default (all frames of a DICOM file, all images of an array file together):
# the check comes from the file's header, before any pixel is decoded.
MAX_PIXELS = 50_000_000
DEVICE_HELP = "auto, cpu, cuda, cuda:N or mps (auto: CUDA, then MPS, then CPU)"  # every command that runs a model
PREDICT_BATCH_SIZE = 64  # images per forward pass when predicting on files
EXPORT_FORMATS = ("onnx", "torchscript", "hub")  # what export writes; the first is the default
EXPORT_SUFFIXES = {"onnx": ".onnx", "torchscript": ".ts"}  # the formats that are one file -> its suffix
PARITY_TOLERANCE = 1e-4  # largest logit difference an export may have to PyTorch
GRID_PER_CLASS = 2  # correct and wrong examples per class in the Grad-CAM grid
AttributionMethod = Literal[
    "gradcam", "gradcam++", "scorecam", "eigencam", "layercam", "integrated-gradients", "occlusion"
]  # explanation methods: five class-activation maps (grad-cam), two input attributions (captum)
EXPLAIN_METHODS: tuple[AttributionMethod, ...] = get_args(AttributionMethod)
# The default explanation: the most faithful in the measured runs, as fast as Grad-CAM (the measurements:
# docs/guide/predict-explain-export.md, "How far to trust a heatmap").
DEFAULT_EXPLAIN_METHOD: AttributionMethod = "layercam"
EVALUATION_IMAGES = 200  # test images behind 'explain --evaluate'
BOOTSTRAP_RESAMPLES = 1000  # resamples behind every confidence interval of a study
ConformalScore = Literal["lac", "aps"]  # conformal prediction-set scores
CONFORMAL_SCORES: tuple[ConformalScore, ...] = get_args(ConformalScore)  # the first is the default
CorruptionSet = Literal["auto", "medmnistc", "generic"]  # which corruptions test a model
CORRUPTION_SETS: tuple[CorruptionSet, ...] = get_args(CorruptionSet)  # the first is the default
SEVERITIES = (1, 2, 3, 4, 5)  # corruption severities, as MedMNIST-C's
Tracker = Literal["tensorboard", "mlflow"]  # experiment trackers a run can report to
TRACKERS: tuple[Tracker, ...] = get_args(Tracker)
CARD_RESAMPLES = 200  # bootstrap resamples behind a model card's intervals (written after every run)
