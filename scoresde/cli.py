"""Command-line plumbing for run.py: devices, building parts from config, checkpoints against the composed
config, and one-line errors."""
import contextlib
import difflib
import hashlib
import json
import inspect
import os
import re
import shutil
import sys
import time
import traceback
import warnings
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from hydra.utils import get_class, get_method
import torch
from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue

from sde.errors import ConfigError, ConfigWarning, NonFiniteError, TrainingError, check_int
from scoresde.training.distributed import launched

from .pipeline import instantiate_config

GROUPS = ("sde", "solver", "model", "data", "mask", "experiment")
CHECKPOINT_GROUPS = ("sde", "model", "data")


def help_text(conf_dir):
    """``python run.py --help``: each group's options with their first comment line, then the run's own options
    as config.yaml states them, comments included."""
    conf_dir = Path(conf_dir)
    lines = ["usage: python run.py [GROUP=OPTION ...] [KEY=VALUE ...]   (-m for a sweep: solver=em,pc,ode)", ""]
    for group in GROUPS:
        note = {"experiment": "(presets)", "mask": "(task=inpaint)"}.get(group,
                                                                         f"(or {group}._target_=your_module.YourClass)")
        lines.append(f"{group}=   {note}")
        for path in sorted((conf_dir / group).glob("*.yaml")):
            first = next((ln.lstrip("# ").strip() for ln in path.read_text().splitlines() if ln.startswith("#") and "@package" not in ln), "")
            lines.append(f"  {path.stem:<16s}{first}")
        lines.append("")
    lines.append("run options (conf/config.yaml; set any with KEY=VALUE, e.g. train.steps=500):")
    text = (conf_dir / "config.yaml").read_text().split("\nhydra:")[0]
    lines += [f"  {ln}" for ln in text.splitlines() if ln.strip() and not ln.startswith(("defaults", "  - "))]
    return "\n".join(lines)


def check_override_keys(argv, conf_dir):
    """Fail in one line, naming the nearest valid key, on ``key=value`` when the composed config has no such key
    (Hydra's own message is several lines and its ``+key`` hint leads to a bad argument)."""
    from hydra import compose, initialize_config_dir

    pairs = [re.fullmatch(r"(\+?)([\w.]+)=(.*)", arg) for arg in argv]
    pairs = [m for m in pairs if m and not m.group(2).startswith("hydra.")]
    choices = [f"{m.group(2)}={m.group(3).split(',')[0]}" for m in pairs if m.group(2) in GROUPS and not m.group(1)]
    with initialize_config_dir(str(Path(conf_dir).resolve()), version_base="1.3"):
        cfg = compose("config", overrides=choices)
    known = [k for k in flatten(OmegaConf.to_container(cfg, resolve=False)) if not k.startswith("hydra")]
    known += [k.rpartition(".")[0] for k in known if "." in k]
    for m in pairs:
        plus, key = m.group(1), m.group(2)
        if key in GROUPS or _has_key(cfg, key):
            continue
        if plus and "." in key and "_target_" in (OmegaConf.select(cfg, key.rpartition(".")[0]) or {}):
            continue
        near = difflib.get_close_matches(key, sorted(set(known)), n=1, cutoff=0.6)
        hint = f"did you mean {near[0]}? " if near else ""
        raise ConfigError(f"{plus}{key} is not an option: {hint}(python run.py --help lists them)", key)


def _has_key(cfg, key):
    """Whether the dotted key exists in cfg (a ??? value counts)."""
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent, default=None) if parent else cfg
    return OmegaConf.is_dict(node) and leaf in node.keys()


def check_group_choices(argv, conf_dir):
    """Fail in one line on ``group=name`` when conf/<group>/<name>.yaml does not exist."""
    for arg in argv:
        m = re.fullmatch(r"[+~]?(\w+)=(.*)", arg)
        if not m or m.group(1) not in GROUPS:
            continue
        group, values = m.groups()
        options = sorted(p.stem for p in (Path(conf_dir) / group).glob("*.yaml"))
        for value in values.split(","):
            if value and value not in options:
                own = "" if group == "experiment" else f" (or set {group}._target_=your_module.YourClass)"
                raise ConfigError(f"{group}={value!r} is unknown: choose one of {', '.join(options)}{own}", group)


def choose_threads(setting):
    """torch's CPU threads: an int, or 'auto' = the cores not busy now (cores − busy_cores(), at least 1; under
    torchrun the cores shared equally by the processes on this machine).
    PyTorch's default of every core made training 14–28× slower on a 2-core machine with one other job
    (benchmarks/results/threads.md)."""
    cores = os.cpu_count() or 1
    if setting == "auto" and launched():
        n = max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    elif setting == "auto":
        n = max(1, min(cores, int(cores - busy_cores() + 0.5)))
    else:
        n = check_int("threads", setting)
    torch.set_num_threads(n)
    return n


def busy_cores(interval=0.25):
    """How many cores other work keeps busy: from /proc/stat, the share of CPU time not idle (user, nice,
    system, interrupt and steal time) over ``interval`` seconds, times the core count. Work at a lower priority
    counts too: torch's threads wait for each other at every operation, so one of them preempted even briefly
    stalls them all (the digits preset took 755 s instead of 341 s on 2 threads beside nice-19 jobs). The
    1-minute load average, which still counts work that has ended, is the fallback where /proc/stat is missing."""
    def sample():
        with open("/proc/stat") as fh:
            fields = [int(v) for v in fh.readline().split()[1:]]
        user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
        return user + nice + system + irq + softirq + steal, sum(fields[:8])

    try:
        busy0, total0 = sample()
        time.sleep(interval)
        busy1, total1 = sample()
        return (os.cpu_count() or 1) * (busy1 - busy0) / max(total1 - total0, 1)
    except (OSError, ValueError):
        try:
            return os.getloadavg()[0]
        except (AttributeError, OSError):
            return 0.0


def cached_training(cfg, keys=("sde", "model", "data", "train", "loss", "seed", "ckpt")):
    """In a Hydra sweep, where a model trained with exactly this config is kept (sweep dir/.trained/HASH), so
    that a sweep over sampling or evaluation options trains once; None outside a sweep."""
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    spec = json.dumps({k: OmegaConf.to_container(cfg, resolve=True).get(k) for k in keys}, sort_keys=True)
    return Path(hydra_cfg.sweep.dir) / ".trained" / hashlib.sha1(spec.encode()).hexdigest()[:16] / "checkpoint.pt"


def keep_for_sweep(checkpoint, cached):
    """Copy a run's checkpoint to the sweep's cache (a temporary file, then a rename)."""
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_name(f"{cached.name}.tmp.{os.getpid()}")
    shutil.copyfile(checkpoint, tmp)
    os.replace(tmp, cached)


class SweepSummary(Callback):
    """At the end of a sweep, summary.md in the sweep directory: one row per run, its overrides and metrics."""

    COLUMNS = ("train_steps", "train_seconds", "nfe_sample", "sample_seconds", "swd", "swd_floor", "support",
               "weights_tv", "logp_gap_per_dim", "nll", "bpd", "nfe_likelihood")

    def on_multirun_end(self, config, **kwargs):
        root = Path(config.hydra.sweep.dir)
        rows = []
        for metrics_file in sorted(root.glob("*/metrics.json"), key=lambda p: int(p.parent.name) if
                                   p.parent.name.isdigit() else 0):
            metrics = json.loads(metrics_file.read_text())
            overrides = OmegaConf.load(metrics_file.parent / ".hydra" / "overrides.yaml")
            cells = [" ".join(overrides)] + [_cell(metrics.get(k)) for k in self.COLUMNS]
            rows.append(f"| {metrics_file.parent.name} | " + " | ".join(cells) + " |")
        if not rows:
            return
        head = "| run | overrides | " + " | ".join(self.COLUMNS) + " |"
        text = "\n".join([head, "|" + "---|" * (len(self.COLUMNS) + 2), *rows, ""])
        (root / "summary.md").write_text(text)
        print(f"sweep summary: {root / 'summary.md'}\n{text}")


def _cell(value):
    return "" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def show_warnings_in_one_line():
    """A ConfigWarning prints as ``warning: ...`` on one line of stderr."""
    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, ConfigWarning):
            print(f"warning: {message}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    warnings.showwarning = show


def warn_about_scale(data, sde, generator):
    """A data set much wider than the prior (for example raw pixel values under VP) gets a one-line warning."""
    std = float(data.sample(1000, generator).std())
    prior = sde.prior_std()
    if std > 3 * prior:
        warnings.warn(ConfigWarning(f"data has std {std:.3g}, over 3 times the prior's {prior:.3g}: the process does "
                                    "not forget the data by T; standardize the data, or use sde=ve"))


def fit_model_to_data(cfg, data, overrides, conf_dir):
    """Images with the default model (the MLP, which is for vectors) get the U-Net instead, with a one-line note;
    a model the command line names is kept as asked. Training with label dropout makes the model conditional."""
    choice, keys = override_keys(overrides, "model")
    if len(data.shape) == 3 and not choice and not keys and cfg.model.get("net", {}).get("_target_") == "models.MLP":
        cfg.model = OmegaConf.load(Path(conf_dir) / "model" / "unet.yaml")
        warnings.warn(ConfigWarning(f"data holds images {data.shape}: model=unet chosen (the default MLP is for "
                                    "vectors; give model=mlp to keep it)"))
    if cfg.train.cond_drop and data.num_classes is None:
        raise ConfigError(f"train.cond_drop={cfg.train.cond_drop} needs labelled data; {data!r} has no labels")
    if cfg.train.cond_drop and "conditional" in cfg.model and not cfg.model.conditional:
        cfg.model.conditional = True


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


def _target(key, node):
    """The callable a config node names, or a one-line error that it cannot be imported."""
    name = node.get("_target_") if OmegaConf.is_dict(node) else None
    if name is None:
        raise ConfigError(f"{key}._target_ must be set: the class or function that builds {key}", f"{key}._target_")
    try:
        try:
            return get_class(name)
        except ValueError:
            return get_method(name)
    except Exception as e:  # noqa: BLE001 - any failure to import a user's target is a config error
        cause = e.__cause__ or e
        raise ConfigError(f"{key}._target_={name} cannot be imported: {type(cause).__name__}: {cause}".splitlines()[0],
                          f"{key}._target_") from None


def _check_arguments(key, target, node, kwargs):
    """The node's keys and kwargs must be parameters of target (unless it takes **kwargs)."""
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    given = [k for k in node.keys() if not str(k).startswith("_")] + list(kwargs)
    extra = [k for k in given if k not in params]
    if extra:
        accepted = ", ".join(k for k in params if k not in kwargs and k != "self")
        raise ConfigError(f"{key}.{extra[0]} is not an option of {node.get('_target_')}: it takes {accepted} "
                          f"(remove it with ~{key}.{extra[0]})", f"{key}.{extra[0]}")


def build(key, node, **kwargs):
    """hydra.utils.instantiate, with a ConfigError raised inside named by its config key (``key.name``).

    Unknown arguments, a missing mandatory value and a target that cannot be imported are one-line
    ConfigErrors too; any other exception is a bug and propagates with its traceback.
    """
    try:
        missing = [k for k in node.keys() if OmegaConf.is_missing(node, k)]
    except AttributeError:
        missing = []
    if missing:
        raise ConfigError(f"{key}.{missing[0]} must be set: add {key}.{missing[0]}=VALUE to the command",
                          f"{key}.{missing[0]}")
    _check_arguments(key, _target(key, node), node, kwargs)
    try:
        return instantiate_config(key, node, **kwargs)
    except MissingMandatoryValue as e:
        raise ConfigError(f"{e.full_key or key} must be set: add {e.full_key or key}=VALUE to the command") from None


def override_keys(overrides, group):
    """What a list of Hydra overrides does to ``group``: (whether it picks another option, the dotted keys it
    sets or deletes inside the group)."""
    choice, keys = False, []
    for arg in overrides:
        m = re.match(rf"[+~]*{group}(=|\.([^=]+)(=|$))", arg)
        if m and m.group(1) == "=":
            choice = True
        elif m:
            keys.append(m.group(2))
    return choice, keys


def flatten(node, prefix=""):
    """{dotted key: value} of a nested dict."""
    out = {}
    for k, v in (node or {}).items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def reconcile(cfg, meta, overrides, override=False):
    """Fit the composed config to a checkpoint's ``meta`` (the sde, model and data configs it was trained
    with). A group the command line leaves alone takes the checkpoint's config; keys the command line sets
    inside it are set on top of the checkpoint's; a group the command line replaces (``sde=ve``) is compared
    whole. For sde and model, unless ``override``, a value that differs from the checkpoint's ends in a
    ConfigError naming both."""
    path = meta.get("path", "the checkpoint")
    for group in CHECKPOINT_GROUPS:
        theirs = meta.get(group)
        if theirs is None:
            continue
        choice, keys = override_keys(overrides, group)
        if not choice:
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
        if override or group == "data":
            continue
        new, old = flatten(OmegaConf.to_container(cfg[group], resolve=True)), flatten(theirs)
        for k in sorted(set(new) | set(old)):
            if new.get(k) != old.get(k):
                raise ConfigError(f"ckpt={path!r} was trained with {group}.{k}={old.get(k)!r} but this run has "
                                  f"{group}.{k}={new.get(k)!r}: leave {group} out to use the checkpoint's own, or "
                                  f"add ckpt_override=true", "ckpt")


_ABSENT = object()


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


@contextlib.contextmanager
def run_lock(out):
    """Holds ``out/.lock`` for the run: a second live run in the same directory is refused in one line."""
    try:
        import fcntl
    except ImportError:  # not POSIX: run without the lock
        yield
        return
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".lock", "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "?"
            raise ConfigError(f"hydra.run.dir={str(out)!r} is in use by another live run (pid {holder}): give each "
                              "run its own directory", "hydra.run.dir") from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def one_line_errors():
    """Bad input (ConfigError, which covers bad data and checkpoints) and a training run that cannot go on end
    the run with ``error: ...`` on stderr and exit status 2 (HYDRA_FULL_ERROR=1 re-raises); anything else is
    a bug: its whole traceback is printed (Hydra would show only its message) and the exit status is 1."""
    try:
        yield
    except (ConfigError, TrainingError, NonFiniteError) as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        sys.exit(2)
    except Exception:  # noqa: BLE001 - a bug: shown whole, never reduced to a line
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        traceback.print_exc()
        sys.exit(1)
