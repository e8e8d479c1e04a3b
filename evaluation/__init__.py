"""Sample-quality metrics and pictures."""
from .metrics import mixture_report, sample_quality, sliced_wasserstein
from .plots import plot_samples

__all__ = ["mixture_report", "plot_samples", "sample_quality", "sliced_wasserstein"]
