"""The front door: ``scoresde.load`` a trained run into a Pipeline that samples with any solver and computes
the NLL; ``Pipeline(sde, model, data)`` wraps any score (the exact mixture oracle included)."""
from .pipeline import Pipeline, load

__all__ = ["Pipeline", "load"]
