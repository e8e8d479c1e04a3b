"""Data sets, on the lowest floor: one small base class (DataSet) and what derives from it: Gaussian
mixtures with exact densities, 2-D toys, a user's arrays, image folders and scikit-learn's digits."""
from .base import DataSet, DataSpec
from .files import ArrayFile, Digits, ImageData, ImageFolder, TensorData
from .mixture import GaussianMixture, RandomMixture
from .toys import Checkerboard, EightGaussians, Moons, Rings, SwissRoll

__all__ = ["DataSet", "DataSpec", "ArrayFile", "Digits", "ImageData", "ImageFolder", "TensorData",
           "GaussianMixture", "RandomMixture", "Checkerboard", "EightGaussians", "Moons", "Rings", "SwissRoll"]
