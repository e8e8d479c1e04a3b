"""The composed config fitted to the checkpoint a run resumes or samples from (ckpt=)."""
import contextlib
import warnings

from omegaconf import OmegaConf

from scoresde.training.checkpoint import read_checkpoint
from scoresde.training.state import checkpoint_step
from sde.errors import ConfigError, ConfigWarning, invalid

from .args import flatten, override_keys
from .values import check_config

CHECKPOINT_GROUPS = ("sde", "model", "data")
SAMPLING_GROUPS = ("solver", "sample")  # how the run that trained it sampled: the default of a run from it


def reconcile(cfg, meta, overrides, override=False):
    """Fit the composed config to a checkpoint's ``meta`` (the sde, model and data configs it was trained
    with, and its solver and sample settings, which serve only a run of the task they served). A group the
    command line leaves alone takes the checkpoint's config; keys the command line sets inside it are set on top
    of the checkpoint's; a group the command line replaces (``sde=ve``, ``solver=em``) is its own. For sde and
    model, unless ``override``, a value that differs from the checkpoint's ends in a ConfigError naming both.
    Returns the dotted keys (``solver.steps``) whose values came from the checkpoint."""
    path, supplied = meta.get("path", "the checkpoint"), set()
    same_task = meta.get("task") in (None, cfg.task.get("_target_"))  # None: a checkpoint from before it was kept
    for group in CHECKPOINT_GROUPS + SAMPLING_GROUPS:
        theirs = meta.get(group)
        serves = same_task or (group == "solver" and meta.get("distill") is not None)  # a student's own sampler
        if theirs is None or (group in SAMPLING_GROUPS and not serves):
            continue
        choice, keys = override_keys(overrides, group)
        if not choice:
            supplied |= {f"{group}.{k}" for k in flatten(theirs) if k not in keys}
            merged = OmegaConf.create(theirs)
            for key in keys:
                value = OmegaConf.select(cfg[group], key, default=_ABSENT)
                if value is _ABSENT:
                    parent, _, leaf = key.rpartition(".")
                    node = OmegaConf.select(merged, parent) if parent else merged
                    if node is not None and leaf in node:
                        del node[leaf]
                else:
                    OmegaConf.update(merged, key, value, force_add=True)
            cfg[group] = merged
        if override or group not in ("sde", "model"):
            continue
        new, old = flatten(OmegaConf.to_container(cfg[group], resolve=True)), flatten(theirs)
        for k in sorted(set(new) | set(old)):
            if new.get(k) != old.get(k):
                raise ConfigError(f"ckpt={path!r} was trained with {group}.{k}={old.get(k)!r} but this run has "
                                  f"{group}.{k}={new.get(k)!r}: leave {group} out to use the checkpoint's own, or "
                                  f"add ckpt_override=true", "ckpt")
    return supplied


_ABSENT = object()


def checkpoint_meta(cfg, overrides):
    """What ckpt= says about its model (sde, model and data configs, data shape, how it sampled) and its
    ``step``, with ``cfg`` fitted to it by ``reconcile`` under the command line's ``overrides``; None without
    ckpt=."""
    if not cfg.ckpt:
        return None
    if cfg.ckpt_trusted not in (True, False):
        raise invalid("ckpt_trusted", cfg.ckpt_trusted, "true or false")
    state = read_checkpoint(cfg.ckpt, trusted=cfg.ckpt_trusted)
    meta = dict(state.get("meta") or {}, path=state["path"], step=checkpoint_step(state))
    reference = cfg.copy()
    meta["supplied"] = reconcile(cfg, meta, overrides, override=cfg.ckpt_override)
    with held_by(meta, every=True):
        check_config(cfg, reference)
    return meta


@contextlib.contextmanager
def held_by(meta, every=False):
    """A ConfigError raised in the block about a value that the checkpoint ``meta`` supplied (one of
    ``meta["supplied"]``, as reconcile fitted the config to it; ``every``: about any value) says which
    checkpoint holds it; without ``meta`` the block runs as it is."""
    try:
        yield
    except ConfigError as e:
        if meta is None or not (every or set(meta.get("supplied", ())) & set(e.keys)) or "ckpt=" in str(e):
            raise
        raise type(e)(f"{e} (a value ckpt={meta['path']!r} holds)", e.keys) from None


def check_steps(meta, steps):
    """``train.steps`` against the step the checkpoint ``meta`` has reached, for a run that trains (steps > 0):
    below it a ConfigError (nothing would be trained), at it a one-line warning that nothing is."""
    if steps < meta["step"]:
        raise ConfigError(f"train.steps={steps} is below the step {meta['step']} that ckpt={meta['path']!r} has "
                          f"reached: give train.steps above {meta['step']} to train on, or train.steps=0 to sample "
                          "it as it is", "train.steps")
    if steps == meta["step"]:
        warnings.warn(ConfigWarning(f"ckpt={meta['path']!r} has reached train.steps={steps} already: nothing is "
                                    "trained, it is sampled as it is", "train.steps"), stacklevel=2)
