"""Checks of the data against the rest of the run, made before training: the checkpoint's data shape, the
data's scale against the prior, and the model fitted to the data (images get the U-Net)."""
import warnings

from omegaconf import OmegaConf

from sde.errors import ConfigError, ConfigWarning

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
