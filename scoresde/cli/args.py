"""The command line before Hydra sees it: --help, group choices and keys checked against the configs, each
refused in one line that names what is accepted."""
import difflib
import inspect
import os
import re
from pathlib import Path

from omegaconf import OmegaConf

from sde.errors import ConfigError, invalid


GROUPS = ("sde", "solver", "model", "data", "task", "eval", "mask", "experiment")
LIST_GROUPS = ("eval",)
SHORTHANDS = ("likelihood",)
"""Command-line keys that are no config key but are translated (cli.legacy), offered as near matches."""


def help_text(conf_dir):
    """``python run.py --help``: each group's options with their first comment line, then the run's own options
    as config.yaml states them, comments included."""
    conf_dir = Path(conf_dir)
    lines = ["usage: python run.py [GROUP=OPTION ...] [KEY=VALUE ...]   (-m for a sweep: solver=em,pc,ode)", ""]
    for group in GROUPS:
        note = {"experiment": "(presets)", "mask": "(task=inpaint)", "task": "(what the run does)",
                "eval": "(a list: eval=[quality,ode], or one more with +eval=ode)"}.get(group,
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
    choices = [f"{m.group(1)}{m.group(2)}={first_choice(m.group(2), m.group(3))}" for m in pairs
               if m.group(2) in GROUPS]
    with initialize_config_dir(str(Path(conf_dir).resolve()), version_base="1.3"):
        cfg = compose("config", overrides=choices)
    known = [k for k in flatten(OmegaConf.to_container(cfg, resolve=False)) if not k.startswith("hydra")]
    known += [k.rpartition(".")[0] for k in known if "." in k] + list(SHORTHANDS)
    for m in pairs:
        plus, key = m.group(1), m.group(2)
        if key in GROUPS or _has_key(cfg, key):
            continue
        if plus and "." in key and "_target_" in (OmegaConf.select(cfg, key.rpartition(".")[0]) or {}):
            continue
        near = difflib.get_close_matches(key, sorted(set(known)), n=1, cutoff=0.6)
        hint = f"did you mean {near[0]}? " if near else ""
        raise ConfigError(f"{plus}{key} is not an option: {hint}(python run.py --help lists them)", key)


def first_choice(group, value):
    """The first run's choice of a group in a sweep: ``em`` of ``solver=em,pc``; a list ``eval=[quality,ode]``
    is one choice, ``[quality]`` of the sweep ``eval=[quality],[quality,ode]``."""
    if group in LIST_GROUPS and value.startswith("["):
        return re.match(r"\[[^\]]*\]?", value).group(0)
    return value.split(",")[0]


def _has_key(cfg, key):
    """Whether the dotted key exists in cfg (a ??? value counts)."""
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent, default=None) if parent else cfg
    return OmegaConf.is_dict(node) and leaf in node.keys()


def check_group_choices(argv, conf_dir):
    """Fail in one line on ``group=name`` when conf/<group>/<name>.yaml does not exist (each name of a list
    ``eval=[quality,ode]``, each value of a sweep ``solver=em,pc``)."""
    for arg in argv:
        m = re.fullmatch(r"[+~]?(\w+)=(.*)", arg)
        if not m or m.group(1) not in GROUPS:
            continue
        group, values = m.groups()
        options = sorted(p.stem for p in (Path(conf_dir) / group).glob("*.yaml"))
        for value in re.split(r"[\[\],\s]+", values):
            if value and value not in options:
                own = "" if group in ("experiment", "eval") else f" (or set {group}._target_=your_module.YourClass)"
                raise ConfigError(f"{group}={value!r} is unknown: choose one of {', '.join(options)}{own}", group)


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


SWEEP_FLAGS = ("-m", "--multirun")
AUTO_SWITCHES = ("progress", "train.progress", "train.channels_last", "data.labels")
"""Options whose default ``auto`` is a third choice beside true and false."""
SEED_MAX = 2 ** 63 - 1
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
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    for arg in overrides_of(argv):
        try:
            parser.parse_overrides([arg])
        except OverrideParseException as e:
            reason = str(e).splitlines()[0]
            raise ConfigError(f"{arg!r} is not a valid override ({reason}): write KEY=VALUE, a list as [a,b], and "
                              "quote a value holding spaces or special characters: 'KEY=\"a value\"'",
                              arg.split("=")[0]) from None


def sweep_runs(overrides):
    """The overrides of each run of a sweep, in Hydra's order (one run without sweep values)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    return [run for batch in BasicSweeper.split_arguments(parsed, None) for run in batch]


def check_values(argv, conf_dir, sweep=False):
    """Every run the command line starts (each run of a sweep) composed and its values checked before the first
    starts (check_config): a ConfigError names the bad value, and for a sweep the run it belongs to."""
    from hydra import compose, initialize_config_dir

    overrides = [a for a in overrides_of(argv) if not a.lstrip("+~").startswith("hydra.")]
    runs = sweep_runs(overrides) if sweep else [overrides]
    with initialize_config_dir(str(Path(conf_dir).resolve()), version_base="1.3"):
        for i, run in enumerate(runs):
            choices = [a for a in run if re.match(r"\+?(\w+)=", a) and re.match(r"\+?(\w+)=", a).group(1) in GROUPS]
            try:
                check_config(compose("config", overrides=run), compose("config", overrides=choices))
                if sweep and len(runs) > 1:
                    check_parts(compose("config", overrides=run), run)
            except ConfigError as e:
                if not sweep or len(runs) == 1:
                    raise
                swept = [a for a in run if any(a not in other for other in runs)]
                raise type(e)(f"{e} (run {i} of the sweep: {' '.join(swept)}; no run was started)", e.keys) from None


def check_parts(cfg, overrides):
    """The parts of a run that are cheap to build (process, solver, training, loss) built and the solver checked
    against the process, so that a bad value in a later run of a sweep is refused before the first run trains."""
    from .build import build
    from .checks import check_solver_fits

    parts = {key: build(key, cfg[key]) for key in ("sde", "solver", "train", "loss")
             if OmegaConf.is_dict(cfg.get(key)) and "_target_" in cfg[key]}
    if "sde" in parts and "solver" in parts:
        check_solver_fits(cfg, overrides, parts["sde"], parts["solver"])


def resolved(cfg):
    """The config as plain containers, interpolations resolved; one that points nowhere is a ConfigError."""
    from omegaconf.errors import InterpolationResolutionError

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
        default = defaults.get(key, parameter_default(cfg, key))
        if key.rpartition(".")[2] == "seed" and not (default is None and value is None):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= SEED_MAX:
                raise invalid(key, value, "an integer in 0..2**63-1")
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
    try:
        from hydra._internal.utils import _locate

        param = inspect.signature(_locate(name)).parameters.get(leaf)
    except Exception:  # noqa: BLE001 - a target that cannot be imported is refused where it is built
        return None
    return None if param is None or param.default is inspect.Parameter.empty else param.default
