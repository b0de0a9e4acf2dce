"""Evaluation: metric functions over arrays, model predictions, and the files a run reports.

Attributes load on first use, so that applying stored conformal thresholds (``evaluation.conformal``)
imports neither torch nor scikit-learn.
"""

import lazy_loader as lazy

__getattr__, __dir__, __all__ = lazy.attach_stub(__name__, __file__)
