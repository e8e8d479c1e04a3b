"""diffusers checkpoints as score models: a pipeline folder (``unet/``, ``scheduler/``, as save_pretrained writes it or
the hub client downloads it) read from disk, never downloaded. diffusers is imported only here, when asked for."""
import hashlib
import json
import math
from pathlib import Path

import torch
from torch import nn

from sde import VESDE, VPSDE, CosineVPSDE
from sde.errors import ConfigError, check_choice

from .external import BETA_SCHEDULES, PREDICTIONS, DiscreteModel, ScoreNetwork, alphas_cumprod

INSTALL = 'pip install ".[diffusers]"'
DISCRETE_SCHEDULERS = ("DDPMScheduler", "DDIMScheduler", "DDIMInverseScheduler", "DPMSolverMultistepScheduler",
                       "EulerDiscreteScheduler", "PNDMScheduler", "DEISMultistepScheduler", "UniPCMultistepScheduler",
                       "HeunDiscreteScheduler", "LMSDiscreteScheduler", "EulerAncestralDiscreteScheduler")
VE_SCHEDULERS = ("ScoreSdeVeScheduler",)


def import_diffusers():
    """The diffusers package, or one line naming the install command. A torchvision that cannot load against this
    torch is hidden from diffusers (which needs it only for models we do not load)."""
    try:
        import diffusers.utils.import_utils as flags
    except ImportError:
        raise ConfigError(f"model=diffusers needs the diffusers package: {INSTALL}") from None
    if flags.is_torchvision_available():
        try:
            __import__("torchvision")
        except (ImportError, RuntimeError):
            flags._torchvision_available = False
    import diffusers

    return diffusers


def read_config(folder, part):
    """The config.json (U-Net) or scheduler_config.json (scheduler) of ``part`` in a pipeline folder."""
    name = "scheduler_config.json" if part == "scheduler" else "config.json"
    path = Path(folder) / part / name
    if not path.is_file():
        raise ConfigError(f"path={str(folder)!r} has no {part}/{name}: give a diffusers pipeline folder with unet/ and "
                          "scheduler/ (as save_pretrained writes it or huggingface-cli download fetches it)", "path")
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise ConfigError(f"{path} is not JSON: {e}", "path") from None


def digest(folder):
    """sha256 over the U-Net's weight files (name and bytes), to record which weights a run used."""
    h = hashlib.sha256()
    files = sorted(p for p in (Path(folder) / "unet").iterdir() if p.suffix in (".safetensors", ".bin"))
    for p in files:
        h.update(p.name.encode())
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


class DiffusersUNet(nn.Module):
    """A diffusers UNet2DModel as net(x, level[, y]): its ``.sample``, the first C channels of a U-Net that also
    predicts a variance (out_channels = 2C). ``null_class``: the U-Net's last class embedding is the null class of
    classifier-free guidance (num_classes = num_class_embeds − 1); else every embedding is a class and the null label
    (an unconditional score) is refused."""

    def __init__(self, unet, null_class=False):
        super().__init__()
        self.unet = unet
        cfg = unet.config
        self.channels = int(cfg.in_channels)
        self.shape = (self.channels, int(cfg.sample_size), int(cfg.sample_size))
        embeds = cfg.num_class_embeds
        self.num_classes = None if embeds is None else int(embeds) - int(bool(null_class))
        self.null_class = bool(null_class)

    def forward(self, x, level, y=None):
        if self.num_classes is not None:
            if y is None or (not self.null_class and (y == self.num_classes).any()):
                raise ConfigError("this diffusers U-Net is class-conditional without a null class: give classes= (or "
                                  "null_class=true if its last class embedding is the unconditional one)", "classes")
        out = self.unet(x, level.to(x.dtype), class_labels=y).sample
        return out[:, :self.channels]


def load_unet(folder, dtype=torch.float32):
    diffusers = import_diffusers()
    read_config(folder, "unet")
    try:
        unet = diffusers.UNet2DModel.from_pretrained(str(Path(folder) / "unet"), torch_dtype=dtype)
    except (OSError, ValueError, EnvironmentError) as e:
        raise ConfigError(f"path={str(folder)!r}: unet/ cannot be loaded as a UNet2DModel: {e}".splitlines()[0],
                          "path") from None
    return unet.eval().requires_grad_(False)


def discrete_table(cfg):
    """ᾱ of a discrete scheduler config, its options checked in one line each."""
    if cfg.get("trained_betas") is None:
        check_choice("beta_schedule", cfg.get("beta_schedule", "linear"), BETA_SCHEDULES)
    return alphas_cumprod(cfg.get("num_train_timesteps", 1000), cfg.get("beta_start", 1e-4),
                          cfg.get("beta_end", 0.02), cfg.get("beta_schedule", "linear"), cfg.get("trained_betas"))


def default_sde(cfg, alphas_cumprod=None):
    """Our process closest to the scheduler's: VE with its σ range; the cosine VP for squaredcos_cap_v2; else VP with
    β(t) = N β_i (the DDPM limit) on [0, T], T = max(1, the time of the model's noisiest level σ_{N−1}), where

        ∫_0^T β = β_min T + ½ (β_max − β_min) T² = −log ᾱ_{N−1},

    so that every level of the model (trailing spacing's first step among them) lies within the process."""
    if cfg.get("_class_name") in VE_SCHEDULERS:
        return VESDE(cfg.get("sigma_min", 0.01), cfg.get("sigma_max", 1348.0))
    if cfg.get("beta_schedule") == "squaredcos_cap_v2":
        return CosineVPSDE()
    n = cfg.get("num_train_timesteps", 1000)
    lo, hi = cfg.get("beta_start", 1e-4) * n, cfg.get("beta_end", 0.02) * n
    if alphas_cumprod is None:
        return VPSDE(lo, hi)
    total = -math.log(float(alphas_cumprod[-1]))
    return VPSDE(lo, hi, T=max(1.0, 2 * total / (lo + math.sqrt(lo**2 + 2 * (hi - lo) * total))))


class DiffusersModel(nn.Module):
    """A diffusers pipeline folder as a score model of ``sde`` (default: default_sde of its scheduler): a discrete
    U-Net (models.external.DiscreteModel on the scheduler's ᾱ table, prediction_type epsilon | v_prediction | sample)
    or an NCSN++ VE U-Net with a ScoreSdeVeScheduler (models.external.ScoreNetwork at σ; a Fourier-embedding U-Net
    divides its output by σ itself). Records ``source`` = {path, digest} (the weights are never copied).

    Classifier-free guidance of a class-conditional U-Net (``null_class``: its last class embedding is ∅): our
    scale w (models.GuidedScore, s_w = (1 + w) s(x, t, y) − w s(x, t, ∅)) gives, since ε̂ = −s · score and the
    output's reading as ε̂ is affine with weights (1 + w) − w = 1 for every prediction type,

        ε̂_w = ε̂_∅ + (1 + w)(ε̂_y − ε̂_∅),   diffusers' guidance_scale w_d = 1 + w   (w = 0: the plain conditional).
    """

    def __init__(self, path, sde=None, null_class=False, data=None):
        super().__init__()
        folder = Path(str(path)).expanduser()
        if not folder.is_dir():
            raise ConfigError(f"path={str(path)!r} is not a folder: give a diffusers pipeline folder with unet/ and "
                              "scheduler/", "path")
        cfg, unet_cfg = read_config(folder, "scheduler"), read_config(folder, "unet")
        kind = cfg.get("_class_name")
        if kind not in DISCRETE_SCHEDULERS + VE_SCHEDULERS:
            raise ConfigError(f"scheduler {kind!r} is not supported: expected one of "
                              f"{', '.join(DISCRETE_SCHEDULERS + VE_SCHEDULERS)}", "path")
        self.scheduler_config = cfg
        if kind in DISCRETE_SCHEDULERS:
            check_choice("prediction_type", cfg.get("prediction_type", "epsilon"), PREDICTIONS)
            abar = discrete_table(cfg)
        if data is not None and tuple(data.shape)[-2:] != (unet_cfg.get("sample_size"),) * 2:
            raise ConfigError(f"the data's shape {tuple(data.shape)} does not fit the U-Net's images of size "
                              f"{unet_cfg.get('sample_size')} with {unet_cfg.get('in_channels')} channels", "path")
        sde = default_sde(cfg, abar if kind in DISCRETE_SCHEDULERS else None) if sde is None else sde
        net = DiffusersUNet(load_unet(folder), null_class)
        self.source = {"path": str(folder.resolve()), "digest": digest(folder)}
        if kind in VE_SCHEDULERS:
            fourier = unet_cfg.get("time_embedding_type") == "fourier"
            self.inner = ScoreNetwork(net, sde, divide_by_sigma=not fourier, shape=net.shape)
        else:
            self.inner = DiscreteModel(net, sde, abar, cfg.get("prediction_type", "epsilon"), shape=net.shape)
        self.sde, self.shape, self.num_classes = sde, net.shape, net.num_classes

    def grid_options(self):
        """What solvers.grids.ModelLevels needs to place steps as the scheduler does: the levels' σ_i, the spacing,
        the offset, the σ of the last step's target, and ``stride`` for a DDIMScheduler (its step from level i goes
        to i − ⌊N/K⌋, DDPMScheduler's and the others' to the next listed level)."""
        cfg, inner = self.scheduler_config, self.inner
        if not isinstance(inner, DiscreteModel):
            raise ConfigError("grid=model needs a discrete model (a DDPM/DDIM scheduler); this one is "
                              f"{cfg.get('_class_name')}: use grid=karras or logsnr", "grid")
        final = 0.0 if cfg.get("set_alpha_to_one", True) else float(inner.sigmas[0])
        return dict(sigmas=inner.sigmas.cpu(), spacing=cfg.get("timestep_spacing", "leading"),
                    steps_offset=cfg.get("steps_offset", 0), final_sigma=final,
                    stride=cfg.get("_class_name") == "DDIMScheduler")

    def forward(self, x, t, y=None):
        return self.inner(x, t, y)

    def predict(self, x, t, y=None):
        return self.inner.predict(x, t, y)

    def denoise(self, x, t, y=None):
        return self.inner.denoise(x, t, y)

    def eps(self, x, t, y=None):
        return self.inner.eps(x, t, y)

    def extra_repr(self):
        return f"path={self.source['path']!r}, scheduler={self.scheduler_config.get('_class_name')!r}"
