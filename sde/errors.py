"""Errors that mean bad input, and the checks that raise them.

Library code names a bad value by its own parameter name (``steps=0 is invalid: ...``); where the object is
built from a configuration, ``config_scope(KEY)`` puts the key it came from in front (``KEY.steps=0 ...``).
Only these errors become one line on the command line; every other exception is a bug and keeps its traceback.
"""
import contextlib
import math
import re
import warnings


class Keyed:
    """A message that names parameters: ``key`` is the name it uses (or a tuple of them; None when it names
    none); ``under(prefix)`` returns the same message with ``prefix.`` put before each of those names."""

    def __init__(self, message, key=None):
        super().__init__(message)
        self.keys = () if key is None else (key,) if isinstance(key, str) else tuple(key)

    @property
    def key(self):
        return self.keys[0] if self.keys else None

    def under(self, prefix):
        if not self.keys:
            return self
        message = str(self)
        for name in self.keys:
            message = re.sub(rf"(?<![\w.]){re.escape(name)}(?=[= ])", f"{prefix}.{name}", message)
        return type(self)(message, tuple(f"{prefix}.{name}" for name in self.keys))


class ConfigError(Keyed, ValueError):
    """A bad configuration or input value: the message names it and says what would be accepted."""


class ConfigWarning(Keyed, UserWarning):
    """A legal but suspicious value (for example a schedule that decreases)."""


class NonFiniteError(RuntimeError):
    """A sample or a likelihood came out NaN or infinite: the model or the solver diverged."""


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss); the last good checkpoint is kept."""


class CheckpointError(ConfigError):
    """A checkpoint that cannot be read, or that does not fit what it is loaded into."""


@contextlib.contextmanager
def config_scope(prefix):
    """Within the block, a ConfigError's or ConfigWarning's key gets ``prefix.`` in front of it."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        except ConfigError as e:
            raise e.under(prefix) from e.__cause__
        finally:
            raised = list(caught)
    for w in raised:
        message = w.message.under(prefix) if isinstance(w.message, ConfigWarning) else w.message
        warnings.warn_explicit(message, w.category, w.filename, w.lineno)


def short(value, width=80):
    """repr of a value, cut to ``width`` characters: a string (a path) loses its middle, so its end (the file's
    name) stays; anything else loses its end."""
    text = repr(value.tolist() if hasattr(value, "tolist") else value)
    if len(text) < width:
        return text
    if isinstance(value, str):
        head = (width - 3) // 3
        return text[:head] + "..." + text[len(text) - (width - 3 - head):]
    return text[: width - 3] + "..."


def invalid(name, value, expected):
    """``name=value is invalid: expected ...``."""
    return ConfigError(f"{name}={short(value)} is invalid: expected {expected}", name)


def unknown(name, value, choices):
    return ConfigError(f"{name}={value!r} is unknown: choose one of {', '.join(str(c) for c in choices)}", name)


def check_int(name, value, minimum=1):
    """An int >= minimum (bools and floats refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise invalid(name, value, f"an integer >= {minimum}")
    return value


def check_number(name, value, minimum=0.0, strict=True, maximum=math.inf, strict_max=False):
    """A finite float in (minimum, maximum] (bounds open or closed as asked)."""
    try:
        x = float(value)
        ok = not isinstance(value, bool) and math.isfinite(x)
    except (TypeError, ValueError):
        ok = False
    if ok:
        ok = (x > minimum if strict else x >= minimum) and (x < maximum if strict_max else x <= maximum)
    if not ok:
        lo = f"{'>' if strict else '>='} {minimum:g}"
        hi = "" if maximum == math.inf else f" and {'<' if strict_max else '<='} {maximum:g}"
        raise invalid(name, value, f"a finite number {lo}{hi}")
    return x


def check_choice(name, value, choices):
    if not isinstance(value, (str, int)) or isinstance(value, bool) or value not in choices:
        raise unknown(name, value, sorted(choices, key=str))
    return value
