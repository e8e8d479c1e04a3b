"""Forward processes: the abstract linear SDE and its built-in subclasses."""
from .base import SDE, expand
from .processes import CosineVPSDE, RectifiedFlow, SubVPSDE, VESDE, VPSDE

__all__ = ["SDE", "expand", "VPSDE", "SubVPSDE", "VESDE", "CosineVPSDE", "RectifiedFlow"]
