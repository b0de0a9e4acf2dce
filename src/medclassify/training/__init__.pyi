# The public names, for type checkers and IDEs; lazy_loader.attach_stub reads the same imports to load
# each module on first use.

from .trainer import (
    RunResult as RunResult,
)
from .trainer import (
    TrainingSession as TrainingSession,
)
from .trainer import (
    train as train,
)

__all__ = ["RunResult", "TrainingSession", "train"]
