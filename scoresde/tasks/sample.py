"""task=sample: draw samples of the model, save and picture them."""
import numpy as np

from sde.errors import NonFiniteError, config_scope
from scoresde.evaluation import plot_samples
from solvers.fitting import save_grid


def check_sample_range(x, data, generator, factor=10.0):
    """Samples far outside the data (beyond ``factor`` times its largest magnitude) end the run in one line: the
    model or the solver diverged, and a picture would only clip them."""
    if data.value_range is not None:
        scale = max(abs(v) for v in data.value_range)
    else:
        scale = float(data.sample(1000, generator).abs().max())
    far = (x.reshape(len(x), -1).abs() > factor * scale).any(1)
    if far.any():
        raise NonFiniteError(f"{int(far.sum())} of {len(x)} samples lie beyond {factor:g} times the data's largest "
                             f"magnitude {scale:.3g} (up to {float(x.abs().max()):.3g}; the first is number "
                             f"{int(far.nonzero()[0, 0])}): the model or the solver diverged (samples.npz holds them; "
                             "sample.max_range=0 skips this check)")


class Sample:
    """Draws ``sampling.num`` samples with the run's solver (for ``sampling.classes``, with guidance) from the
    run's "solver" stream into samples.npz (x, and y for labelled samples) and samples.png beside data drawn
    from the "reference_plot" stream; metrics nfe_sample, sample_seconds (without a grid fit's seconds) and
    grid_fit, when the draw fitted the solver's grid (also written to grid.json).
    Sets the context's samples and labels for the evaluations."""

    name = "sample"

    def setup(self, data, model, context):
        """Nothing to prepare: the sampling options are checked where they are built."""

    def __call__(self, pipe, context):
        s = context.sampling
        try:
            with config_scope("solver"):
                x, stats = pipe.sample(s.num, context.solver, batch=s.batch, generator=context.generator, info=True,
                                       progress=context.progress, classes=s.classes, guidance=s.guidance)
        except NonFiniteError as e:
            if not s.guidance:
                raise
            raise NonFiniteError(f"{e} under guidance.scale={s.guidance:g}: a smaller scale keeps the guided score "
                                 "(1 + w) s(x, t, y) - w s(x, t, ∅) within range") from None
        if not context.main:
            return {}
        labels = stats["labels"]
        metrics = {"nfe_sample": stats["nfe"], "sample_seconds": stats["seconds"]}
        if labels is not None:
            metrics.update(guidance_scale=s.guidance, nfe_counts="network passes per sample" + (
                "; under guidance each pass holds the batch twice (conditional and null labels)"
                if s.guidance else ""))
        if "grid_fit" in stats:
            metrics["grid_fit"] = save_grid(context.out / "grid.json", stats["grid_fit"])
        context.samples, context.labels = x, labels
        data, out = pipe.data, context.out
        np.savez(out / "samples.npz", x=x.cpu().numpy(), **({} if labels is None else {"y": labels.numpy()}))
        if s.max_range:
            check_sample_range(x, data, context.seeds.generator("range_check"), s.max_range)
        if s.plot:
            reference = data.sample(min(len(x), 5000), context.seeds.generator("reference_plot")).numpy()
            plot_samples(x.cpu().numpy(), out / "samples.png", reference, title=f"{pipe.sde!r}\n{context.solver!r}",
                         value_range=data.value_range, labels=None if labels is None else labels.numpy())
        return metrics
