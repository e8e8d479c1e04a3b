"""Sample-quality metrics and pictures."""
from .classify import classifier_report
from .features import DINOv2Features, PixelFeatures
from .fid import FID, InceptionFeatures, frechet_distance, kid
from .metrics import inpainting_report, mixture_report, sample_quality, sliced_wasserstein
from .plots import plot_inpainting, plot_samples
from .prdc import prdc

__all__ = ["DINOv2Features", "FID", "InceptionFeatures", "PixelFeatures", "classifier_report", "frechet_distance",
           "inpainting_report", "kid", "mixture_report", "plot_inpainting", "plot_samples", "prdc", "sample_quality",
           "sliced_wasserstein"]
