"""Training: the run configuration, the recipe, checkpoints and reproducibility.

Attributes load on first use, so that loading a checkpoint for prediction does not import the
training recipe and its dependencies.
"""

import lazy_loader as lazy

__getattr__, __dir__, __all__ = lazy.attach(
    __name__,
    submod_attrs={
        "checkpoint": ["load_checkpoint", "save_checkpoint"],
        "trainer": ["RunResult", "train"],
    },
)
