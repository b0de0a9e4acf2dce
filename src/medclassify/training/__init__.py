"""Training: the recipe's parts (``recipe``) and the loop that runs them (``trainer``).

Attributes load on first use, so that loading a checkpoint for prediction does not import the
training recipe and its dependencies.
"""

import lazy_loader as lazy

__getattr__, __dir__, __all__ = lazy.attach_stub(__name__, __file__)
