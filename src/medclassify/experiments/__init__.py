"""Experiments: studies (grids of runs) described in YAML, their runner and their results table."""

from .results import collect_results, write_results_table
from .runner import run_study
from .study import Study, experiment_name

__all__ = ["Study", "collect_results", "experiment_name", "run_study", "write_results_table"]
