"""Run folders: their files and readers (``files``) and what can be done again with a finished run
(``operations``: evaluate, calibrate, test robustness). Attributes load on first use, so that reading a file name
does not import torch."""

import lazy_loader as lazy

__getattr__, __dir__, __all__ = lazy.attach_stub(__name__, __file__)
