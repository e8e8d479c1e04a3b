"""Data, the denoising score-matching loss, the training loop and checkpoints."""
from .data import GaussianMixture, random_mixture
from .loss import DSMLoss
from .trainer import Trainer

__all__ = ["GaussianMixture", "random_mixture", "DSMLoss", "Trainer"]
