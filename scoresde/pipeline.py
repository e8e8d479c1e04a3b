"""The Python front door: a trained model (or any score) with its process, ready to sample and to score.

    import scoresde
    pipe = scoresde.load("outputs/2026-11-25/12-00-00")      # a run directory or its checkpoint.pt
    x = pipe.sample(1000)                                      # with the solver the run sampled with
    x = pipe.sample(1000, solver="dpm", steps=20)             # any solver of SOLVERS, with its options
    nll = pipe.nll(x_test)                                     # nats per point; pipe.bits_per_dim(nll)
    bound, stderr = pipe.elbo(x_test)                          # the variational bound on it, and its MC error
    sde, model = pipe                                          # the pieces, for a loop of your own
"""
import inspect
import json
import time
from pathlib import Path

import numpy as np
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from models.guidance import GuidedScore, class_labels
from scoresde.data import DataSpec
from scoresde.inputs import (as_labels, as_points, check_count, check_fits_in_memory, check_flag, check_seed,
                             read_prior_draws)
from sde.errors import CheckpointError, ConfigError, NonFiniteError, config_scope
from solvers import (DDIM, ELBO, AdaptiveSDE, DPMSolver, EulerMaruyama, FitGrid, Heun, Karras, ODELikelihood,
                     PredictorCorrector, ProbabilityFlowODE, SDEDPMSolver, UniformLogSNR, UniformTime)
from solvers.grids import ModelLevels
from solvers.base import Solver
from solvers.fitting import fit_solver
from solvers.inpaint import Inpainter
from solvers.observe import Observation, gray_chroma
from scoresde.training import distributed
from scoresde.training.checkpoint import check_fits, read_checkpoint
from scoresde.training.trainer import hide_progress, sampling_weights


def check_finite(values, what, advice):
    """Raises NonFiniteError naming how many of ``values`` (one row per point) are not finite, and the first."""
    bad = ~torch.isfinite(values.reshape(len(values), -1)).all(1)
    if bad.any():
        first = int(bad.nonzero()[0, 0])
        raise NonFiniteError(f"{int(bad.sum())} of {len(values)} {what} are not finite (the first is number {first}); "
                             f"{advice}")
    return values


def resolve_device(name):
    """'auto' → CUDA when present, else CPU; otherwise any torch device string that exists here."""
    if isinstance(name, torch.device):
        return name
    name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device={name!r} is unknown: use auto, cpu, cuda or cuda:N", "device") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} was asked for but CUDA is not available here: use device=auto or cpu",
                          "device")
    if device.type == "meta":
        raise ConfigError(f"device={name!r} holds no values: use auto, cpu, cuda or cuda:N", "device")
    if device.type not in ("cpu", "cuda"):
        try:
            torch.empty(1, device=device)
        except (RuntimeError, AssertionError, AttributeError) as e:
            raise ConfigError(f"device={name!r} is not available here ({type(e).__name__}): use device=auto or cpu",
                              "device") from None
    return device


SOLVERS = {
    "em": (EulerMaruyama, dict(steps=200, eps=None, denoise=False, grid=UniformTime())),
    "pc": (PredictorCorrector, dict(steps=1000, predictor="reverse_diffusion", corrector="langevin", snr=0.1,
                                    step_rule="kernel", corrector_steps=1, eps=None, denoise=False,
                                    grid=UniformTime())),
    "ode": (ProbabilityFlowODE, dict(method="dopri5", rtol=1e-5, atol=1e-5, steps=100, grid="time", eps=None,
                                     denoise=False)),
    "adaptive": (AdaptiveSDE, dict(rtol=0.01, atol=0.002, h_init=0.01, safety=0.9, exponent=0.9, rejection="bridge",
                                   memory=8, max_iters=10000, eps=None, denoise=False)),
    "ddim": (DDIM, dict(steps=400, grid=Karras(7.0), eps=None, denoise=False, clip=None)),
    "heun": (Heun, dict(steps=80, grid=Karras(7.0), eps=None, denoise=False)),
    "dpm": (DPMSolver, dict(steps=60, order=3, grid=UniformLogSNR(), lower_order_final=True, eps=None,
                            denoise=False)),
    "sde_dpm": (SDEDPMSolver, dict(steps=100, multistep=3, eta=1.0, grid=UniformLogSNR(), eps=None, denoise=False)),
    "fast": (DPMSolver, dict(steps=10, order=3, grid=FitGrid(pilots=1000, teacher_steps=200, iterations=150, lr=0.05,
                                                               seed=0), lower_order_final=True, eps=None,
                             denoise=False)),
}
"""The solvers by short name: class and default options (those of conf/solver/NAME.yaml)."""


def solver_from_name(name, **options):
    """The solver SOLVERS names, with ``options`` over its defaults."""
    if name not in SOLVERS:
        raise ConfigError(f"solver={name!r} is unknown: choose one of {', '.join(sorted(SOLVERS))}", "solver")
    cls, defaults = SOLVERS[name]
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise ConfigError(f"{unknown[0]}={options[unknown[0]]!r} is not an option of solver={name!r}: its options "
                          f"are {', '.join(defaults)}", unknown[0])
    return cls(**{**defaults, **options})


def as_solver(solver, options):
    """A Solver object as given (no ``options``), or the one SOLVERS names with ``options`` over its defaults."""
    if isinstance(solver, str):
        return solver_from_name(solver, **options)
    if not isinstance(solver, (Solver, Inpainter)):
        raise ConfigError(f"solver={solver!r} is not a solver: give a name ({', '.join(sorted(SOLVERS))}) or a "
                          "solver object", "solver")
    if options:
        name = next(iter(options))
        raise ConfigError(f"{name}={options[name]!r} is an option of a solver named by a string; solver={solver!r} "
                          "is built already: set it there", name)
    return solver


def estimator(cls, given, options, name):
    """``given`` (an instance of cls) as it is, or cls(**options), an unknown option named in one line."""
    if given is not None:
        if options:
            key = next(iter(options))
            raise ConfigError(f"{key}={options[key]!r} and {name}= were both given: set it on {name}", key)
        return given
    params = inspect.signature(cls).parameters
    unknown = [k for k in options if k not in params]
    if unknown:
        raise ConfigError(f"{unknown[0]}={options[unknown[0]]!r} is not an option of {cls.__name__}: its options are "
                          f"{', '.join(params)}", unknown[0])
    return cls(**options)


def model_dtype(model):
    """The floating point dtype of a network's weights; None for a score without weights (the oracle)."""
    params = model.parameters() if isinstance(model, torch.nn.Module) else ()
    return next((p.dtype for p in params if p.is_floating_point()), None)


def instantiate_config(key, node, **kwargs):
    """hydra.utils.instantiate, with a ConfigError raised inside named by its config key (``key.name``)."""
    with config_scope(key):
        try:
            return instantiate(node, **kwargs)
        except InstantiationException as e:
            if isinstance(e.__cause__, ConfigError):
                raise e.__cause__ from None
            raise


class Pipeline:
    """A process ``sde``, a score ``model`` (x, t) → ∇log p_t(x), and the ``data`` it models (a DataSet, or
    the DataSpec a checkpoint keeps: event shape, classes, quantization), on ``device``.

    Unpacks as ``sde, model = pipe``. ``step`` and ``config`` say where a loaded model came from.

    Under torchrun (scoresde.training.distributed) ``sample``, ``inpaint``, ``nll`` and ``elbo`` are collective: every
    process does its contiguous share of the points with a generator of its own (drawn from the one given, see
    distributed.rank_generator) and every process returns all of them, gathered in rank order.
    """

    def __init__(self, sde, model, data, device="cpu", step=None, config=None):
        self.sde, self.model, self.data = sde, model, data
        self.device = resolve_device(device)
        self.step, self.config = step, config or {}

    def __iter__(self):
        return iter((self.sde, self.model))

    def __repr__(self):
        return f"Pipeline({self.sde!r}, {type(self.model).__name__}, {self.data!r}, device={self.device})"

    def solver(self, solver=None, **options):
        """The Solver ``solver`` names (see as_solver); None: the one the loaded run sampled with (its
        checkpoint's solver config, ``options`` over it), or DPMSolver's defaults (dpm) without one."""
        recorded = self.config.get("solver")
        options = self.with_model_grid(options)
        if solver is not None or not recorded:
            return as_solver("dpm" if solver is None else solver, options)
        node = OmegaConf.create(recorded)
        if node.get("grid") == "model" and "grid" not in options:
            options["grid"] = self.model_grid()
        unknown = sorted(set(options) - set(node.keys()) - {"_target_"})
        if unknown:
            keys = ", ".join(k for k in node.keys() if k != "_target_")
            raise ConfigError(f"{unknown[0]}={options[unknown[0]]!r} is not an option of the solver this model was "
                              f"trained to sample with ({node._target_}): its options are {keys}", unknown[0])
        return instantiate_config("solver", node, **options)

    def with_model_grid(self, options):
        """``options`` with grid="model" replaced by model_grid()."""
        if isinstance(options.get("grid"), str) and options["grid"] == "model":
            return {**options, "grid": self.model_grid()}
        return options

    def model_grid(self):
        """grid=model: the steps at a pretrained discrete model's own training timesteps, placed as its scheduler
        places them (solvers.grids.ModelLevels on the model's grid_options())."""
        options = getattr(self.model, "grid_options", None)
        if options is None:
            raise ConfigError(f"grid=model needs a pretrained discrete model (scoresde.from_diffusers); "
                              f"{type(self.model).__name__} has no training timesteps", "grid")
        return ModelLevels(**options())

    def sample(self, num, solver=None, seed=0, batch=10000, progress=False, info=False, generator=None,
               classes=None, guidance=0.0, x_T=None, **options):
        """``num`` samples in data space, drawn from the prior and carried to t = eps by ``solver`` (a Solver, a
        name from conf/solver/ with ``options`` over its defaults, or None: the loaded run's own, see
        Pipeline.solver), ``batch`` at a time, with randomness from
        ``generator`` (default: one seeded with ``seed``). A conditional model samples ``classes`` (a class, a
        list, or 'all' in balance; None: unconditional) with classifier-free guidance of scale ``guidance``
        (models.GuidedScore). A solver whose grid is fitted to the model (solvers.fitting.FitGrid, TuneGrid) is
        fitted first, once for this model (solvers.fitting.fit_solver keeps the fit), on the unconditional score
        model(x, t) (p_t: the same for every class list, guidance scale and batch size). With
        ``info`` also {"nfe": network passes per sample, "seconds": wall time of the sampling, "labels": the class
        of each sample or None}, and "grid_fit": the fit's record when this call fitted the grid. ``x_T`` (num, *shape):
        the prior draws to start from instead of drawing them (k-diffusion's sample(model, x, sigmas) habit)."""
        num, batch, seed = check_count("num", num), check_count("batch", batch), check_seed("seed", seed)
        progress, info = check_flag("progress", progress, ("auto",)), check_flag("info", info)
        solver = self.solver(solver, **options)
        check_fits_in_memory(num, self.data.shape, self.device)
        labels = class_labels(classes, num, getattr(self.model, "num_classes", None))
        guided = GuidedScore(self.model, labels, guidance)
        solver, fit = fit_solver(solver, self.sde, self.model, self.data.shape, self.device)

        given = None if x_T is None else self._prior_draws(x_T, num)

        def setup(lo, hi, gen):
            x_T = (self.sde.prior_sample((hi - lo, *self.data.shape), gen, self.device) if given is None
                   else given[lo:hi])

            def draw(idx):
                score = self.model if labels is None else GuidedScore(self.model, labels[idx.cpu()], guided.scale)
                return solver(self.sde, score, x_T[idx - lo], gen)
            return draw, torch.arange(lo, hi, device=self.device).split(batch), None

        x, nfe, seconds = self._map(num, seed, generator, setup, progress, "sample", solver.planned_nfe(self.sde))
        check_finite(x, "samples", f"the model or the solver diverged ({solver!r})")
        if not info:
            return x
        stats = {"nfe": nfe, "seconds": seconds, "labels": labels}
        if fit is not None and not fit["reused"]:
            stats["grid_fit"] = fit
        return x, stats

    def _prior_draws(self, x_T, num):
        """Given prior draws: a tensor or array (or a .npy path: inputs.read_prior_draws) of shape (num, *shape),
        on this device."""
        if isinstance(x_T, (str, Path)):
            x_T = read_prior_draws(x_T, (num, *self.data.shape))
        x_T = torch.as_tensor(np.asarray(x_T) if not torch.is_tensor(x_T) else x_T)
        if tuple(x_T.shape) != (num, *self.data.shape) or not x_T.is_floating_point():
            raise ConfigError(f"x_T has shape {tuple(x_T.shape)} ({x_T.dtype}): expected floats of shape "
                              f"{(num, *self.data.shape)}, one prior draw per sample", "x_T")
        return x_T.to(self.device, model_dtype(self.model) or torch.float32)

    def inpaint(self, x, mask, solver="em", completions=1, method="replace", jumps=1, transform=None, seed=0,
                batch=10000, progress=False, info=False, generator=None, **options):
        """``completions`` completions of each point of x (N, *shape) whose known part is given by ``mask`` (True =
        known; of the event shape or x's shape) in the view M x of an orthogonal channel ``transform`` M (None:
        x itself), sampled by ``solver`` (a stepping solver, or its name with ``options``) with the known part
        replaced after every step (``method`` 'replace', or 'resample' with ``jumps`` tries per step: see
        solvers.Inpainter); a grid recipe is fitted first, as for ``sample``. Returns (N · completions, *shape),
        point by point (with ``info`` also {"nfe", "seconds", "observed": what was seen of each point, in data
        space})."""
        x = as_points(x, self.data.shape, self.device, model_dtype(self.model), value_range=self.data.value_range)
        num, batch = check_count("completions", completions) * len(x), check_count("batch", batch)
        seed, progress, info = check_seed("seed", seed), check_flag("progress", progress, ("auto",)), check_flag("info", info)
        options = self.with_model_grid(options)
        solver = as_solver(solver, options)
        inpainter = solver if isinstance(solver, Inpainter) else Inpainter(solver, method, jumps)
        fitted, _ = fit_solver(inpainter.solver, self.sde, self.model, self.data.shape, self.device)
        if fitted is not inpainter.solver:
            inpainter = Inpainter(fitted, inpainter.method, inpainter.jumps)
        observation = Observation(x, mask, transform)
        whole = observation.select(torch.arange(len(x), device=self.device).repeat_interleave(num // len(x)))

        def setup(lo, hi, gen):
            x_T = self.sde.prior_sample((hi - lo, *self.data.shape), gen, self.device)

            def draw(idx):
                return inpainter(self.sde, self.model, x_T[idx - lo], whole.select(idx), gen)
            return draw, torch.arange(lo, hi, device=self.device).split(batch), None

        out, nfe, seconds = self._map(num, seed, generator, setup, progress, "inpaint",
                                      inpainter.planned_nfe(self.sde))
        check_finite(out, "completions", f"the model or the solver diverged ({inpainter!r})")
        return (out, {"nfe": nfe, "seconds": seconds, "observed": observation.observed()}) if info else out

    def colorize(self, x, **options):
        """Colour versions of the images x (N, C, H, W) that keep their gray level (1, …, 1)ᵀx/√C: inpainting in
        the orthogonal gray–chroma view (solvers.observe.gray_chroma) with the gray channel known."""
        c = x.shape[1] if x.ndim == 4 else 0
        if c < 2:
            raise ConfigError(f"colorization needs images with 2 or more channels; x has shape {tuple(x.shape)}", "x")
        mask = torch.zeros(x.shape[1:], dtype=torch.bool)
        mask[0] = True
        return self.inpaint(x, mask, transform=gray_chroma(c), **options)

    def nll(self, x, seed=0, batch=1000, dequantize=True, likelihood=None, progress=False, info=False,
            generator=None, dequant_draws=1, labels=None, **options):
        """−log p(x) in nats per point through the probability-flow ODE (``likelihood``: an ODELikelihood, else
        one built from ``options``, for example method="rk4", steps=12). Quantized data (8-bit images) are
        dequantized first, uniformly within their bins, unless ``dequantize=False``; with ``dequant_draws`` K > 1
        each point is dequantized K times and the K NLLs give the importance-weighted bound
        −log (1/K Σ_k p(x + u_k)) (DataSet.importance_weighted_nll), tighter as K grows. With ``info`` also
        {"nfe", "seconds", "x": the points evaluated (dequantized for K = 1, as given for K > 1)}. With ``labels``
        (one class per point) a conditional model gives −log p(x | y)."""
        likelihood = estimator(ODELikelihood, likelihood, options, "likelihood")
        x_in, batch, seed, dequantize, progress, info = self._checked(x, batch, seed, dequantize, progress, info)
        labels = as_labels(labels, len(x_in), getattr(self.model, "num_classes", None))
        points = {}

        def setup(lo, hi, gen):
            x, draws = self._dequantized(x_in[lo:hi], dequantize, dequant_draws, gen)
            y = None if labels is None else labels[lo:hi].repeat(draws)
            points.update(x=x, draws=draws)

            def solve(idx):
                score = self.model if y is None else GuidedScore(self.model, y[idx.cpu()])
                return likelihood(self.sde, score, x[idx], gen)
            return solve, torch.arange(len(x), device=x.device).split(batch), draws

        nll, nfe, seconds = self._map(len(x_in), seed, generator, setup, progress, "likelihood")
        draws = points["draws"]
        x = x_in if draws > 1 else distributed.gather_cat(points["x"])
        nll = check_finite(nll.double().cpu(), "likelihoods", "the model or the ODE solver diverged")
        nll = self.data.importance_weighted_nll(nll.T) if draws > 1 else nll[:, 0]
        return (nll, {"nfe": nfe, "seconds": seconds, "x": x}) if info else nll

    def elbo(self, x, seed=0, batch=1000, dequantize=True, elbo=None, progress=False, info=False, generator=None,
             dequant_draws=1, **options):
        """The continuous-time variational bound on −log p(x) (solvers.ELBO: Monte Carlo over t with importance
        sampling; ``elbo``: an ELBO, else one built from ``options``, for example draws=1000), in nats per point,
        and its per-point Monte Carlo standard error: ``bound, stderr = pipe.elbo(x)`` (with ``info`` also a dict
        {"nfe", "seconds", "x"}). Dequantization as for ``nll``; with ``dequant_draws`` K > 1 the K bounds B_k
        combine into −log (1/K Σ_k exp(−B_k)), the standard error by the delta method."""
        elbo = estimator(ELBO, elbo, options, "elbo")
        x_in, batch, seed, dequantize, progress, info = self._checked(x, batch, seed, dequantize, progress, info)
        points = {}

        def setup(lo, hi, gen):
            x, draws = self._dequantized(x_in[lo:hi], dequantize, dequant_draws, gen)
            points.update(x=x, draws=draws)

            def estimate(chunk):
                bound, stderr, nfe = elbo.estimate(self.sde, self.model, chunk, gen)
                return torch.stack([bound, stderr], 1), nfe
            return estimate, x.split(batch), draws

        both, nfe, seconds = self._map(len(x_in), seed, generator, setup, progress, "elbo")
        draws = points["draws"]
        x = x_in if draws > 1 else distributed.gather_cat(points["x"])
        bound, stderr = check_finite(both.double().cpu(), "bounds", "the model diverged").permute(2, 1, 0)
        if draws > 1:
            weights = torch.softmax(-bound, 0)
            bound, stderr = self.data.importance_weighted_nll(bound), (weights * stderr).norm(dim=0)
        else:
            bound, stderr = bound[0], stderr[0]
        return (bound, stderr, {"nfe": nfe, "seconds": seconds, "x": x}) if info else (bound, stderr)

    def _map(self, num, seed, generator, setup, progress, what, planned=None):
        """The skeleton of sample, inpaint, nll and elbo: this process's share [lo, hi) of ``num`` points and its
        own generator (from ``generator``, else one seeded with ``seed``: _share); ``setup(lo, hi, gen) -> (fn,
        chunks, draws)`` prepares the share, ``fn(chunk) -> (out, nfe)`` runs on each chunk (with a progress bar
        of the model's evaluations, out of ``planned`` per chunk where the solver knows them), and the outputs of
        every process are gathered in rank order (by point, for ``draws`` stacked draws per point: _gathered).
        Returns (out, mean NFE, seconds of the chunks' work)."""
        lo, hi, gen = _share(num, generator or torch.Generator(self.device).manual_seed(int(seed)))
        fn, chunks, draws = setup(lo, hi, gen)
        with Clock(self.device) as clock:
            out, nfe = _gathered(*_in_batches(fn, self.model, chunks, progress, what, planned), draws)
        return out, nfe, clock.seconds

    def _checked(self, x, batch, seed, dequantize, progress, info):
        """The points to score (inputs.as_points: on this device, in the network's dtype, in the data's range) and
        the checked batch, seed and flags."""
        return (as_points(x, self.data.shape, self.device, model_dtype(self.model), value_range=self.data.value_range),
                check_count("batch", batch), check_seed("seed", seed), check_flag("dequantize", dequantize),
                check_flag("progress", progress, ("auto",)), check_flag("info", info))

    def _dequantized(self, x, dequantize, draws, generator):
        """The points to evaluate: x, or its dequantization (``draws`` of them stacked, for quantized data), and
        the number of draws."""
        if not dequantize or self.data.levels is None:
            return x, 1
        draws = check_count("dequant_draws", draws)
        if draws == 1:
            return self.data.dequantize(x, generator), 1
        return self.data.dequantize_draws(x, draws, generator).reshape(draws * len(x), *x.shape[1:]), draws

    def bits_per_dim(self, nll):
        """The mean NLL (nats per point) in bits per dimension, on the 8-bit scale for 8-bit data."""
        return self.data.bits_per_dim(float(torch.as_tensor(nll, dtype=torch.float64).mean()))


def load(path, device="auto", ema=True, trusted=False):
    """A Pipeline from a run directory (its checkpoint.pt) or a checkpoint file: the process, the network with
    its EMA weights (``ema=False``: the raw weights) on ``device``, and the data's description. The checkpoint
    builds only the framework's own parts (read_checkpoint); ``trusted=True``, or a collection of ``_target_``
    paths, lets it name other classes, such as a user's own SDE."""
    ema, device = check_flag("ema", ema), resolve_device(device)
    pretrained = pretrained_run(path, device)
    if pretrained is not None:
        return pretrained
    state = read_checkpoint(path, trusted)
    meta = state.get("meta") or {}
    if "sde" not in meta or "model" not in meta or "data_spec" not in meta:
        raise CheckpointError(f"ckpt={state['path']!r} does not record its sde, model and data shape (it was "
                              "written before checkpoints kept their config): sample it with run.py, giving the "
                              "sde= and model= it was trained with", "ckpt")
    spec = DataSpec(**meta["data_spec"])
    sde = instantiate_config("sde", OmegaConf.create(meta["sde"]))
    model = instantiate_config("model", OmegaConf.create(meta["model"]), sde=sde, data=spec)
    check_fits(state, model)
    weights, step = sampling_weights(state, ema)
    model.load_state_dict(weights)
    return Pipeline(sde, model.to(device).eval(), spec, device, step, meta)


def from_diffusers(path, sde=None, device="auto", null_class=False):
    """A Pipeline from a local diffusers pipeline folder (``unet/`` and ``scheduler/``, as save_pretrained writes it or
    the hub client downloads it; nothing is downloaded): the U-Net as a score model of ``sde`` (default: the process
    of its scheduler, models.pretrained.default_sde), images of its size in [−1, 1] with 256 levels. ``null_class``:
    the U-Net's last class embedding is the null class of classifier-free guidance."""
    from models.pretrained import DiffusersModel

    device = resolve_device(device)
    model = DiffusersModel(path, sde, null_class)
    spec = DataSpec(model.shape, model.num_classes, levels=256, value_range=(-1.0, 1.0))
    config = {"model": {"_target_": "models.pretrained.DiffusersModel", "path": model.source["path"],
                        "null_class": bool(null_class)}, "source": model.source}
    return Pipeline(model.sde, model.to(device), spec, device, config=config)


def pretrained_run(path, device):
    """The Pipeline of a run directory that sampled a pretrained model (no checkpoint.pt; its metrics.json records the
    weights' path and digest, its .hydra/config.yaml the process): the weights read again from where they are, their
    digest checked; None for any other path."""
    run = Path(str(path)).expanduser()
    metrics, config = run / "metrics.json", run / ".hydra" / "config.yaml"
    if not run.is_dir() or (run / "checkpoint.pt").exists() or not metrics.is_file() or not config.is_file():
        return None
    weights = json.loads(metrics.read_text()).get("weights")
    if not weights:
        return None
    cfg = OmegaConf.load(config)
    sde = instantiate_config("sde", cfg.sde)
    pipe = from_diffusers(weights["path"], sde, device, bool(cfg.model.get("null_class", False)))
    if pipe.config["source"]["digest"] != weights["digest"]:
        raise CheckpointError(f"the weights at {weights['path']!r} are not those run {str(run)!r} used (sha256 "
                              f"{pipe.config['source']['digest'][:12]}… instead of {weights['digest'][:12]}…)", "path")
    pipe.config["solver"] = OmegaConf.to_container(cfg.solver, resolve=True)
    return pipe


def _share(num, generator):
    """This process's contiguous share [lo, hi) of num points and its own generator drawn from ``generator``
    (distributed.shard_range, rank_generator); (0, num, generator) in one process."""
    world = distributed.world_size()
    if num < world:
        raise ConfigError(f"num={num} is fewer than the {world} processes: each needs at least one point", "num")
    lo, hi = distributed.shard_range(num)
    return lo, hi, distributed.rank_generator(generator)


def _gathered(out, nfe, draws=None):
    """Every process's ``out`` in rank order and the mean of their NFEs. With ``draws`` K, an output of K draws
    per point stacked draw by draw, (K · n, ...), is gathered point by point as (N, K, ...)."""
    if draws is not None:
        out = out.reshape(draws, -1, *out.shape[1:]).transpose(0, 1)
    return distributed.gather_cat(out), float(np.mean(distributed.gather_objects(nfe)))


def _in_batches(fn, model, chunks, progress, what, planned=None):
    """fn(chunk) over chunks, outputs concatenated, NFE averaged over the calls; with ``progress`` a bar counts
    the model's evaluations (the work of every solver, adaptive ones included) and the points done, out of
    ``planned`` evaluations per chunk (its total and the time left) where they are known."""
    outs, nfes = [], []
    total = None if planned is None else planned * len(chunks)
    with tqdm(desc=what, unit=" evals", total=total, disable=hide_progress(progress), dynamic_ncols=True) as bar:
        def count(*_):
            bar.update(1)

        hook = model.register_forward_pre_hook(count) if not bar.disable and isinstance(model, torch.nn.Module) \
            else None
        try:
            for chunk in chunks:
                out, nfe = fn(chunk)
                outs.append(out)
                nfes.append(nfe)
                bar.set_postfix(points=f"{sum(len(o) for o in outs)}/{sum(len(c) for c in chunks)}")
        finally:
            if hook is not None:
                hook.remove()
    return torch.cat(outs), float(np.mean(nfes))


class Clock:
    """Wall time of a block, with CUDA work finished before the clock stops."""

    def __init__(self, device):
        self.device, self.seconds = device, None

    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds = time.perf_counter() - self.start
