"""Sample-quality metrics and pictures."""
from .classify import classifier_report
from .metrics import mixture_report, sample_quality, sliced_wasserstein
from .plots import plot_samples

__all__ = ["classifier_report", "mixture_report", "plot_samples", "sample_quality", "sliced_wasserstein"]
