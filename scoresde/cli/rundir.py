"""The run directory, claimed before anything is written into it (Hydra's ``.hydra/`` included): created, found
writable, not a finished run's unless the command resumes that run, and locked against a second live run."""
import contextlib
import os
import stat
from pathlib import Path

from sde.errors import ConfigError

FINISHED = ("checkpoint.pt", "metrics.json")
"""The files that make a directory a finished (or resumable) run's: a fresh run into it would replace them."""

_held = set()
"""The run directories this process holds (resolved paths)."""

NOT_A_RUN = {"--cfg", "-c", "--info", "-i", "--hydra-help", "--shell-completion", "-sc", "--resolve"}
"""Hydra's flags that print something instead of running the job."""


def overrides(argv):
    """The command line's ``key=value`` overrides as Hydra parses them ({key: value}, the last one of a key
    winning), or None when Hydra would refuse one (its own error then ends the run) or would not run the job."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    if NOT_A_RUN & set(argv):
        return None
    try:
        parsed = OverridesParser.create().parse_overrides([a for a in argv if "=" in a and not a.startswith("-")])
    except HydraException:
        return None
    return {o.key_or_group: o.value() for o in parsed}


def requested_dir(argv):
    """The run directory the command line names with ``hydra.run.dir=`` (None when it names none, leaves it to
    an interpolation, which Hydra resolves to a fresh directory, or is not a run Hydra would start)."""
    value = (overrides(argv) or {}).get("hydra.run.dir")
    return None if value is None or "${" in str(value) else Path(str(value))


def requested_checkpoint(argv):
    """What the command line gives ``ckpt=`` (None when nothing)."""
    value = (overrides(argv) or {}).get("ckpt")
    return None if value is None else str(value)


def resumes(ckpt, out):
    """Whether ``ckpt`` (the command line's ckpt=) names the run in ``out``: the directory or its checkpoint.pt."""
    if not ckpt:
        return False
    named = Path(str(ckpt)).expanduser().resolve()
    here = Path(out).resolve()
    return named in (here, here / "checkpoint.pt")


def _created(out):
    """``out`` made (with its parents) unless it exists as a directory; a ConfigError naming it otherwise."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"hydra.run.dir={str(out)!r} is not a directory: give a folder for the run's outputs",
                          "hydra.run.dir")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"hydra.run.dir={str(out)!r} cannot be created ({e.strerror or type(e).__name__}): give "
                          "a folder you can write", "hydra.run.dir") from None


def _refuse_finished(out, ckpt):
    present = [name for name in FINISHED if (out / name).exists()]
    if present and not resumes(ckpt, out):
        raise ConfigError(f"hydra.run.dir={str(out)!r} holds a finished run ({', '.join(present)}), which a new run "
                          f"would overwrite: give a new directory, or resume that run with ckpt={str(out)}",
                          "hydra.run.dir")


@contextlib.contextmanager
def claimed(out, ckpt=None):
    """Holds the run directory ``out`` for the block: created if missing, refused in one line (ConfigError) when
    it cannot be created or written, when another live run holds it (``out/.lock``) or when it holds a finished
    run that ``ckpt`` does not resume (checked before the lock file is made, and again once it is held). The
    checks write nothing into a directory they refuse. A directory this process already holds is held again
    without a second check."""
    out = Path(out)
    key = str(out.resolve())
    if key in _held:
        yield
        return
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        fcntl = None
    _created(out)
    if not (out / ".lock").exists():
        _refuse_finished(out, ckpt)
    try:
        fd = os.open(out / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise ConfigError(f"hydra.run.dir={str(out)!r} cannot be written ({e.strerror or type(e).__name__}): give a "
                          "folder you can write", "hydra.run.dir") from None
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
                raise ConfigError(f"hydra.run.dir={str(out)!r} is in use by another live run (pid {holder}): give "
                                  "each run its own directory", "hydra.run.dir") from None
        _refuse_finished(out, ckpt)
        try:
            pid = str(os.getpid()).encode()
            os.pwrite(fd, pid, 0)
            if stat.S_ISREG(os.fstat(fd).st_mode):
                os.ftruncate(fd, len(pid))
            os.fsync(fd)
        except OSError as e:
            raise ConfigError(f"hydra.run.dir={str(out)!r} cannot be written ({e.strerror or type(e).__name__}): "
                              "free some space or give another folder", "hydra.run.dir") from None
        _held.add(key)
        try:
            yield
        finally:
            _held.discard(key)
    finally:
        os.close(fd)
