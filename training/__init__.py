"""Data, and (later) the DSM loss, training loop and checkpoints."""
from .data import GaussianMixture, random_mixture

__all__ = ["GaussianMixture", "random_mixture"]
