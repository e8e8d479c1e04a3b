"""Forward processes: the abstract linear SDE and its built-in subclasses; the errors that mean bad input."""
from .base import SDE, expand
from .errors import CheckpointError, ConfigError, config_scope
from .processes import CosineVPSDE, RectifiedFlow, SubVPSDE, VESDE, VPSDE

__all__ = ["SDE", "expand", "VPSDE", "SubVPSDE", "VESDE", "CosineVPSDE", "RectifiedFlow", "ConfigError",
           "CheckpointError", "config_scope"]
