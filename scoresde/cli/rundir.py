"""The run directory, claimed before anything is written into it (Hydra's ``.hydra/`` included): created, found
writable, not a finished run's unless the command resumes that run, and locked against a second live run."""
import contextlib
import os
import stat
from pathlib import Path

from hydra.experimental.callback import Callback

from sde.errors import ConfigError

from .errors import one_line_errors

FINISHED = ("checkpoint.pt", "metrics.json")
"""The files that make a directory a finished (or resumable) run's: a fresh run into it would replace them."""

_held = set()
"""The run directories this process holds (resolved paths)."""

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


def _refuse_finished_sweep(root):
    finished = sorted({str(p.parent.relative_to(root)) for name in FINISHED for p in root.glob(f"*/{name}")
                       if not p.parent.name.startswith(".")})
    if finished:
        raise ConfigError(f"hydra.sweep.dir={str(root)!r} holds finished runs ({', '.join(finished)}), "
                          "which this sweep's runs would overwrite: give a new directory", "hydra.sweep.dir")


class ClaimRunDir(Callback):
    """Hydra's callback that claims the run directory (``claimed``) as the run starts, before Hydra writes its
    .hydra/ or its log there, wherever hydra.run.dir comes from (the command line, a config file, an
    interpolation), and holds it to the end of the run; a sweep into a directory that holds finished runs is
    refused as it starts. Under torchrun only global rank 0 claims (the others write nothing)."""

    def __init__(self):
        self._held = contextlib.ExitStack()

    def on_run_start(self, config, **kwargs):
        if os.environ.get("RANK", "0") == "0":
            with one_line_errors():
                self._held.enter_context(claimed(_resolved_dir(config, "run"), config.get("ckpt")))

    def on_run_end(self, config, **kwargs):
        self._held.close()

    def on_multirun_start(self, config, **kwargs):
        with one_line_errors():
            _refuse_finished_sweep(_resolved_dir(config, "sweep"))


def _resolved_dir(config, mode):
    """hydra.{mode}.dir of the composed ``config``, its interpolations resolved as Hydra resolves them for the
    job (HydraConfig set first, as run_job sets it; ${now:...} is cached, so the job gets the same folder)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf.errors import OmegaConfBaseException

    HydraConfig.instance().set_config(config)
    try:
        return Path(str(config.hydra[mode].dir))
    except OmegaConfBaseException as e:
        raise ConfigError(f"hydra.{mode}.dir cannot be resolved ({str(e).splitlines()[0]})",
                          f"hydra.{mode}.dir") from None
