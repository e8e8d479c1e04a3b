"""Checks of the data against the rest of the run, made before training: the checkpoint's data shape, the
data's scale against the prior, the model fitted to the data (images get the U-Net), and the solver against
the process."""
import math
import warnings

import torch
from omegaconf import OmegaConf

from sde.errors import ConfigError, ConfigWarning, config_scope
from solvers.base import Solver, SteppingSolver, check_eps
from solvers.fitting import fallback
from solvers.grids import Grid

from .args import override_keys

IMAGE_MODEL = {  # conf/model/unet.yaml (tests/test_configs.py holds them equal)
    "_target_": "models.ScoreModel", "parameterization": "eps", "conditional": False, "sigma_data": 0.5,
    "net": {"_target_": "models.UNet", "_partial_": True, "channels": 64, "multipliers": [1, 2, 2],
            "num_res_blocks": 2, "attention_resolutions": [16], "dropout": 0.1, "groups": 8,
            "embedding": "sinusoidal"},
}


def check_data_fits(meta, data):
    """The data set must have the event shape and class count the checkpoint's model was trained on."""
    spec = meta.get("data_spec")
    if spec is None:
        return
    for field in ("shape", "num_classes"):
        theirs, mine = spec.get(field), data.spec()[field]
        if theirs != mine:
            raise ConfigError(f"ckpt={meta.get('path', '?')!r} was trained on data with {field} {theirs}; this "
                              f"data set ({data!r}) has {field} {mine}", "ckpt")


def warn_about_scale(data, sde, generator):
    """A data set much wider than the prior (for example raw pixel values under VP) gets a one-line warning."""
    std = float(data.sample(1000, generator).std())
    prior = sde.prior_std()
    if std > 3 * prior:
        warnings.warn(ConfigWarning(f"data has std {std:.3g}, over 3 times the prior's {prior:.3g}: the process does "
                                    "not forget the data by T; standardize the data, or use sde=ve"))


def fit_model_to_data(cfg, data, overrides):
    """Images with the default model (the MLP, which is for vectors) get the U-Net instead, with a one-line note;
    a model the command line names is kept as asked. Training with label dropout makes the model conditional."""
    choice, keys = override_keys(overrides, "model")
    if len(data.shape) == 3 and not choice and not keys and cfg.model.get("net", {}).get("_target_") == "models.MLP":
        cfg.model = OmegaConf.create(IMAGE_MODEL)
        warnings.warn(ConfigWarning(f"data holds images {data.shape}: model=unet chosen (the default MLP is for "
                                    "vectors; give model=mlp to keep it)"))
    if cfg.train.cond_drop and data.num_classes is None:
        raise ConfigError(f"train.cond_drop={cfg.train.cond_drop} needs labelled data; {data!r} has no labels")
    if cfg.train.cond_drop and "conditional" in cfg.model and not cfg.model.conditional:
        cfg.model.conditional = True


SIGMA_SAFE = 1e18
"""The largest s(T) and sigma(T) = s/a trained and sampled in float32: their square still fits (3.4e38)."""


def process_options(cfg, overrides):
    """The process's options as the user names them: those the command line sets (sde.T=1e6), or else all of
    the node's."""
    _, keys = override_keys(overrides, "sde")
    keys = [k for k in keys if not k.startswith("_")] or [k for k in (cfg.get("sde") or {}) if not k.startswith("_")]
    return ", ".join(f"sde.{k}={cfg.sde.get(k)}" for k in keys) or "the process's options"


def check_solver_fits(cfg, overrides, sde, solver):
    """Before training: the process's scale must fit float32 (s(T) <= SIGMA_SAFE), the solver's end time must lie
    in [0, T), and a stepping solver's time grid must exist for this process (a grid in σ = s/a needs a finite
    σ(T)); each refused in one line naming the option to change (solver.eps, sde.T ...)."""
    prior = sde.prior_std()
    if not math.isfinite(prior) or prior > SIGMA_SAFE:
        raise ConfigError(f"the process {sde!r} reaches s(T) = {prior:.3g} ({process_options(cfg, overrides)}): beyond "
                          f"{SIGMA_SAFE:g}, whose square float32 holds, so training would overflow; lower it", "sde")
    if not isinstance(solver, Solver):
        return
    with config_scope("solver"):
        eps = check_eps(sde, solver.eps)
    if not (isinstance(solver, SteppingSolver) and isinstance(solver.grid, Grid)):
        return
    sigma_T = float(torch.exp(-sde.log_snr(torch.tensor(sde.T, dtype=torch.float64))))
    plain = fallback(solver) if solver.grid.needs_fit else solver
    try:
        with config_scope("solver"):
            plain.times(sde, eps)
    except ConfigError as e:
        if math.isfinite(sigma_T):
            raise
        raise ConfigError(f"solver.grid={solver.grid.name} needs a finite sigma(T) = s/a, and the process {sde!r} has "
                          f"sigma(T) = {sigma_T:g} (a(T) underflows to 0): lower {process_options(cfg, overrides)}, or "
                          "choose solver.grid=time", "sde") from e.__cause__
