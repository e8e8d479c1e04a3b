"""The values of a command line checked before any work: its syntax, the home folder in paths, the sweep flag
anywhere, every run of a sweep composed, its booleans, seeds and device, and the cheap parts of each run built."""
import functools
import inspect
import os
import re

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra._internal.utils import _locate
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import OverrideParseException
from omegaconf import OmegaConf
from omegaconf.errors import InterpolationResolutionError

from sde.errors import ConfigError, invalid
from scoresde.inputs import check_seed

from .args import GROUPS, check_group_choices, check_override_keys, composed, flatten
from .build import build
from .checks import check_solver_fits

SWEEP_FLAGS = ("-m", "--multirun")
AUTO_SWITCHES = ("progress", "train.progress", "train.channels_last", "data.labels")
"""Options whose default ``auto`` is a third choice beside true and false."""
DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def check_command_line(argv, conf_dir):
    """``argv`` made ready for Hydra, or a one-line ConfigError before any work: ``~`` at the start of a value
    expanded to the home folder (the shell leaves ``key=~/x`` alone and Hydra's grammar refuses it), a sweep flag
    moved before the overrides (where Hydra reads it), the syntax of every override, group choices, keys, and
    the values of every run of a sweep (check_values)."""
    argv = [expand_home(arg) for arg in argv]
    sweep = [a for a in argv if a in SWEEP_FLAGS]
    argv = sweep + [a for a in argv if a not in SWEEP_FLAGS]
    check_syntax(argv)
    check_hydra_choices(argv, conf_dir)
    check_group_choices(argv, conf_dir)
    check_override_keys(argv, conf_dir)
    check_values(argv, conf_dir, sweep=bool(sweep))
    return argv


def overrides_of(argv):
    """The Hydra overrides among the command line's arguments (flags and their values left out)."""
    return [a for a in argv if not a.startswith("-") and ("=" in a or a.startswith("~"))]


def expand_home(arg):
    """``key=~/path`` (or ``key=~``) with the home folder in place of ``~``; anything else as it is."""
    m = re.fullmatch(r"([+~]*[\w.@/]+=)(~(/.*)?)", arg)
    return f"{m.group(1)}{os.path.expanduser(m.group(2))}" if m else arg


def check_syntax(argv):
    """Each override must parse in Hydra's grammar; the first that does not is named in one line."""
    parser = OverridesParser.create()
    for arg in overrides_of(argv):
        try:
            parser.parse_overrides([arg])
        except OverrideParseException as e:
            reason = str(e).splitlines()[0]
            raise ConfigError(f"{arg!r} is not a valid override ({reason}): write KEY=VALUE, a list as [a,b], and "
                              "quote a value holding spaces or special characters: 'KEY=\"a value\"'",
                              arg.split("=")[0]) from None


LAUNCHERS = {"submitit_slurm", "submitit_local"}
"""Hydra's launchers that the optional extra ``slurm`` (hydra-submitit-launcher) adds."""


def check_hydra_choices(argv, conf_dir):
    """Each choice of one of Hydra's own groups (``hydra/launcher=submitit_slurm``) must exist: the first that
    does not is named in one line with the choices there are (and, for the submitit launchers, the package that
    brings them)."""
    from hydra.errors import MissingConfigException

    for arg in overrides_of(argv):
        m = re.fullmatch(r"\+?hydra/([\w/]+)=(.*)", arg)
        if not m:
            continue
        try:
            composed(conf_dir, [arg])
        except MissingConfigException as e:
            offered = ", ".join(e.options or []) or "none"
            hint = (": pip install hydra-submitit-launcher (the extra score-sde[slurm]) adds "
                    f"{' and '.join(sorted(LAUNCHERS))}" if m[1] == "launcher" and m[2] in LAUNCHERS else "")
            raise ConfigError(f"{arg} is not available: hydra/{m[1]} offers {offered}{hint}", f"hydra/{m[1]}") from None


def sweep_runs(overrides):
    """The overrides of each run of a sweep, in Hydra's order (one run without sweep values)."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    return [run for batch in BasicSweeper.split_arguments(parsed, None) for run in batch]


def check_values(argv, conf_dir, sweep=False):
    """Every run the command line starts (each run of a sweep) composed and its values checked before the first
    starts (check_config): a ConfigError names the bad value, and for a sweep the run it belongs to."""
    overrides = [a for a in overrides_of(argv) if not a.lstrip("+~").startswith("hydra.")]
    runs = sweep_runs(overrides) if sweep else [overrides]
    references = [composed(conf_dir, [a for a in run if (m := re.match(r"\+?(\w+)=", a)) and m[1] in GROUPS])
                  for run in runs]
    for i, (run, reference) in enumerate(zip(runs, references)):
        try:
            cfg = composed(conf_dir, run)
            check_config(cfg, reference)
            if sweep and len(runs) > 1:
                check_parts(cfg, run)
        except ConfigError as e:
            if not sweep or len(runs) == 1:
                raise
            swept = [a for a in run if any(a not in other for other in runs)]
            raise type(e)(f"{e} (run {i} of the sweep: {' '.join(swept)}; no run was started)", e.keys) from None


def check_parts(cfg, overrides):
    """The parts of a run that are cheap to build (process, solver, training, loss) built and the solver checked
    against the process, so that a bad value in a later run of a sweep is refused before the first run trains. A
    solver on the model's own levels (grid=model, known once the model is built) is checked on the time grid."""
    levels = OmegaConf.is_dict(cfg.get("solver")) and cfg.solver.get("grid") == "model"
    parts = {key: build(key, cfg[key], **({"grid": "time"} if key == "solver" and levels else {}))
             for key in ("sde", "solver", "train", "loss")
             if OmegaConf.is_dict(cfg.get(key)) and "_target_" in cfg[key]}
    if "sde" in parts and "solver" in parts:
        check_solver_fits(cfg, overrides, parts["sde"], parts["solver"])


def resolved(cfg):
    """The config as plain containers, interpolations resolved; one that points nowhere is a ConfigError."""
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except InterpolationResolutionError as e:
        key = e.full_key or "?"
        raw = OmegaConf.to_container(cfg, resolve=False)
        for part in key.split("."):
            raw = raw.get(part) if isinstance(raw, dict) else None
        reason = str(e).splitlines()[0]
        raise ConfigError(f"{key}={raw!r} cannot be resolved: {reason}", key) from None


def check_config(cfg, reference):
    """The values of a composed config against the config of the same group choices without the command line's
    values (``reference``):

    - an option whose default is true or false takes true or false (``maybe`` or 1 is not a boolean), and an
      option of AUTO_SWITCHES also ``auto``; so does an argument of a part's class whose default is a boolean;
    - every option named ``seed`` is an integer in 0..2**63-1;
    - ``device`` is auto, cpu, cuda, cuda:N or mps;
    - ``loss.t_min`` lies below ``sde.T``.
    """
    values, defaults = flatten(resolved(cfg)), flatten(resolved(reference))
    for key, value in values.items():
        if key.startswith("hydra."):
            continue
        default = defaults[key] if key in defaults else parameter_default(cfg, key)
        if key.rpartition(".")[2] == "seed" and not (default is None and value is None):
            check_seed(key, value)
        elif isinstance(default, bool) and not isinstance(value, bool):
            raise invalid(key, value, "true or false")
        elif default == "auto" and key in AUTO_SWITCHES and not isinstance(value, bool) and value != "auto":
            raise invalid(key, value, "auto, true or false")
    device = values.get("device", "auto")
    if not isinstance(device, str) or not DEVICE.fullmatch(device):
        raise ConfigError(f"device={device!r} is unknown: use auto, cpu, cuda, cuda:N or mps", "device")
    t_min, horizon = values.get("loss.t_min"), values.get("sde.T")
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (t_min, horizon)) and t_min >= horizon:
        raise ConfigError(f"loss.t_min={t_min} is invalid: expected a time below sde.T={horizon} (training draws t "
                          "from [t_min, T])", "loss.t_min")


def parameter_default(cfg, key):
    """The default of the argument ``key`` names, in the signature of its part's class (None when there is
    none, or the class cannot be imported)."""
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent, default=None) if parent else None
    name = node.get("_target_") if OmegaConf.is_dict(node) else None
    if not isinstance(name, str):
        return None
    param = _parameters(name).get(leaf)
    return None if param is None or param.default is inspect.Parameter.empty else param.default


@functools.lru_cache(maxsize=None)
def _parameters(name):
    """The parameters of the callable at the dotted path ``name`` ({} when it cannot be imported or inspected)."""
    try:
        return dict(inspect.signature(_locate(name)).parameters)
    except Exception:  # noqa: BLE001 - a target that cannot be imported is refused where it is built
        return {}
