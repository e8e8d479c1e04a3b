"""Data sets, on the lowest floor: one small base class (DataSet) and what derives from it: Gaussian
mixtures with exact densities, 2-D toys, a user's arrays, image folders, CIFAR-10/100 and scikit-learn's digits;
8-bit image sets train through a DataLoader (scoresde.data.loader)."""
from .base import DataSet, DataSpec
from .cifar import Cifar10, Cifar100
from .files import ArrayFile, Digits, ImageData, ImageFolder, TensorData
from .mixture import GaussianMixture, RandomMixture
from .toys import Checkerboard, EightGaussians, Moons, Rings, SwissRoll

__all__ = ["DataSet", "DataSpec", "ArrayFile", "Cifar10", "Cifar100", "Digits", "ImageData", "ImageFolder",
           "TensorData", "GaussianMixture", "RandomMixture", "Checkerboard", "EightGaussians", "Moons", "Rings",
           "SwissRoll"]
