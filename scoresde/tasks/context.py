"""What a run's task and evaluations share."""
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from models.guidance import GuidedScore, class_labels
from sde.errors import check_int, check_number, config_scope
from scoresde.seeds import Seeds


@dataclass(frozen=True)
class Sampling:
    """How a run draws samples, for its task, its training pictures and FID alike: ``num`` samples, ``batch`` at
    a time, of ``classes`` (a conditional model: None, a class, a list or 'all') under classifier-free guidance
    of scale ``guidance``; ``plot`` pictures them; samples beyond ``max_range`` times the data's largest
    magnitude are warned about and counted (check_sample_range; 0: no check)."""

    num: int = 2000
    classes: Any = None
    batch: int = 10000
    plot: bool = True
    max_range: float = 10.0
    guidance: float = 0.0

    def __post_init__(self):
        with config_scope("sample"):
            check_int("num", self.num), check_int("batch", self.batch)
            check_number("max_range", self.max_range, strict=False)

    def check(self, model):
        """The classes and guidance scale must suit ``model`` (a ConfigError under sample. or guidance.)."""
        with config_scope("sample"):
            labels = class_labels(self.classes, 1, getattr(model, "num_classes", None))
        with config_scope("guidance"):
            GuidedScore(model, labels, self.guidance)


@dataclass
class Context:
    """What the task and the evaluations of a run share: its output folder ``out`` (written by the ``main``
    process alone), its named random streams ``seeds``, the ``device``, the run's ``solver`` and ``sampling``,
    ``progress`` bars, and ``generator``, the run's "solver" stream: the task draws from it first and the
    likelihood evaluations continue it. ``train_step`` is the model's training step (None when unknown); the
    task sets ``samples`` and ``labels`` (the class of each sample, or None) for the evaluations that follow."""

    out: Path
    seeds: Seeds
    device: torch.device
    solver: Any
    sampling: Sampling
    generator: Optional[torch.Generator] = None
    progress: Any = False
    main: bool = True
    train_step: Optional[int] = None
    samples: Optional[torch.Tensor] = None
    labels: Optional[torch.Tensor] = None
