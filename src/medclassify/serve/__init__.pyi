# The public names, for type checkers and IDEs; lazy_loader.attach_stub reads the same imports to load
# each module on first use.

from .app import (
    create_app as create_app,
)
from .served import (
    ServedModel as ServedModel,
)
from .served import (
    load_served_models as load_served_models,
)
from .settings import (
    ServeSettings as ServeSettings,
)

__all__ = ["ServeSettings", "ServedModel", "create_app", "load_served_models"]
