"""Objects from config nodes, with errors named by their config key."""
import contextlib
import inspect
import re

from hydra._internal.utils import _locate
from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue

from sde.errors import ConfigError, config_scope
from scoresde.pipeline import instantiate_config


def _target(key, node):
    """The callable a config node names, or a one-line error that it cannot be imported."""
    name = node.get("_target_") if OmegaConf.is_dict(node) else None
    if name is None:
        raise ConfigError(f"{key}._target_ must be set: the class or function that builds {key}", f"{key}._target_")
    try:
        target = _locate(name)
    except Exception as e:  # noqa: BLE001 - any failure to import a user's target is a config error
        cause = e.__cause__ or e
        raise ConfigError(f"{key}._target_={name} cannot be imported: {type(cause).__name__}: {cause}".splitlines()[0],
                          f"{key}._target_") from None
    if not callable(target):
        raise ConfigError(f"{key}._target_={name} is not a class or function: it cannot build {key}",
                          f"{key}._target_")
    return target


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
        if not accepted:
            raise ConfigError(f"{key}._target_={node.get('_target_')} takes no options, so it is no {key} that "
                              f"{key}.{extra[0]} could configure: name a class of {key} (python run.py --help)",
                              f"{key}._target_")
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
    except ConfigError as e:
        raise by_source(e, key, node) from e.__cause__
    except MissingMandatoryValue as e:
        raise ConfigError(f"{e.full_key or key} must be set: add {e.full_key or key}=VALUE to the command") from None


def takes(key, node, name):
    """Whether the callable the node names takes an argument ``name``."""
    try:
        return name in inspect.signature(_target(key, node)).parameters
    except (TypeError, ValueError):
        return False


def interpolated(key, node):
    """{KEY.name: SOURCE} for each option of ``node`` whose value is the interpolation ``${SOURCE}``."""
    raw = OmegaConf.to_container(node, resolve=False) if OmegaConf.is_dict(node) else {}
    return {f"{key}.{name}": value[2:-1] for name, value in raw.items()
            if isinstance(value, str) and re.fullmatch(r"\$\{[\w.]+\}", value)}


def by_source(error, key, node):
    """A ConfigError naming an option of ``node`` (built under ``key``) whose value is the interpolation
    ``${SOURCE}``, named by SOURCE instead: the key the user sets (eval.num, not eval.ode.num)."""
    source = interpolated(key, node).get(error.key)
    if source is None:
        return error
    message = re.sub(rf"(?<![\w.]){re.escape(error.key)}(?=[= ])", source, str(error))
    return type(error)(message, (source, *error.keys[1:]))


@contextlib.contextmanager
def named_by_source(key, node):
    """Within the block, a ConfigError is named under ``key``, or by the source of an interpolated option."""
    try:
        with config_scope(key):
            yield
    except ConfigError as e:
        raise by_source(e, key, node) from e.__cause__
