"""task=sample: draw samples of the model, save and picture them."""
import warnings

import numpy as np

from sde.errors import ConfigWarning, NonFiniteError, config_scope
from scoresde.evaluation import plot_samples
from scoresde.inputs import read_prior_draws
from scoresde.training.checkpoint import write_output
from solvers.fitting import save_grid


def check_sample_range(x, data, generator, factor=10.0):
    """The samples far outside the data: those with a coordinate beyond ``factor`` times the data's largest
    magnitude M (its value range, or the largest of 1000 draws with ``generator``). An undertrained model or a
    diverging solver puts samples there; none is dropped. Returns {} when there are none, else the metrics
    ``samples_out_of_range`` (how many) and ``samples_out_of_range_ratio`` (max |x| / M), after a one-line
    ConfigWarning saying so."""
    if data.value_range is not None:
        scale = max(abs(v) for v in data.value_range)
    else:
        scale = float(data.sample(1000, generator).abs().max())
    far = (x.reshape(len(x), -1).abs() > factor * scale).any(1)
    if not far.any():
        return {}
    ratio = float(x.abs().max()) / scale
    warnings.warn(ConfigWarning(
        f"{int(far.sum())} of {len(x)} samples lie beyond {factor:g} times the data's largest magnitude {scale:.3g} "
        f"(up to {ratio:.3g} times it; the first is number {int(far.nonzero()[0, 0])}): the model is undertrained or "
        "the solver diverged; they are kept in samples.npz and counted in metrics.json (samples_out_of_range; "
        "sample.max_range=0 skips this check)"), stacklevel=2)
    return {"samples_out_of_range": int(far.sum()), "samples_out_of_range_ratio": ratio}


class Sample:
    """Draws ``sampling.num`` samples with the run's solver (for ``sampling.classes``, with guidance) from the
    run's "solver" stream into samples.npz (x, and y for labelled samples) and samples.png beside data drawn
    from the "reference_plot" stream; metrics nfe_sample, sample_seconds (without a grid fit's seconds) and
    grid_fit, when the draw fitted the solver's grid (also written to grid.json); samples_out_of_range and
    samples_out_of_range_ratio, with a one-line warning, when some lie beyond ``sampling.max_range`` times the
    data's largest magnitude (check_sample_range). ``x_T``: a .npy of the prior draws to start from, of shape
    (sampling.num, *data shape) (read_prior_draws; None: drawn from the prior).
    Sets the context's samples and labels for the evaluations."""

    name = "sample"

    def __init__(self, x_T=None):
        self.x_T = None if x_T is None else str(x_T)
        self.prior = None

    def setup(self, data, model, context):
        """The prior draws of ``x_T`` read and checked against sampling.num and the data's shape."""
        if self.x_T is not None:
            with config_scope("task"):
                self.prior = read_prior_draws(self.x_T, (context.sampling.num, *data.shape))

    def __call__(self, pipe, context):
        s = context.sampling
        try:
            with config_scope("solver"):
                x, stats = pipe.sample(s.num, context.solver, batch=s.batch, generator=context.generator, info=True,
                                       progress=context.progress, classes=s.classes, guidance=s.guidance,
                                       x_T=self.prior)
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
        arrays = {"x": x.cpu().numpy(), **({} if labels is None else {"y": labels.numpy()})}
        write_output(out / "samples.npz", lambda fh: np.savez(fh, **arrays))
        if s.max_range:
            metrics.update(check_sample_range(x, data, context.seeds.generator("range_check"), s.max_range))
        if s.plot:
            reference = data.sample(min(len(x), 5000), context.seeds.generator("reference_plot")).numpy()
            plot_samples(x.cpu().numpy(), out / "samples.png", reference, title=f"{pipe.sde!r}\n{context.solver!r}",
                         value_range=data.value_range, labels=None if labels is None else labels.numpy())
        return metrics
