"""Experiments: studies (grids of runs) described in YAML, their runner and their results."""

from .results import Experiment, load_experiments, results_rows
from .runner import run_study
from .study import Study, StudyExplanations, experiment_name

__all__ = [
    "Experiment",
    "Study",
    "StudyExplanations",
    "experiment_name",
    "load_experiments",
    "results_rows",
    "run_study",
]
