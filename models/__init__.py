"""Maps (x, t) to a score: networks (MLP, UNet), the wrapper that reads their output as a score, the exact
mixture oracle, and guidance towards classes."""
from .guidance import GuidedScore, class_labels
from .mlp import MLP
from .oracle import MixtureScore
from .unet import UNet
from .wrapper import ScoreModel

__all__ = ["GuidedScore", "MLP", "MixtureScore", "ScoreModel", "UNet", "class_labels"]
