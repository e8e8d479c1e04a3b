"""Sample-quality metrics and pictures."""
from .classify import classifier_report
from .fid import FID, InceptionFeatures, frechet_distance, kid
from .metrics import inpainting_report, mixture_report, sample_quality, sliced_wasserstein
from .plots import plot_inpainting, plot_samples

__all__ = ["FID", "InceptionFeatures", "classifier_report", "frechet_distance", "inpainting_report", "kid",
           "mixture_report", "plot_inpainting", "plot_samples", "sample_quality", "sliced_wasserstein"]
