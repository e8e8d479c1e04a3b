"""Maps (x, t) to a score: the exact mixture oracle (networks and their wrappers follow)."""
from .oracle import MixtureScore

__all__ = ["MixtureScore"]
