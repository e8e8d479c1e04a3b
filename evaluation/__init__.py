"""Sample-quality metrics and pictures."""
from .metrics import mixture_report, sliced_wasserstein
from .plots import plot_samples

__all__ = ["mixture_report", "plot_samples", "sliced_wasserstein"]
