"""Sample-quality metrics and pictures."""
from .classify import classifier_report
from .metrics import inpainting_report, mixture_report, sample_quality, sliced_wasserstein
from .plots import plot_inpainting, plot_samples

__all__ = ["classifier_report", "inpainting_report", "mixture_report", "plot_inpainting", "plot_samples", "sample_quality",
           "sliced_wasserstein"]
