"""Training: the denoising score-matching loss, the EMA of weights, the training state, step and loop, and
checkpoints."""
from .ema import EMA
from .loss import DSMLoss
from .state import TrainState
from .trainer import Trainer, TrainingError, train_step

__all__ = ["EMA", "DSMLoss", "TrainState", "Trainer", "TrainingError", "train_step"]
