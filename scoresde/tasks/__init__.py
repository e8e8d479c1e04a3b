"""What a run does with a trained model: one task (sample, inpaint, colorize) and its evaluations, each a small
class built from its config group (conf/task/, conf/eval/), with ``setup(data, model, context)`` before training
and ``__call__(pipe, context) -> metrics``; and the callbacks training is given."""
from .callbacks import TrainingPictures
from .context import Context, Sampling
from .evals import NLL, PRDC, Bound, Classifier, HeldOut, Mixture, Quality
from .fid import FIDDuringTraining, FIDScore, log_fid
from .inpaint import Colorize, Inpaint
from .protocol import FIDProtocol
from .sample import Sample, check_sample_range

__all__ = ["Context", "Sampling", "Sample", "Inpaint", "Colorize", "Quality", "Mixture", "PRDC", "Classifier",
           "HeldOut", "NLL", "Bound", "FIDScore", "FIDProtocol", "FIDDuringTraining", "TrainingPictures", "log_fid",
           "check_sample_range"]
