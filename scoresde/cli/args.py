"""The command line before Hydra sees it: --help, group choices and keys checked against the configs, each
refused in one line that names what is accepted."""
import difflib
import functools
import re
import textwrap
from pathlib import Path

from omegaconf import OmegaConf

from sde.errors import ConfigError


GROUPS = ("sde", "solver", "model", "data", "task", "eval", "mask", "experiment")
LIST_GROUPS = ("eval",)
SHORTHANDS = ("likelihood",)
"""Command-line keys that are no config key but are translated (cli.legacy), offered as near matches."""


HELP_WIDTH = 118


def help_text(conf_dir):
    """``python run.py --help``: each group's options with the first sentence of their comment, each solver's own
    options, then the run's own options as config.yaml states them, comments included."""
    conf_dir = Path(conf_dir)
    lines = ["usage: python run.py [GROUP=OPTION ...] [KEY=VALUE ...]   (-m for a sweep: solver=em,pc,ode)", ""]
    for group in GROUPS:
        note = {"experiment": "(presets)", "mask": "(task=inpaint)", "task": "(what the run does)",
                "eval": "(a list: eval=[quality,ode], or one more with +eval=ode)"}.get(group,
                                                                         f"(or {group}._target_=your_module.YourClass)")
        lines.append(f"{group}=   {note}")
        lines += _column({p.stem: first_sentence(p.read_text()) for p in sorted((conf_dir / group).glob("*.yaml"))})
        lines.append("")
    lines.append("solver options (each solver's defaults and comments: conf/solver/NAME.yaml; e.g. solver.steps=20):")
    lines += _column({p.stem: ", ".join(f"solver.{key}" for key in OmegaConf.load(p) if key != "_target_")
                      for p in sorted((conf_dir / "solver").glob("*.yaml"))})
    lines.append("")
    lines.append("run options (conf/config.yaml; set any with KEY=VALUE, e.g. train.steps=500):")
    text = (conf_dir / "config.yaml").read_text().split("\nhydra:")[0]
    lines += [f"  {ln}" for ln in text.splitlines() if ln.strip() and not ln.startswith(("defaults", "  - "))]
    return "\n".join(lines)


def first_sentence(text):
    """The first sentence of a config file's leading comment (its lines joined; the header's ``@package`` left out)."""
    comment = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        if "@package" not in line:
            comment.append(line.lstrip("#").strip())
    words = " ".join(comment)
    end = re.search(r"\.(\s+[A-Z`(]|$)", words)
    return words[:end.start()] if end else words


def _column(described):
    """``  name  description`` for each name, the names in a column as wide as the longest, each description
    wrapped under itself."""
    width = max(map(len, described)) + 2
    return [line for name, text in described.items()
            for line in textwrap.wrap(text, HELP_WIDTH, initial_indent="  " + name.ljust(width),
                                      subsequent_indent=" " * (2 + width), break_on_hyphens=False) or [f"  {name}"]]


def composed(conf_dir, overrides=()):
    """The config that ``overrides`` compose from ``conf_dir`` (a copy; each distinct list is composed once per
    process: the checks compose the same group choices for every run of a sweep and every run in one process)."""
    return _composed(str(Path(conf_dir).resolve()), tuple(overrides)).copy()


@functools.lru_cache(maxsize=128)
def _composed(conf_dir, overrides):
    from hydra import compose, initialize_config_dir
    from hydra.errors import ConfigCompositionException

    with initialize_config_dir(conf_dir, version_base="1.3"):
        try:
            return compose("config", overrides=list(overrides))
        except ConfigCompositionException as e:
            if "Could not delete from config" not in str(e):
                raise
            raise ConfigError(f"{str(e).splitlines()[0]} (~KEY deletes a key that the config has)") from None


def check_override_keys(argv, conf_dir):
    """Fail in one line, naming the nearest valid key, on ``key=value`` when the composed config has no such key
    (Hydra's own message is several lines and its ``+key`` hint leads to a bad argument)."""
    pairs = [re.fullmatch(r"(\+?)([\w.]+)=(.*)", arg) for arg in argv]
    pairs = [m for m in pairs if m and not m.group(2).startswith("hydra.")]
    choices = [f"{m.group(1)}{m.group(2)}={first_choice(m.group(2), m.group(3))}" for m in pairs
               if m.group(2) in GROUPS]
    cfg = composed(conf_dir, choices)
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
