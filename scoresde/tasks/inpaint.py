"""task=inpaint and task=colorize: complete held-out points of which a part is known."""
import numpy as np
import torch

from sde.errors import ConfigError, check_int, config_scope
from scoresde.data import GaussianMixture
from scoresde.evaluation import inpainting_report, plot_inpainting
from solvers.inpaint import Inpainter
from solvers.observe import Observation, gray_chroma


def check_mask(known, mask):
    """A mask (True = known) must know some coordinates and leave some unknown: with none known the task is
    sampling, with none unknown nothing is completed and the metrics of the unknown part would be NaN."""
    name = getattr(mask, "func", mask)
    keywords = getattr(mask, "keywords", {})
    what = f"{getattr(name, '__name__', 'mask')}({', '.join(f'{k}={v!r}' for k, v in keywords.items())})"
    if bool(known.all()):
        raise ConfigError(f"the mask {what} knows every coordinate of the data's shape {tuple(known.shape)}: nothing "
                          "is left to complete (inpaint_rmse would be NaN); choose a mask that hides some")
    if not bool(known.any()):
        raise ConfigError(f"the mask {what} knows no coordinate of the data's shape {tuple(known.shape)}: that is "
                          "sampling (task=sample); choose a mask that keeps some")


class Inpaint:
    """``completions`` completions of each of ``num`` held-out points (the "inpaint_points" stream) of which
    ``mask(shape)`` (True = known) is known, with the run's solver wrapped by solvers.Inpainter (``method``
    replace | resample with ``jumps`` tries per step). Metrics nfe_inpaint, inpaint_seconds, inpainter,
    inpaint_rmse (over the unknown part) and, for mixture data, the report against the exact conditional
    (the "inpaint_report" stream); inpaint.npz (x, observed, completions, mask) and inpaint.png
    (original | observed | completions)."""

    name = "inpaint"

    def __init__(self, num=8, completions=4, method="replace", jumps=1, mask=None):
        self.num = check_int("num", num)
        self.completions = check_int("completions", completions)
        self.method, self.jumps, self.mask = method, jumps, mask

    def observation(self, data):
        """The mask of what is known and the channel transform (None: the points themselves)."""
        if self.mask is None:
            raise ConfigError("task=inpaint needs a mask: choose one with mask=box|random|coordinates|file", "mask")
        with config_scope("mask"):
            return self.mask(tuple(data.shape)), None

    def setup(self, data, model, context):
        """The inpainter, the held-out points and the mask, before training."""
        with config_scope("task"):
            self.inpainter = Inpainter(context.solver, self.method, self.jumps)
            self.x_known = data.test(self.num, context.seeds.generator("inpaint_points")).to(context.device)
        self.known, self.transform = self.observation(data)
        check_mask(self.known, self.mask)

    def __call__(self, pipe, context):
        mask, transform, x_known, n = self.known, self.transform, self.x_known, self.completions
        with config_scope("task"):
            x, stats = pipe.inpaint(x_known, mask, self.inpainter, n, transform=transform,
                                    batch=context.sampling.batch, generator=context.generator, info=True,
                                    progress=context.progress)
        if not context.main:
            return {}
        metrics = {"nfe_inpaint": stats["nfe"], "inpaint_seconds": stats["seconds"], "inpainter": repr(self.inpainter)}
        if isinstance(pipe.data, GaussianMixture) and transform is None:
            metrics.update(inpainting_report(pipe.data, x_known, mask, x, context.seeds.generator("inpaint_report")))
        unknown = ~Observation(x_known, mask, transform).mask.repeat_interleave(n, 0)
        rep = x_known.to(x).repeat_interleave(n, 0)
        metrics["inpaint_rmse"] = ((x - rep).pow(2)[unknown.to(x.device)].mean().sqrt().item() if transform is None
                                   else (x - rep).pow(2).mean().sqrt().item())
        out = context.out
        np.savez(out / "inpaint.npz", x=x_known.cpu().numpy(), observed=stats["observed"].cpu().numpy(),
                 completions=x.cpu().numpy(), mask=mask.cpu().numpy())
        if context.sampling.plot:
            plot_inpainting(x_known.cpu().numpy(), stats["observed"].cpu().numpy(), x.cpu().numpy(),
                            out / "inpaint.png", pipe.data.value_range, title=repr(self.inpainter))
        return metrics


class Colorize(Inpaint):
    """Inpainting of colour images with their gray level (1, …, 1)ᵀx/√C known: the gray channel of the
    orthogonal gray–chroma view (solvers.observe.gray_chroma)."""

    name = "colorize"

    def __init__(self, num=8, completions=4, method="replace", jumps=1):
        super().__init__(num, completions, method, jumps)

    def observation(self, data):
        if len(data.shape) != 3 or data.shape[0] < 2:
            raise ConfigError(f"task=colorize needs colour images; {data!r} has shape {data.shape}")
        mask = torch.zeros(data.shape, dtype=torch.bool)
        mask[0] = True
        return mask, gray_chroma(data.shape[0])
