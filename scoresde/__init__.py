"""The front door: ``scoresde.load`` a trained run into a Pipeline that samples with any solver and computes
the NLL; ``Pipeline(sde, model, data)`` wraps any score (the exact mixture oracle included).

The package also holds the data sets (``scoresde.data``), training (``scoresde.training``) and evaluation
(``scoresde.evaluation``); the front door is imported on first use, so that those floors import without it.
An install ships the configs inside the package: ``scoresde.paths.config_dir()`` is that folder (the checkout's
``conf/`` when run from a checkout).
"""
__all__ = ["Pipeline", "from_diffusers", "load"]


def __getattr__(name):
    if name in __all__:
        from . import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'scoresde' has no attribute {name!r}")
