"""Reporting: statistics between experiments, figures, and the written study report."""
